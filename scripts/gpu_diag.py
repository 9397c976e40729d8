"""GPU diagnosis helper: run one bench runner on one zoo model in this process, with
CUDA_LAUNCH_BLOCKING=1 set by the caller, so a device-side assert names its kernel.

  python3 scripts/gpu_diag.py MODEL BATCH RUNNER [fxc option=value ...]

RUNNER: eager_fp16 | eager_cudagraph | tc_default | tc_ro | fxc (disable_passes=a+b leaves
passes out). Prints the error against eager
FP32 over the 3 bench input sets (each run 5 times) or the exception.
"""
import sys
import time

import torch

from fxc import bench, timing
from fxc.models import get


def build(runner, model, example, opts):
    dev = torch.device("cuda")
    if runner == "eager_fp16":
        return bench._eager(model, "fp16", dev)
    if runner == "eager_cudagraph":
        return bench._eager_cudagraph(model, "fp16", dev, example)
    if runner == "tc_default":
        return bench._torch_compile(model, "fp16", dev, None)
    if runner == "tc_ro":
        return bench._torch_compile(model, "fp16", dev, "reduce-overhead")
    import fxc
    return fxc.compile(model, example, device=dev, precision="fp16", backend="torch", **opts)


def main():
    name, batch, runner = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    opts = {}
    for kv in sys.argv[4:]:
        k, v = kv.split("=")
        opts[k] = tuple(v.split("+")) if k == "disable_passes" else \
            {"True": True, "False": False}.get(v, v)
    model, example = get(name, size="base", batch=batch, seed=0)
    if ":" in name:  # a garden model: the bench rotates its example (timing.rotated_inputs)
        sets = [tuple(x.cuda() for x in s) for s in timing.rotated_inputs(tuple(example))]
    else:
        sets = [tuple(x.cuda() for x in get(name, size="base", batch=batch, seed=s)[1])
                for s in (0, 1, 2)]
    example = tuple(x.cuda() for x in example)
    model = model.cuda()
    with torch.no_grad():
        refs = [model(*s) for s in sets]
    t0 = time.perf_counter()
    fn = build(runner, model, example, opts)
    with torch.no_grad():
        errs = []
        for _ in range(5):
            for s, r in zip(sets, refs):
                errs.append(timing.max_error(fn(*s), r)[1])
        torch.cuda.synchronize()
    t = timing.measure(fn, sets, device=torch.device("cuda"), iters=50)
    print(f"DIAG {name} b{batch} {runner} {opts}: ok, rel err max {max(errs):.2e}, "
          f"median {t.median_ms:.3f} ms, built in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
