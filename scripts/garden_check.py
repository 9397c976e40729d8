"""Compile the model garden's library models with fxc and compare each with eager FP32.

One line a model: name, parameters, compile seconds (module to first result), relative error
||fxc - eager|| / ||eager|| against eager FP32 on the same device and inputs (TF32 off for the
reference), and ok/FAIL against a per-precision tolerance. Meant for the GPU machine at base size:

    python3 scripts/garden_check.py --device cuda --precision fp16 --size base [NAME ...]
    python3 scripts/garden_check.py --source hf --size tiny        # CPU, quick

Models are built directly on the device (under a device context; weights differ from a CPU
build of the same seed). Exit status 1 if any model fails or errors.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import time
import traceback

import torch

import fxc
from fxc.models import garden
from fxc.timing import max_error

# fp32 on CUDA: fxc's GEMMs may run in TF32 (library models measured up to 1.1e-3 on the H100)
TOLERANCE = {("cpu", "fp32"): 1e-5, ("cuda", "fp32"): 5e-3, "fp16": 2e-2, "bf16": 5e-2}


@contextlib.contextmanager
def strict_fp32():
    """Eager reference in true FP32: TF32 off for matmuls and convolutions."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check(name: str, args) -> bool:
    kwargs = {"seq": args.seq} if args.seq and "seq" in garden.GARDEN[name].kwargs else {}
    with torch.device(args.device):
        model, inputs = garden.get(name, args.size, batch=args.batch, seed=args.seed, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), strict_fp32():
        want = model(*inputs)
    t0 = time.perf_counter()
    compiled = fxc.compile(model, inputs, device=args.device, precision=args.precision,
                           backend=args.backend)
    got = compiled(*inputs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    _, rel = max_error(got, want)
    tol = args.tol or TOLERANCE.get(args.precision) or \
        TOLERANCE[(torch.device(args.device).type, args.precision)]
    ok = rel <= tol  # NaN fails
    print(f"{name:<30}{params:>15,}{seconds:>10.1f} s{rel:>11.2e}  "
          f"{'ok' if ok else f'FAIL (tolerance {tol:.0e})'}", flush=True)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="garden names (default: all, or those of --source)")
    p.add_argument("--source", choices=garden.SOURCES)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--backend", default="torch")
    p.add_argument("--size", default="base", choices=["tiny", "base"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, help="sequence length of text models (default 16/128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, help="relative error limit (default: per precision)")
    p.add_argument("--traceback", action="store_true", help="print a failing model's traceback")
    args = p.parse_args()
    names = args.names or garden.names(args.source)
    unknown = [n for n in names if n not in garden.GARDEN]
    if unknown:
        p.error(f"unknown model {', '.join(unknown)}; choose from: {', '.join(garden.GARDEN)}")
    for library in dict.fromkeys(garden.GARDEN[n].library for n in names):
        with contextlib.suppress(ImportError):  # now, so its warnings come before the table
            garden.load(library)
    print(f"torch {torch.__version__}, {args.device}, {args.precision}, backend {args.backend}, "
          f"size {args.size}, batch {args.batch}")
    print(f"{'model':<30}{'params':>15}{'compile':>12}{'rel err':>11}")
    failed = []
    for name in names:
        try:
            if not check(name, args):
                failed.append(name)
        except Exception as e:  # one model's failure is a line, not the end of the run
            failed.append(name)
            first = str(e).splitlines()[0] if str(e) else ""
            print(f"{name:<30} ERROR {type(e).__name__}: {first[:160]}", flush=True)
            if args.traceback:
                traceback.print_exc()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"{len(names) - len(failed)}/{len(names)} ok" + (f"; failed: {', '.join(failed)}"
                                                         if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
