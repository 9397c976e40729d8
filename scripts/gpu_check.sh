#!/usr/bin/env bash
# On the GPU machine (no package registry): install fxc without deps, run the GPU and slow
# tests, the demo at base size in FP32 and FP16, and the library-models capture check.
# Output goes to stdout and, where $OUT is set, to $OUT/*.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fxc_gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed; using the source tree"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, fxc; print('torch', torch.__version__, 'fxc', fxc.__version__, 'passes', fxc.passes.names())"
python3 -m pytest -m gpu -q -p no:cacheprovider "$@" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
python3 -m fxc demo --size base --iters 50 2>&1 | tee "$OUT/demo_fp32.log"
python3 -m fxc demo --size base --precision fp16 --iters 50 2>&1 | tee "$OUT/demo_fp16.log"
python3 scripts/library_models.py 2>&1 | tee "$OUT/library_models.log"
