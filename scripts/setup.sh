#!/usr/bin/env bash
# Install fxc and its test dependencies into the current Python.
# torch is pinned to the CPU build that lies on this kind of machine's disk (a plain `torch`
# would pull a multi-GB CUDA build); any torch >= 2.11 works for fxc itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])) >= (2, 11) else 1)" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"
# The model garden's libraries (fxc[garden], tests/test_garden.py). torchvision at the release
# that pairs with this torch (0.N+15 for torch 2.N), without dependencies: a plain install
# would move torch. transformers' dependencies are light (no torch); timm's are among them.
TV=$("$PY" -c "import torch; print('0.%d.*' % (int(torch.__version__.split('.')[1]) + 15))")
"$PY" -m pip install -q "transformers>=5,<6"
"$PY" -m pip install -q --no-deps "torchvision==$TV" "timm>=1.0"
# The report tests (tests/test_viz.py) drive a real headless Chromium: Debian's package.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  log=${TMPDIR:-/tmp}/fxc_setup_apt.log
  echo "setup: installing Debian's chromium for the report tests (~115 packages; log: $log)"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >"$log" 2>&1; then
    tail -20 "$log"; exit 1
  fi
fi
