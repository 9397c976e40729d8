"""Profiling a compiled module: where the time goes, step by step, and how latency spreads.

`profile(compiled, args, kwargs, iters)` does two things:
1. times every step of the torch engine's step loop (CUDA events around each step on GPU,
   perf_counter on CPU), averaged over a few calls, and ranks the costliest steps with their
   node, op and the user's source line;
2. times `iters` whole calls as the user makes them (the CUDA graph where there is one) and
   draws a text histogram with p50/p90/p99.

Per-step times come from the step loop even when calls replay a CUDA graph: a graph has no
per-kernel boundaries to time, so the step loop is the finest view there is (it includes
launch overhead the graph does not pay; the call latencies show the graph's own numbers).
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from fxc import ir
from fxc.errors import FxcOptionError


@dataclasses.dataclass
class StepTime:
    node: str
    op: str
    source: str
    ms: float


@dataclasses.dataclass
class Profile:
    steps: list[StepTime]        # mean ms per call, in schedule order
    latencies_ms: list[float]    # one per timed call
    device: str
    mode: str                    # 'cuda graph' or 'step loop'
    top: int = 15

    @property
    def step_total_ms(self) -> float:
        return sum(s.ms for s in self.steps)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the call latencies (q in 0..100)."""
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]

    def costliest(self) -> list[StepTime]:
        return sorted(self.steps, key=lambda s: -s.ms)[:self.top]

    def __str__(self) -> str:
        total = self.step_total_ms or 1.0
        out = [f"fxc profile  device={self.device}  calls run as: {self.mode}",
               f"costliest steps (step loop, mean of calls; steps total {self.step_total_ms:.3f} ms):",
               f"  {'ms':>9} {'share':>6}  {'node':<28} {'op':<40} source"]
        for s in self.costliest():
            out.append(f"  {s.ms:>9.4f} {s.ms / total:>6.1%}  {s.node:<28} {s.op:<40} {s.source}")
        out.append(f"\nlatency over {len(self.latencies_ms)} calls: p50 {self.percentile(50):.4f} ms"
                   f"  p90 {self.percentile(90):.4f} ms  p99 {self.percentile(99):.4f} ms")
        out.extend(histogram(self.latencies_ms))
        return "\n".join(out)


def histogram(xs: list[float], bins: int = 10, width: int = 40) -> list[str]:
    """Text histogram: one line a bin, '[lo, hi) ms  count  ####'."""
    if not xs:
        return ["  (no calls)"]
    lo, hi = min(xs), max(xs)
    step = (hi - lo) / bins or 1e-9
    counts = [0] * bins
    for x in xs:
        counts[min(bins - 1, int((x - lo) / step))] += 1
    peak = max(counts)
    return [f"  [{lo + i * step:9.4f}, {lo + (i + 1) * step:9.4f}) ms {c:>6}  "
            + "#" * round(width * c / peak) for i, c in enumerate(counts)]


class _CpuTimer:
    def __init__(self, n: int):
        self.total = [0.0] * n
        self.t0 = 0.0

    def before(self, k: int) -> None:
        self.t0 = time.perf_counter()

    def after(self, k: int) -> None:
        self.total[k] += (time.perf_counter() - self.t0) * 1e3

    def collect(self) -> list[float]:
        return self.total


class _CudaTimer:
    """An event pair per step per call; read once, after one synchronize."""

    def __init__(self, n: int):
        self.n, self.pairs = n, []

    def before(self, k: int) -> None:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        self.pairs.append([k, e, None])

    def after(self, k: int) -> None:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        self.pairs[-1][2] = e

    def collect(self) -> list[float]:
        torch.cuda.synchronize()
        total = [0.0] * self.n
        for k, a, b in self.pairs:
            total[k] += a.elapsed_time(b)
        return total


def profile(compiled, args: tuple, kwargs: dict, *, iters: int = 100, warmup: int = 5,
            step_iters: int = 10, top: int = 15) -> Profile:
    """Time `compiled` (a torch-backend CompiledModule) on these inputs; see module doc."""
    engine = compiled.engine
    if not hasattr(engine, "run_steps"):  # other runtimes have no step list of ours to time
        raise FxcOptionError(
            f"profile() times the torch backend's steps; this module runs on {engine.name} "
            f"(backend={compiled.options.backend!r}): compile with backend='torch' to profile it")
    cuda = compiled.options.device.type == "cuda"
    flat = compiled.checker.flatten(args, kwargs)
    with torch.no_grad():
        for _ in range(warmup):
            compiled(*args, **kwargs)
        steps = _time_steps(engine, flat, step_iters, cuda)
        lat = _time_calls(compiled, args, kwargs, iters, cuda)
    mode = "cuda graph" if getattr(engine, "cuda_graph", None) is not None else "step loop"
    return Profile(steps, lat, str(compiled.options.device), mode, top)


def _time_steps(engine, flat, n: int, cuda: bool) -> list[StepTime]:
    if cuda:
        flat = [engine.stager.to_device(i, x) for i, x in enumerate(flat)]
    timer = (_CudaTimer if cuda else _CpuTimer)(len(engine.steps))
    for _ in range(max(1, n)):
        engine.run_steps(flat, timer=timer)
    totals = timer.collect()
    return [StepTime(s.node.name, ir.op_name(s.node), ir.source_line(s.node) or "", t / max(1, n))
            for s, t in zip(engine.steps, totals)]


def _time_calls(compiled, args, kwargs, iters: int, cuda: bool) -> list[float]:
    out = []
    for _ in range(iters):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            compiled(*args, **kwargs)
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            compiled(*args, **kwargs)
            out.append((time.perf_counter() - t0) * 1e3)
    return out
