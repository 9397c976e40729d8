"""CPU benchmark: eager vs torch.compile vs ONNX Runtime on torch.onnx.export's graph vs fxc
through ONNX Runtime (and fxc's torch runtime), FP32, batch 1, base-size zoo models.

    python3 benchmarks/cpu_onnx.py [--models resnet18,resnet50,mobilenet_v2,bert]
                                   [--threads 2] [--rounds 15] [--calls 3] [--json out.json]
                                   [--runners eager,compile,export,fxc-ort,fxc-torch]

Protocol (shared/BENCHMARKS.md): one process, every runner timed in the same run with
`time.perf_counter`; after warm-up, `rounds` rounds each time `calls` calls of every runner
in turn, the order rotated every round (so that load from other processes on a shared
machine, and the previous runner's still-spinning threads, hit all runners alike), over 3
rotating input sets; the median per call is reported, with p90 and the max abs /
relative-norm error against eager on the same inputs. The last column is ORT(export) time /
fxc ORT time: above 1, fxc is faster. ONNX Runtime runs the exported graph with the same
session options fxc uses (ORT_ENABLE_ALL, sequential, the same intra-op thread count) and
the same IO binding (inputs from torch memory, outputs into torch tensors). The load
average before and after is printed: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.utils._pytree as pytree

import fxc
from fxc.models import get
from fxc.peers import ort_export_runner  # the same peer `fxc bench` uses


def leaves(out):
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def errors(out, ref) -> tuple[float, float]:
    a, b = leaves(out), leaves(ref)
    mx = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
    rel = max(float((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30))
              for x, y in zip(a, b))
    return mx, rel


RUNNERS = {"eager": "eager", "compile": "torch.compile", "export": "ORT (onnx.export)",
           "fxc-ort": "fxc ORT", "fxc-torch": "fxc torch"}


def bench_model(name: str, threads: int, rounds: int, calls: int, which=tuple(RUNNERS)) -> dict:
    model, inputs = get(name, size="base", batch=1, seed=0)
    sets = [inputs] + [get(name, size="base", batch=1, seed=s)[1] for s in (1, 2)]
    runners, compile_s, notes = {}, {}, {}

    def eager(*xs):
        with torch.no_grad():
            return model(*xs)

    def timed(key, make):
        if key in which:
            t0 = time.perf_counter()
            runners[RUNNERS[key]] = make()
            runners[RUNNERS[key]](*inputs)
            compile_s[RUNNERS[key]] = time.perf_counter() - t0

    def torch_compiled():
        compiled_tc = torch.compile(model)

        def tc(*xs):
            with torch.no_grad():
                return compiled_tc(*xs)
        return tc

    def exported():
        with tempfile.TemporaryDirectory() as d:
            run, notes["exporter"] = ort_export_runner(model, inputs, threads, d)
        return run

    timed("eager", lambda: eager)
    timed("compile", torch_compiled)
    timed("export", exported)
    timed("fxc-ort", lambda: fxc.compile(model, inputs, backend="onnxruntime", ort_threads=threads))
    timed("fxc-torch", lambda: fxc.compile(model, inputs, backend="torch"))

    refs = [eager(*xs) for xs in sets]
    err = {k: max(errors(r(*xs), ref) for xs, ref in zip(sets, refs)) for k, r in runners.items()}
    for r in runners.values():  # warm-up
        for xs in sets:
            r(*xs)
    times = {k: [] for k in runners}
    keys = list(runners)
    for i in range(rounds):
        xs = sets[i % len(sets)]
        # Rotate the order each round: a runner's thread pool keeps spinning for a while
        # after its call and slows whichever runner comes next on a 2-core machine.
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            r = runners[k]
            t0 = time.perf_counter()
            for _ in range(calls):
                r(*xs)
            times[k].append((time.perf_counter() - t0) / calls * 1e3)
    result = {"model": name, "threads": threads, "compile_s": compile_s, "notes": notes, "runners": {}}
    for k, ts in times.items():
        ts = sorted(ts)
        result["runners"][k] = {"median_ms": statistics.median(ts),
                                "p90_ms": ts[min(len(ts) - 1, int(0.9 * len(ts)))],
                                "max_abs_err": err[k][0], "rel_err": err[k][1]}
    return result


def table(results: list[dict]) -> str:
    names = list(results[0]["runners"])
    both = "ORT (onnx.export)" in names and "fxc ORT" in names
    lines = ["| model | " + " | ".join(names) + (" | ORT(export) / fxc ORT |" if both else " |"),
             "|---|" + "---|" * (len(names) + both)]
    for r in results:
        cells = [f"{r['runners'][k]['median_ms']:.2f} ({r['runners'][k]['rel_err']:.0e})"
                 for k in names]
        ratio = (f" | {r['runners']['ORT (onnx.export)']['median_ms'] / r['runners']['fxc ORT']['median_ms']:.2f}x"
                 if both else "")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + ratio + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,bert")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--runners", default=",".join(RUNNERS),
                    help=f"comma-separated subset of {','.join(RUNNERS)}")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = []
    for name in args.models.split(","):
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        results.append(bench_model(name, args.threads, args.rounds, args.calls,
                                   tuple(args.runners.split(","))))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"FP32, batch 1, base size, {args.threads} threads, median ms per call (relative "
          f"norm error vs eager); {args.rounds} interleaved rounds x {args.calls} calls")
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
          f"{os.cpu_count()} CPUs; load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(table(results))
    print("compile / export seconds: " + "; ".join(
        f"{r['model']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["compile_s"].items())
        for r in results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_before": load_before, "load_after": load_after, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
