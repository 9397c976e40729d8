set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc $?"; grep -v -i -E "warn|^DEBUG|Resize.cpp" "$OUT/$name.log" | tail -${TAIL:-12}; }
TAIL=20 step audit_cuda 90 python3 scripts/shape_audit.py --device cuda
TAIL=6 step audit_cuda_nofa 90 python3 scripts/shape_audit.py --device cuda 'disable_passes=["fuse_attention"]'
grep -n "symbolic shapes\|Traceback\|File \"/" "$OUT/audit_cuda.log" | head -40
step gpu_tests 230 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4
export KTOP=25 REPORT=1
for m in tv:convnext_tiny tv:swin_t tv:vit_b_16; do TAIL=0 step "k_${m/:/_}" 120 python3 scripts/gpu_kernels.py $m 1 --tc; done
