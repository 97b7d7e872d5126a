#!/usr/bin/env bash
# The whole test suite, from nothing: sets up (or reuses) .venv, checks the napari
# manifest with its imports, type-checks the core with mypy, then runs pytest. GUI tests run under Xvfb (pytest-xvfb
# starts a virtual display; xvfb itself is installed by setup_env.sh when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
echo "[test] npe2 validate --imports napari-scmedal"
.venv/bin/npe2 validate --imports napari-scmedal
echo "[test] mypy (the core; configuration in pyproject.toml)"
.venv/bin/mypy
echo "[test] pytest"
exec .venv/bin/python -m pytest "$@"
