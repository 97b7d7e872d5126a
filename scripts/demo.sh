#!/usr/bin/env bash
# The main job, from nothing: sets up (or reuses) .venv, then runs the end-to-end demo on
# the bundled CellBench sample (train scMEDAL with the default auto preset, latents, metrics,
# genomap panels, report). Output goes to ./scmedal_demo (override with OUT=...).
# With a display (DISPLAY set) the demo then opens napari with the results loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/scmedal demo --out "${OUT:-scmedal_demo}" "$@"
