"""Where the GPU time of a compiled zoo model goes: kernels per call, summed kernel time per
call and the costliest kernels (torch.profiler over the step loop, CUDA graphs off), next to
the latency of the graph-replayed module. Compares fxc with torch.compile when asked.

  python3 scripts/gpu_kernels.py MODEL BATCH [--tc] [--eager] [fxc option=value ...]
"""
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import fxc
from fxc import bench, timing
from fxc.models import get


def kernel_table(fn, args, calls=10, label=""):
    with torch.no_grad():
        for _ in range(3):
            fn(*args)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn(*args)
            torch.cuda.synchronize()
    tot, cnt = defaultdict(float), defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            tot[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            cnt[e.name] += 1
    n_k = sum(cnt.values()) / calls
    t_k = sum(tot.values()) / calls / 1e3
    print(f"KERNELS {label}: {n_k:.0f} kernels/call, kernel time {t_k:.3f} ms/call")
    for name, us in sorted(tot.items(), key=lambda kv: -kv[1])[:12]:
        print(f"   {us / calls / 1e3:8.4f} ms  x{cnt[name] / calls:4.0f}  {name[:110]}")


def main():
    import os
    if os.environ.get("SDPA"):  # e.g. SDPA=EFFICIENT_ATTENTION: pin SDPA's backend for the run
        from torch.nn.attention import SDPBackend, sdpa_kernel
        sdpa_kernel([getattr(SDPBackend, os.environ["SDPA"])]).__enter__()  # an enum, not a dict
        print("SDPA backend pinned to", os.environ["SDPA"])
    name, batch = sys.argv[1], int(sys.argv[2])
    rest = sys.argv[3:]
    tc = "--tc" in rest
    opts = {}
    for kv in (r for r in rest if "=" in r):
        k, v = kv.split("=")
        opts[k] = {"True": True, "False": False}.get(v, v)
    model, example = get(name, size="base", batch=batch, seed=0)
    model, example = model.cuda(), tuple(x.cuda() for x in example)
    sets = timing.rotated_inputs(example)
    dev = torch.device("cuda")
    c = fxc.compile(model, example, device=dev, precision="fp16", backend="torch", **opts)
    print(f"fxc {name} b{batch} {opts}: graph replay {timing.measure(c, sets, device=dev, iters=100)}")
    nog = fxc.compile(model, example, device=dev, precision="fp16", backend="torch",
                      cuda_graphs=False, **opts)
    print(f"fxc step loop: {timing.measure(nog, sets, device=dev, iters=50)}")
    kernel_table(nog, example, label=f"fxc {name} b{batch}")
    if "--eager" in rest:
        f = bench._eager(model, "fp16", dev)
        print(f"eager fp16: {timing.measure(f, sets, device=dev, iters=50)}")
        kernel_table(f, example, label=f"eager fp16 {name} b{batch}")
    if tc:
        f = bench._torch_compile(model, "fp16", dev, None)
        print(f"torch.compile default: {timing.measure(f, sets, device=dev, iters=50)}")
        kernel_table(f, example, label=f"torch.compile {name} b{batch}")


if __name__ == "__main__":
    main()
