"""Latency measurement as ../shared/BENCHMARKS.md prescribes: warm-up, then many timed calls
rotating over several input sets; CUDA events on GPU, perf_counter on CPU; median/p90/p99."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Sequence

import torch


@dataclasses.dataclass
class Timing:
    median_ms: float
    p90_ms: float
    p99_ms: float
    samples: list[float]

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (p90 {self.p90_ms:.3f}, p99 {self.p99_ms:.3f})"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(fn: Callable, input_sets: Sequence[tuple], *, device: torch.device,
            warmup: int = 10, iters: int = 50) -> Timing:
    """Time `fn(*inputs)` per call; input sets are used round-robin so no cache is flattered."""
    n = len(input_sets)
    with torch.no_grad():
        for i in range(warmup):
            fn(*input_sets[i % n])
        samples = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for i in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*input_sets[i % n])
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
        else:
            for i in range(iters):
                t0 = time.perf_counter()
                fn(*input_sets[i % n])
                samples.append((time.perf_counter() - t0) * 1e3)
    return summary(samples)


def summary(samples: list[float]) -> Timing:
    """Median, p90 and p99 of per-call milliseconds."""
    return Timing(statistics.median(samples), _pct(samples, 0.9), _pct(samples, 0.99), samples)


def rotated_inputs(example: tuple, k: int = 3, seed: int = 0) -> list[tuple]:
    """k input sets like `example`: floats redrawn from randn, integer inputs permuted within
    their observed range (token ids stay valid), masks and other tensors kept."""
    g = torch.Generator().manual_seed(seed)
    sets = [example]
    for _ in range(k - 1):
        new = []
        for x in example:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                new.append(torch.randn(x.shape, generator=g).to(x.dtype).to(x.device))
            elif isinstance(x, torch.Tensor) and x.dtype == torch.int64 and x.numel() > 1 \
                    and int(x.max()) > 1:
                new.append(torch.randint(0, int(x.max()) + 1, x.shape, generator=g).to(x.device))
            else:
                new.append(x)
        sets.append(tuple(new))
    return sets


def max_error(actual, expected) -> tuple[float, float]:
    """(max abs error, relative norm error ||a-b||/||b||) over all tensor leaves."""
    import torch.utils._pytree as pytree
    a_leaves = [x for x in pytree.tree_leaves(actual) if isinstance(x, torch.Tensor)]
    b_leaves = [x for x in pytree.tree_leaves(expected) if isinstance(x, torch.Tensor)]
    abs_err, num, den = 0.0, 0.0, 0.0
    for a, b in zip(a_leaves, b_leaves):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        d = (a - b)
        abs_err = max(abs_err, d.abs().max().item() if d.numel() else 0.0)
        num += d.pow(2).sum().item()
        den += b.pow(2).sum().item()
    return abs_err, (num ** 0.5) / (den ** 0.5 if den > 0 else 1.0)
