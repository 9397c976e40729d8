#!/usr/bin/env bash
# One device call of a session (scratch: rewritten per call; the steps it runs are kept in
# git history). Every step logs to $OUT as it goes, so a cut call keeps what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fxc_gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc $?"; grep -v -i -E "warn|^DEBUG|Resize.cpp" "$OUT/$name.log" | tail -${TAIL:-12}; }
TAIL=30 step audit_cuda 90 python3 scripts/shape_audit.py --device cuda
grep "^STAGE" "$OUT/audit_cuda.log"
echo "== garden bench"
timeout ${GARDEN_S:-440} python3 -m fxc bench --model "${MODELS}" \
  --size base --precision fp16 --torch-compile --tc-modes reduce-overhead --backends torch --isolate \
  --iters 100 --out "$OUT" --tag ${TAG:-h200_fp16_garden_s4} > "$OUT/garden.log" 2>&1
echo "rc $?"; grep -v -i warn "$OUT/garden.log" | tail -40
