"""INT8 against FP32, both fxc through ONNX Runtime on the CPU, in one process (issue 17.2).

    python scripts/int8_bench.py                       # resnet50 and bert, base size
    python scripts/int8_bench.py --models resnet50 --methods minmax,entropy --profile

For each model: fxc's FP32 compile (backend='onnxruntime') and its INT8 compile
(precision='int8', calibration= batches drawn like the example inputs: floats from randn,
token ids at random), then
- speed: both timed in interleaved rounds (the order reversed every other round, as
  `fxc bench` does on a CPU); the speed-up is the median of the per-round ratios, with its
  25th-75th percentiles, so a shared machine's load moves both numbers of a round alike, and
  the ratio of the fastest calls (what each does when nothing else runs);
- accuracy on held-out batches from the same distribution: top-1 agreement with FP32 (a
  classifier), cosine similarity of every output with FP32's (min over batches), and the
  number of distinct FP32 top-1 classes (agreement means little if FP32 always says one);
  as a yardstick, the same figures for eager PyTorch in bfloat16 against FP32.
Goals (issue 17): speed-up >= 1.8x; resnet50 top-1 agreement >= 99%; bert cosine >= 0.99.
--profile prints ONNX Runtime's per-op-type time for both sessions (where the time goes).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fxc  # noqa: E402
from fxc import timing  # noqa: E402
from fxc.models import get  # noqa: E402


def machine() -> str:
    import onnxruntime as ort
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from fxc.quant.qdq import cpu_has_vnni
    return (f"{name}, {os.cpu_count()} cores, {'VNNI' if cpu_has_vnni() else 'no VNNI'}; "
            f"onnxruntime {ort.__version__}, torch {torch.__version__}")


def flat(out) -> list[torch.Tensor]:
    import torch.utils._pytree as pytree
    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def bf16(model):
    """Eager bfloat16: a yardstick for how far a model's answers move under ~0.4% rounding."""
    import copy
    m = copy.deepcopy(model).to(torch.bfloat16)
    cast = lambda x: x.to(torch.bfloat16) if x.is_floating_point() else x  # noqa: E731

    def run(*xs):
        with torch.no_grad():
            return [y.float() for y in flat(m(*[cast(x) for x in xs]))]
    return run


def accuracy(fp32, int8, sets, classifier: bool) -> dict:
    agree, classes, cos, gaps, flips = 0, set(), [], [], []
    for s in sets:
        ref, got = flat(fp32(*s)), flat(int8(*s))
        cos.append(min(cosine(g, r) for g, r in zip(got, ref)))
        if classifier:
            r, g = ref[0].argmax(-1), got[0].argmax(-1)
            agree += int((r == g).sum())
            classes |= set(r.tolist())
            top2 = ref[0].topk(2, -1).values
            gap = (top2[:, 0] - top2[:, 1]) / ref[0].std(-1)  # in units of the logits' spread
            gaps += gap.tolist()
            flips += gap[r != g].tolist()
    n = sum(s[0].shape[0] for s in sets)
    return {"agree": agree / n if classifier else None, "classes": len(classes),
            "cos_min": min(cos), "cos_mean": statistics.fmean(cos), "n": n,
            "gap_median": statistics.median(gaps) if gaps else None,
            "flip_gap_max": max(flips) if flips else None}


def interleaved(runners: dict, sets, rounds: int, iters: int) -> dict:
    per = max(1, iters // rounds)
    meds = {k: [] for k in runners}
    best = {k: float("inf") for k in runners}
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for k in order:
            t = timing.measure(runners[k], sets, device=torch.device("cpu"),
                               warmup=5 if r == 0 else 1, iters=per)
            meds[k].append(t.median_ms)
            best[k] = min(best[k], min(t.samples))
    return meds, best


def ratio(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    rs = sorted(a / b for a, b in zip(slow, fast))
    q = lambda f: rs[min(len(rs) - 1, int(f * len(rs)))]  # noqa: E731
    return statistics.median(rs), q(0.25), q(0.75)


def ort_profile(compiled, sets, calls: int = 10) -> dict[str, float]:
    """ms per call by ONNX Runtime op type, from its own profiler, for a compiled module."""
    import onnxruntime as ort
    from fxc.runtime.ort_engine import physical_cores
    low = compiled.engine.lowered
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.intra_op_num_threads = physical_cores()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.profile_file_prefix = "/tmp/fxc_int8_prof"
    sess = ort.InferenceSession(low.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = [{n: x.numpy() for n, x in zip(low.input_names, s)} for s in sets]
    for i in range(calls):
        sess.run(None, feeds[i % len(feeds)])
    path = sess.end_profiling()
    agg = collections.Counter()
    with open(path) as f:
        for e in json.load(f):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                agg[e["args"]["op_name"]] += e["dur"] / 1e3 / calls
    os.unlink(path)
    return dict(agg.most_common())


def run(name: str, size: str, method: str, args) -> dict:
    model, example = get(name, size=size)
    calib = timing.rotated_inputs(example, args.calib + 1, seed=1)[1:]
    evals = timing.rotated_inputs(example, args.eval + 1, seed=2)[1:]
    t0 = time.perf_counter()
    fp32 = fxc.compile(model, example, backend="onnxruntime")
    t1 = time.perf_counter()
    int8 = fxc.compile(model, example, backend="onnxruntime", precision="int8",
                       calibration=calib, calibration_method=method)
    t2 = time.perf_counter()
    classifier = flat(model(*example))[0].dim() == 2
    acc = accuracy(fp32, int8, evals, classifier)
    yard = accuracy(fp32, bf16(model), evals[:args.yardstick], classifier)
    acc.update(bf16_agree=yard["agree"], bf16_cos=yard["cos_min"], bf16_n=yard["n"])
    meds, best = interleaved({"fp32": fp32, "int8": int8}, evals[:4], args.rounds, args.iters)
    section = dict(int8.report_data.sections).get("INT8 quantization", [])
    row = {"model": name, "size": size, "method": method, "calib": args.calib,
           "fp32_ms": statistics.median(meds["fp32"]), "int8_ms": statistics.median(meds["int8"]),
           "speedup": ratio(meds["fp32"], meds["int8"]), "rounds": meds,
           "fp32_min": best["fp32"], "int8_min": best["int8"],
           "compile_s": (t1 - t0, t2 - t1), "report": section, **acc}
    if args.profile:
        row["profile"] = {"fp32": ort_profile(fp32, evals), "int8": ort_profile(int8, evals)}
    return row


def table(rows: list[dict]) -> str:
    out = ["| model | calibration | FP32 ms median / min | INT8 ms median / min | speed-up: "
           "rounds' median (IQR); of the minimums | top-1 agreement "
           "(FP32 classes) | cosine min / mean | eager bf16: agreement, cosine min | compile s FP32 / INT8 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, lo, hi = r["speedup"]
        agree = f"{r['agree']:.1%} of {r['n']} ({r['classes']})" if r["agree"] is not None else "-"
        out.append(f"| {r['model']} ({r['size']}) | {r['method']}, {r['calib']} batches | "
                   f"{r['fp32_ms']:.1f} / {r['fp32_min']:.1f} | {r['int8_ms']:.1f} / {r['int8_min']:.1f} | "
                   f"{s:.2f}x ({lo:.2f}-{hi:.2f}); {r['fp32_min'] / r['int8_min']:.2f}x | "
                   f"{agree} | {r['cos_min']:.4f} / {r['cos_mean']:.4f} | "
                   f"{'-' if r['bf16_agree'] is None else format(r['bf16_agree'], '.1%')}, "
                   f"{r['bf16_cos']:.4f} (of {r['bf16_n']}) | "
                   f"{r['compile_s'][0]:.0f} / {r['compile_s'][1]:.0f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,bert", help="zoo or garden names, comma-separated")
    p.add_argument("--size", default="base")
    p.add_argument("--methods", default="minmax", help="calibration methods, comma-separated")
    p.add_argument("--calib", type=int, default=16, help="calibration batches")
    p.add_argument("--eval", type=int, default=64, help="held-out batches for accuracy")
    p.add_argument("--yardstick", type=int, default=16,
                   help="held-out batches for eager bf16's figures (slow on a CPU)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=60, help="timed calls per runner, over all rounds")
    p.add_argument("--profile", action="store_true", help="ONNX Runtime's time per op type")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# fxc INT8 vs FP32 through ONNX Runtime, batch 1, one process\n# {machine()}\n"
          f"# {time.strftime('%Y-%m-%d %H:%M')}, {args.rounds} interleaved rounds, "
          f"{args.iters} calls per runner\n", flush=True)
    rows = []
    for name in args.models.split(","):
        for method in args.methods.split(","):
            r = run(name, args.size, method, args)
            rows.append(r)
            print(f"## {name} ({method})", *(f"  {ln}" for ln in r["report"]), sep="\n", flush=True)
            if r["gap_median"] is not None:
                print(f"  FP32 top-1 minus top-2 logit, in logit standard deviations: median "
                      f"{r['gap_median']:.3f}; largest among the int8 disagreements: "
                      f"{r['flip_gap_max'] if r['flip_gap_max'] is None else round(r['flip_gap_max'], 3)}")
            if args.profile:
                for k, prof in r["profile"].items():
                    top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(prof.items())[:8])
                    print(f"  ORT profile {k} (ms/call, total {sum(prof.values()):.1f}): {top}")
    print("\n" + table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
