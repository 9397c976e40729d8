"""A pass's effect on real models: fxc with and without it, same process, same inputs.

    python3 scripts/ab_pass.py PASS MODEL@BATCH [MODEL@BATCH ...] [--size base] [--precision fp16]

For each model: fxc compiled twice (all passes; PASS disabled), CUDA-graph latency median of
--iters calls in --rounds interleaved rounds (CUDA events after warm-up), kernels per call of
the step loop (CUDA graphs off, torch.profiler), relative error against eager FP32 (TF32 off)
and the pass's report notes. One line a model; the ratio is with / without (below 1: faster).
"""
from __future__ import annotations

import argparse
import statistics

import torch

import fxc
from fxc import timing
from fxc.models import get
from garden_check import strict_fp32  # scripts/ is on sys.path when run as a script


def _compile(model, xs, dev, precision, disable, graphs=True):
    return fxc.compile(model, xs, device=dev, precision=precision, backend="torch",
                       disable_passes=disable, cuda_graphs=graphs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pass_name")
    p.add_argument("models", nargs="+")
    p.add_argument("--size", default="base")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    dev = torch.device("cuda")
    print(f"A/B of pass {a.pass_name} on {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, "
          f"{a.precision}, size {a.size}")
    print(f"{'model':<32}{'with ms':>9}{'without':>9}{'ratio':>7}{'kernels':>9}{'without':>9}"
          f"{'rel err':>10}{'without':>10}")
    for spec in a.models:
        name, batch = spec.split("@") if "@" in spec else (spec, "1")
        model, xs = get(name, size=a.size, batch=int(batch), seed=0)
        model, xs = model.to(dev), tuple(x.to(dev) for x in xs)
        sets = timing.rotated_inputs(xs)
        with torch.no_grad(), strict_fp32():
            want = model(*xs)
        runs = {}
        for label, disable in (("with", ()), ("without", (a.pass_name,))):
            c = _compile(model, xs, dev, a.precision, disable)
            with torch.no_grad():
                err = timing.max_error(c(*xs), want)[1]
            loop = _compile(model, xs, dev, a.precision, disable, graphs=False)
            kernels = timing.profile_kernels(loop, sets).per_call
            notes = [r.notes for r in c.report_data.records if r.name == a.pass_name]
            runs[label] = dict(c=c, err=err, kernels=kernels, notes=notes, ms=[])
            del loop
        for _ in range(a.rounds):
            for r in runs.values():
                r["ms"].append(timing.measure(r["c"], sets, device=dev, iters=a.iters).median_ms)
        w, wo = runs["with"], runs["without"]
        mw, mwo = statistics.median(w["ms"]), statistics.median(wo["ms"])
        print(f"{spec:<32}{mw:>9.3f}{mwo:>9.3f}{mw / mwo:>7.2f}{w['kernels']:>9.0f}{wo['kernels']:>9.0f}"
              f"{w['err']:>10.1e}{wo['err']:>10.1e}  {w['notes']}", flush=True)
        del runs, model


if __name__ == "__main__":
    main()
