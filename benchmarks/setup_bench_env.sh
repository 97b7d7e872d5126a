#!/usr/bin/env bash
# Benchmark-only environment at .venv-bench: the package plus the reference tools we
# compare against (genomap 1.3.6, scvi-tools). These never enter runtime dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
VPY=.venv-bench/bin/python
"$VPY" -c "import torch" >/dev/null 2>&1 || { "$VPY" -m pip install -q --upgrade pip; "$VPY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"; }
# Keep the CPU torch installed above: scvi-tools' resolver must not swap in another (e.g. CUDA) build.
PIN="$(mktemp)"; trap 'rm -f "$PIN"' EXIT
"$VPY" -c 'import torch; print("torch==" + torch.__version__)' >"$PIN"
"$VPY" -m pip install -q -c "$PIN" -e ".[bench]"
echo "[bench-setup] ready: $("$VPY" -c 'import torch, genomap, scvi; print("torch", torch.__version__, "scvi", scvi.__version__)')"
