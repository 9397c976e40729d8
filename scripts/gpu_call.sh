#!/usr/bin/env bash
# One device call of a session: the steps named in STEPS, each with its own time limit, each
# logging to $OUT as it goes (a cut call keeps what it finished).
#   STEPS="tests ab ktable garden dynamic audit" MODELS=NAME@B,... bash scripts/gpu_call.sh
# tests: pytest -m gpu (TESTS= narrows it); ab: scripts/ab_pass.py AB_PASS on AB_MODELS;
# ktable: scripts/gpu_kernels.py KMODEL with the report; garden: fxc bench rows for MODELS
# (GARDEN_S caps it); dynamic: scripts/dynamic_bench.py (DYN_MODEL over seq, resnet50 over
# batch); audit: scripts/shape_audit.py on CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fxc_gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc $?"; grep -v -i -E "warn|^DEBUG|Resize.cpp" "$OUT/$name.log" | tail -${TAIL:-12}; }
for s in ${STEPS:-tests ab garden dynamic audit}; do
  case $s in
    tests)   TAIL=8 step gpu_tests 150 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 ${TESTS:-} ;;
    ab)      TAIL=6 step ab 150 python3 scripts/ab_pass.py ${AB_PASS:-fuse_dwconv_ln} ${AB_MODELS:-tv:convnext_tiny@1 timm:convnext_tiny@1} ;;
    ktable)  KTOP=25 REPORT=1 TAIL=45 step ktable 100 python3 scripts/gpu_kernels.py ${KMODEL:-tv:convnext_tiny} 1 ;;
    garden)  echo "== garden"; timeout ${GARDEN_S:-240} python3 -m fxc bench --model "${MODELS}" \
               --size base --precision fp16 --torch-compile --tc-modes reduce-overhead --backends torch --isolate \
               --iters 100 --out "$OUT" --tag ${TAG:-h200_fp16_garden_s4b} > "$OUT/garden.log" 2>&1
             echo "rc $?"; grep -v -i warn "$OUT/garden.log" | tail -20 ;;
    dynamic) TAIL=8 step dynamic_bert 90 python3 scripts/dynamic_bench.py --model ${DYN_MODEL:-bert} --axis seq --range 16:512 --at 64,128,384
             TAIL=8 step dynamic_resnet50 80 python3 scripts/dynamic_bench.py --model tv:resnet50 --axis batch --range 1:64 --at 1,7,32,64 ;;
    audit)   TAIL=3 step audit_cuda 60 python3 scripts/shape_audit.py --device cuda ;;
  esac
done
