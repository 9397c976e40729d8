#!/usr/bin/env bash
# On the GPU machine (no package registry): install fxc without deps, run the GPU tests, the
# demo at base size, the library-models capture check, then the FP16 benchmark against the
# peers. Each step has its own time limit; logs go to stdout and $OUT/*.log.
#   bash scripts/gpu_check.sh [tests|demo|library|bench|nodes|ablate]...   (default: tests demo library bench)
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
    bench)   # the README's H100 tables: CNNs, then transformers (each model in its own process)
             timeout ${BENCH_S:-330} python3 -m fxc bench --model ${BENCH_CNN:-resnet50@1+32,mobilenet_v2@1,resnet18@1,mlp@1} \
               --precision fp16 --torch-compile --tc-modes ${TC_MODES:-default,reduce-overhead} \
               --backends torch --isolate --iters 200 --out "$OUT" --tag h100_fp16_cnn 2>&1 | tee "$OUT/bench_cnn.log"
             timeout ${BENCH_S:-330} python3 -m fxc bench --model ${BENCH_TF:-bert@1+8,gpt2@1,vit@1} \
               --precision fp16 --torch-compile --tc-modes ${TC_MODES:-default,reduce-overhead} \
               --backends torch --isolate --iters 200 --out "$OUT" --tag h100_fp16_transformers 2>&1 | tee "$OUT/bench_tf.log" ;;
    nodes)   timeout 90 python3 scripts/node_counts.py --device cuda --precision fp16 --size base \
               --out "$OUT/h100_node_counts_fp16.md" ;;
    ablate)  # each pass left out in turn, plus every pass left out (the share-of-gain baseline)
             timeout ${ABLATE_S:-380} python3 -m fxc bench --model ${ABLATE_MODELS:-resnet50@1,bert@1} --precision fp16 \
               --backends torch --iters 200 --ablate ${ABLATE:-each} --isolate \
               --out "$OUT" --tag h100_fp16_ablation 2>&1 | tee "$OUT/ablation.log" ;;
  esac
done
