"""Where the GPU time of a compiled zoo model goes: kernels per call, summed kernel time per
call and the costliest kernels (torch.profiler over the step loop, CUDA graphs off), next to
the latency of the graph-replayed module. Compares fxc with torch.compile when asked.

  python3 scripts/gpu_kernels.py MODEL BATCH [--tc] [--eager] [fxc option=value ...]
  python3 scripts/gpu_kernels.py --graph-probe [MODEL BATCH]

--graph-probe checks what `fxc bench`'s kernels-per-call column relies on, on this torch and
CUDA: that torch.profiler reports the kernels inside a replayed CUDA graph one by one, tied to
the graph's launch (fxc.timing.count_kernels), and that a later profiler session still sees
kernels. It prints the counts of the eager loop, its CUDA-graph replay, fxc's replay and step
loop, and a verdict. MODEL may be a zoo or a garden name (default: resnet18 at base size).
"""
import os
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
    for name, us in sorted(tot.items(), key=lambda kv: -kv[1])[:int(os.environ.get("KTOP", 12))]:
        print(f"   {us / calls / 1e3:8.4f} ms  x{cnt[name] / calls:4.0f}  {name[:110]}")


def graph_probe(name="resnet18", batch=1):
    model, example = get(name, size="base", batch=batch, seed=0)
    dev = torch.device("cuda")
    model, example = model.to(dev), tuple(x.to(dev) for x in example)
    sets = timing.rotated_inputs(example)
    got = {}
    eager = bench._eager(model, "fp16", dev)
    got["eager fp16 loop"] = timing.profile_kernels(eager, sets)
    graph = bench._eager_cudagraph(model, "fp16", dev, example)
    got["eager fp16 CUDA graph"] = timing.profile_kernels(graph, sets)
    c = fxc.compile(model, example, device=dev, precision="fp16", backend="torch")
    got["fxc replay"] = timing.profile_kernels(c, sets)
    got["fxc step loop"] = timing.profile_kernels(lambda *xs: bench._step_loop(c, xs), sets)
    got["eager fp16 loop, again"] = timing.profile_kernels(eager, sets)
    with torch.no_grad(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        eager(*example)
        torch.cuda.synchronize()
    kinds = sorted({str(getattr(e, "activity_type", "(no activity_type)")) for e in prof.events()})
    print(f"profiler event kinds on this torch: {kinds}")
    for label, k in got.items():
        print(f"{label:<24} kernels/call {k.per_call:7.1f}   graph launches/call "
              f"{k.graph_launches:4.1f}   kernels tied to a launch {k.in_graphs:7.1f}")
    loop, rep = got["eager fp16 loop"], got["eager fp16 CUDA graph"]
    seen = rep.in_graphs > 0 and rep.in_graphs == loop.per_call
    print(f"VERDICT torch {torch.__version__} CUDA {torch.version.cuda}: kernels inside a replayed "
          f"graph are {'visible, one record each' if seen else 'NOT all visible'} "
          f"({rep.in_graphs:g} tied to the launch vs {loop.per_call:g} in the eager loop); a "
          f"later session sees {got['eager fp16 loop, again'].per_call:g} kernels/call")
    for label, fn in (("eager graph", graph), ("fxc", c)):
        non = ("eager fp16", loop.per_call) if label == "eager graph" else \
            bench._non_graph("fxc_torch", c, [])
        print(f"bench's cell for {label}: {timing.kernels_per_call(fn, sets, dev, non)}")


def main():
    if sys.argv[1:2] == ["--graph-probe"]:
        return graph_probe(*([sys.argv[2], int(sys.argv[3])] if len(sys.argv) > 3 else []))
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
        opts[k] = tuple(v.split("+")) if k == "disable_passes" else \
            {"True": True, "False": False}.get(v, v)
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
    if os.environ.get("REPORT"):  # what the passes left: rewrites fired, ops left as ATen kernels
        text = c.report()
        at = text.find("rewrites that fired")
        print(text[at if at >= 0 else 0:][:4000])
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
