#!/usr/bin/env bash
# One device call of a session's end (GPU budget: one 10-minute call): the garden models the
# view fix concerns, the dynamic-shape GPU tests and speed goal (issue 13), conv_epilogue's
# A/B on the conv models it fires on (issue 12's slowest rows), then garden benchmark rows
# until FINAL_BENCH_S runs out. Every step logs to $OUT as it goes (a cut call keeps them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fxc_gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed; using the source tree"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc $?"; grep -v -i -E "warn|DEBUG" "$OUT/$name.log" | tail -${TAIL:-25}; }
step gcheck_views 120 python3 scripts/garden_check.py --device cuda --precision fp16 --size base --traceback hf:llama hf:qwen2
step gpu_dynamic_tests 90 python3 -m pytest -q -p no:cacheprovider -p no:logging -m gpu tests/test_dynamic_buckets.py tests/test_dynamic_batch.py
step dynamic_bert 90 python3 scripts/dynamic_bench.py --model hf:bert-base --axis seq --range 16:512 --at 64,128,384
step dynamic_resnet50 80 python3 scripts/dynamic_bench.py --model tv:resnet50 --axis batch --range 1:64 --at 1,7,32,64
step ab_conv_epilogue 170 python3 scripts/ab_pass.py conv_epilogue ${AB_MODELS:-tv:efficientnet_b0@1 timm:efficientnet_b0@1 tv:mobilenet_v3_large@1 tv:regnet_y_400mf@1 tv:resnext50_32x4d@1 timm:seresnext26d_32x4d@1 tv:convnext_tiny@1}
echo "== garden bench"
timeout ${FINAL_BENCH_S:-200} python3 -m fxc bench --model "${FINAL_MODELS:-hf:bert-base@1,hf:llama@1,hf:gpt2@1,tv:swin_t@1,hf:t5-encoder@1,hf:whisper-encoder@1}" \
  --size base --precision fp16 --torch-compile --tc-modes reduce-overhead --backends torch --isolate \
  --iters 100 --out "$OUT" --tag h200_fp16_garden_hf > "$OUT/garden_hf.log" 2>&1
echo "rc $?"; grep -v -i warn "$OUT/garden_hf.log" | tail -30
