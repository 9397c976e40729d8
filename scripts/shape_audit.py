"""Audit a dynamic-shape compile: run the torch engine's step loop at a size other than the
example's and compare each step's result with its node's meta evaluated at that size. A
mismatch is a stale meta (a pass wrote a concrete meta on a symbolic graph) or a planned view
made at the wrong size; either lets an out= kernel resize its arena view over its neighbours.

  python3 scripts/shape_audit.py [--device cuda] [--model bert] [--at 1,8] [fxc option=value ...]

Prints the passes that were skipped or rolled back (and why), then every mismatching step
with its op, planned/sized flags, the meta's shape at the call's sizes and the actual shape.
"""
from __future__ import annotations

import argparse
import logging
import warnings

import torch
from torch.export import Dim

import fxc
from fxc.dynamic import input_symbols
from fxc.models import get
from fxc.runtime import torch_engine as te


def _symbolic(v) -> bool:
    """Free symbols in a size, read through the ShapeEnv's replacements (a size a guard fixed is
    a SymInt whose expression is a constant: not symbolic)."""
    from fxc import ir
    vs = v if isinstance(v, (tuple, list)) else [v]
    return any(isinstance(t, torch.Tensor) and any(ir.free_size(d) for d in t.shape) for t in vs)


def meta_census(stage: str, gm) -> None:
    """Nodes whose meta is concrete though an input's is symbolic: where a stage specialised."""
    sym = [n for n in gm.graph.nodes if _symbolic(n.meta.get("val"))]
    stale = [n.name for n in gm.graph.nodes if n.op == "call_function"
             and not _symbolic(n.meta.get("val"))
             and any(_symbolic(a.meta.get("val")) for a in n.all_input_nodes)]
    print(f"STAGE {stage:<22} symbolic metas {len(sym):4d}  concrete fed by symbolic "
          f"{len(stale):3d} {stale[:8]}")


class _Census:
    """Stands in for fxc.api.StageDumper: calls meta_census after each pass."""

    def __init__(self, *_a, **_k):
        pass

    def __call__(self, stage, gm):
        meta_census(stage, gm)

    def finish(self, *_a, **_k):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="bert")
    ap.add_argument("--at", default="1,8", help="batch,seq of the audited call")
    ap.add_argument("options", nargs="*", help="extra fxc.compile options, key=value (python literals)")
    a = ap.parse_args()
    logging.getLogger("fxc").setLevel(logging.DEBUG)
    extra = {k: eval(v) for k, v in (o.split("=", 1) for o in a.options)}  # noqa: S307 - a dev tool
    model, xs = get(a.model, size="tiny", batch=2)
    dev = torch.device(a.device)
    model, xs = model.to(dev), tuple(x.to(dev) for x in xs)
    b, s = Dim("batch", min=1, max=16), Dim("seq", min=8, max=64)
    import fxc.api
    fxc.api.StageDumper = _Census
    c = fxc.compile(model, xs, backend="torch", precision="fp32", cuda_graphs=False,
                    dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}), dump_dir="unused", **extra)
    meta_census("after build", c.engine.gm)
    for line in c.report().splitlines():
        if "rolled back" in line or "needs static" in line:
            print("REPORT", line.strip())
    eng = c.engine
    n, t = (int(v) for v in a.at.split(","))
    ys = [x[:1, :1].expand(n, t).contiguous() for x in xs]
    values = te._symbol_values(input_symbols(eng.gm), ys)
    cache: dict = {}
    env = eng._fresh_env(ys)
    sized = eng._sized.views(ys) if eng._sized is not None else {}
    bad = 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # an out= resize warning becomes the step's failure
        for step in eng.steps:
            args, kwargs = te._fill(step, env)
            if step.sized:
                kwargs = {**kwargs, **sized[step.node.name]}
            meta = step.node.meta.get("val")
            want = te._layout_at(meta, values, cache)[0] if isinstance(meta, torch.Tensor) else None
            try:
                res = step.fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported; later steps would read garbage
                print(f"FAIL %{step.node.name} {step.node.target} planned={step.planned} "
                      f"sized={step.sized} meta={tuple(meta.shape) if want else None}: "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
                bad += 1
                break
            if isinstance(res, torch.Tensor) and want is not None and tuple(res.shape) != want:
                bad += 1
                print(f"STALE %{step.node.name} {step.node.target} planned={step.planned} "
                      f"sized={step.sized} meta@call={want} actual={tuple(res.shape)} "
                      f"meta={tuple(meta.shape)}")
            env[step.out] = res
            for sl in step.frees:
                env[sl] = None
    print(f"audited {len(eng.steps)} steps at {values}: {bad} problems")


if __name__ == "__main__":
    main()
