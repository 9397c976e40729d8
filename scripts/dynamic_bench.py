"""Issue 13's speed goal: one compile for a range of shapes against a static compile at each.

    python3 scripts/dynamic_bench.py [--model bert --axis seq --range 16:512 --at 64,128,384]
    python3 scripts/dynamic_bench.py --model tv:resnet50 --axis batch --range 1:64 --at 1,7,32,64

Compiles the garden (or zoo) model once with `dynamic_shapes` over the axis (every input's axis
1 for seq, axis 0 for batch, one shared Dim), then once statically at each size, and times both
on the same inputs in this process (CUDA events after warm-up, median of --iters calls, the two
runners interleaved in --rounds rounds). Prints one line a size: dynamic ms, static ms, ratio
(goal: <= 1.1), compile seconds of each, the max abs difference of their outputs, and the
dynamic module's CUDA-graph status. FP16 on CUDA by default.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.export import Dim

import fxc
from fxc import timing
from fxc.models import get


def _inputs(name: str, axis: str, n: int, size: str):
    kw = {"seq": n} if axis == "seq" else {}
    batch = n if axis == "batch" else 1
    model, xs = get(name, size=size, batch=batch, seed=0, **kw)
    return model, xs


def _spec(xs, axis: str, lo: int, hi: int):
    d = Dim(axis, min=lo, max=hi)
    dim = 1 if axis == "seq" else 0
    return tuple({dim: d} if isinstance(x, torch.Tensor) and x.dim() > dim else None for x in xs)


def _leaves(out):
    import torch.utils._pytree as pytree
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _time(fn, xs, dev, iters):
    return timing.measure(fn, [xs], device=dev, warmup=10, iters=iters).median_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the zoo's bert-base: export cannot prove transformers' BertModel valid for every length
    # (its mask code guards seq * (8 + seq - seq % 8) > 1; export asks for seq = 8 * k)
    p.add_argument("--model", default="bert")
    p.add_argument("--axis", default="seq", choices=["seq", "batch"])
    p.add_argument("--range", default="16:512")
    p.add_argument("--at", default="64,128,384")
    p.add_argument("--size", default="base")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lo, hi = (int(v) for v in a.range.split(":"))
    sizes = [int(v) for v in a.at.split(",")]
    # the example is the largest size asked for: export specializes an example size of 1
    model, xs = _inputs(a.model, a.axis, max(sizes), a.size)
    model = model.to(dev)
    xs = tuple(x.to(dev) for x in xs)
    t0 = time.perf_counter()
    dyn = fxc.compile(model, xs, device=dev, precision=a.precision, backend="torch",
                      dynamic_shapes=_spec(xs, a.axis, lo, hi))
    dyn_s = time.perf_counter() - t0
    print(f"{a.model} {a.axis} {lo}..{hi}, {a.precision}, {dev} "
          f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), torch {torch.__version__}; "
          f"dynamic compile {dyn_s:.1f} s")
    print(f"{a.axis:>6} {'dynamic ms':>11} {'static ms':>10} {'ratio':>6} {'static s':>9} {'max diff':>9}")
    for n in sizes:
        _, ys = _inputs(a.model, a.axis, n, a.size)
        ys = tuple(y.to(dev) for y in ys)
        t0 = time.perf_counter()
        static = fxc.compile(model, ys, device=dev, precision=a.precision, backend="torch")
        st_s = time.perf_counter() - t0
        d_ms, s_ms = [], []
        for _ in range(a.rounds):  # interleaved: drift on the machine moves both alike
            d_ms.append(_time(dyn, ys, dev, a.iters))
            s_ms.append(_time(static, ys, dev, a.iters))
        with torch.no_grad():
            diff = max((g.float() - w.float()).abs().max().item()
                       for g, w in zip(_leaves(dyn(*ys)), _leaves(static(*ys))))
        d, s = statistics.median(d_ms), statistics.median(s_ms)
        print(f"{n:>6} {d:>11.3f} {s:>10.3f} {d / s:>6.2f} {st_s:>9.1f} {diff:>9.2e}", flush=True)
        del static
    bucketed = getattr(dyn.engine, "bucketed", None)  # CUDA, symbolic: graphs per shape bucket
    print("dynamic module's CUDA graphs:", bucketed.status() if bucketed is not None else
          dict(dyn.report_data.sections).get("CUDA graph"))


if __name__ == "__main__":
    main()
