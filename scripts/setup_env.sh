#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv (repo root) with everything the
# demo and the test suite need. Safe to run repeatedly: it skips work already done.
#   bash scripts/setup_env.sh            # runtime + test extras (napari[qt], pytest) + harmony (harmonypy)
#   EXTRAS=test,harmony,bench bash scripts/setup_env.sh   # + benchmark-only packages
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-test,harmony}"
PY="${PYTHON:-python3}"

# 1. System libraries for Qt under Xvfb (GUI tests, screenshots, the demo's viewer).
#    Only as root with apt; otherwise we assume they are present.
need_pkgs=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0
           libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1 libxkbcommon-x11-0 libxkbcommon0
           libegl1 libgl1 libglx-mesa0 libgl1-mesa-dri libdbus-1-3 libfontconfig1 libfreetype6)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "[setup] apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# 2. The virtual environment.
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python

# 3. PyTorch CPU build first (2.13.0 lies on local disk here); an unpinned torch would
#    pull a multi-GB CUDA build. The package itself only asks for torch>=2.1.
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch (CPU build)"
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi

# 4. The package (editable) with its extras; skipped when pyproject.toml is unchanged.
stamp=".venv/.napari-scmedal-$(sha1sum pyproject.toml | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ] || ! "$VPY" -c "import napari_scmedal" >/dev/null 2>&1; then
  echo "[setup] installing napari-scmedal[${EXTRAS}]"
  "$VPY" -m pip install -q -e ".[${EXTRAS}]"
  touch "$stamp"
fi
echo "[setup] ready: $("$VPY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"
