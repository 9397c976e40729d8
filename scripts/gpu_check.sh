#!/usr/bin/env bash
# On the GPU machine (no package registry): install fxc without deps, run the GPU tests, the
# demo at base size, the library-models capture check, then the FP16 benchmark against the
# peers. Each step has its own time limit; logs go to stdout and $OUT/*.log.
#   bash scripts/gpu_check.sh [tests|demo|library|bench]...   (default: all four)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fxc_gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=${*:-tests demo library bench}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed; using the source tree"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, fxc; print('torch', torch.__version__, 'fxc', fxc.__version__, 'passes', fxc.passes.names())"
for step in $steps; do
  case $step in
    tests)   timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 2>&1 | tee "$OUT/gpu_tests.log" | tail -25 ;;
    demo)    timeout 150 python3 -m fxc demo --size base --iters 50 2>&1 | tee "$OUT/demo_fp32.log" ;;
    library) timeout 120 python3 scripts/library_models.py 2>&1 | tee "$OUT/library_models.log" ;;
    bench)   timeout ${BENCH_S:-300} python3 -m fxc bench --model ${BENCH_MODELS:-resnet50,bert} \
               --batch ${BENCH_BATCH:-1} --precision fp16 --torch-compile --tc-modes ${TC_MODES:-default,reduce-overhead} --backends torch \
               --iters 100 --out "$OUT" 2>&1 | tee "$OUT/bench.log" ;;
  esac
done
