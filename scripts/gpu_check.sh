#!/usr/bin/env bash
# On the GPU machine (no package registry): install fxc without deps, run the GPU tests, the
# demo at base size, the library-models capture check, then the FP16 benchmark against the
# peers. Each step has its own time limit; logs go to stdout and $OUT/*.log.
#   bash scripts/gpu_check.sh [tests|demo|library|bench|nodes|ablate|garden|gcheck]...   (default: tests demo library bench)
# garden: fxc bench --isolate over library models (fxc.models.garden, base size), every peer,
# kernels per call, results $OUT/h200_fp16_garden*.json. GARDEN_MODELS (NAME@B1+B2,...) picks
# them; GARDEN_PART=k/n runs every n-th of them from the k-th (estimated, not yet measured: a
# base-size job with both torch.compile modes cold takes 40-90 s, so the default 20 jobs need
# n=3 or 4 device calls of 10 minutes); GARDEN_S caps one invocation (default 540 s; results
# are written after each job, so a capped run keeps the jobs it finished).
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
    garden)  gm=${GARDEN_MODELS:-tv:resnet50@1+16,tv:convnext_tiny@1+8,tv:swin_t@1+8,tv:efficientnet_b0@1+32,timm:regnety_016@1+32,tv:vit_b_16@1+8,hf:bert-base@1+8,hf:gpt2@1+8,hf:llama@1,hf:t5-encoder@1,hf:whisper-encoder@1}
             part=${GARDEN_PART:-1/1}; k=${part%/*}; n=${part#*/}
             IFS=, read -ra all <<< "$gm"; pick=()
             for i in "${!all[@]}"; do (( i % n == k - 1 )) && pick+=("${all[$i]}"); done
             tag=h200_fp16_garden; (( n > 1 )) && tag=${tag}_p${k}of${n}
             echo "garden part $part: ${pick[*]}"
             timeout ${GARDEN_S:-540} python3 -m fxc bench --model "$(IFS=,; echo "${pick[*]}")" --size base \
               --precision fp16 --torch-compile --tc-modes ${TC_MODES:-default,reduce-overhead} \
               --backends torch --isolate --iters ${GARDEN_ITERS:-100} --out "$OUT" --tag "$tag" 2>&1 | tee "$OUT/$tag.log" ;;
    gcheck)  # every garden model compiled at base size in FP16 and compared with eager FP32; the
             # three sources run side by side (compile seconds are then upper bounds)
             for src in tv timm hf; do
               timeout ${GCHECK_S:-540} python3 scripts/garden_check.py --device cuda --precision fp16 \
                 --size base --source $src > "$OUT/garden_check_$src.log" 2>&1 &
             done; wait; cat "$OUT"/garden_check_*.log ;;
    ablate)  # each pass left out in turn, plus every pass left out (the share-of-gain baseline)
             timeout ${ABLATE_S:-380} python3 -m fxc bench --model ${ABLATE_MODELS:-resnet50@1,bert@1} --precision fp16 \
               --backends torch --iters 200 --ablate ${ABLATE:-each} --isolate \
               --out "$OUT" --tag h100_fp16_ablation 2>&1 | tee "$OUT/ablation.log" ;;
  esac
done
