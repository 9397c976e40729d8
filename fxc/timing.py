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


# -- kernels per call ------------------------------------------------------------------------
# torch.profiler (CUDA activity: CUPTI through Kineto) keeps every device record in
# prof.events(), correlated to a host op or not. A kernel that ran inside a replayed CUDA graph
# comes back as its own record (CUPTI's concurrent-kernel activity reports graph nodes one by
# one), carrying the correlation id of the cudaGraphLaunch that started it; the launch itself is
# a host-side runtime record. Whether those records arrive depends on CUPTI, not on torch
# (graph tracing has had CUPTI bugs), so a replay's count is trusted only when kernels tied to
# its launch were seen; otherwise the caller's non-graph variant is counted and the row says so.

GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")  # runtime and driver API, any _v suffix
NO_CUDA = "no CUDA"


@dataclasses.dataclass
class KernelCount:
    per_call: float        # CUDA kernels per call (memcpy, memset and syncs are not kernels)
    graph_launches: float  # CUDA graph launches per call
    in_graphs: float       # kernels per call that carry a graph launch's correlation id


# record_function ranges that Kineto may project onto the GPU as device-side spans
ANNOTATIONS = ("## ", "Torch-Compiled Region", "CompiledFunction", "TORCHDYNAMO", "ProfilerStep")


def _is_kernel(e) -> bool:
    kind = getattr(e, "activity_type", None)  # newer torch: Kineto's activity type, e.g. 'kernel'
    if kind:
        return kind == "kernel"
    name = e.name or ""  # older torch: by name (CUPTI's names for copies, fills and syncs)
    return not (name.startswith(("Memcpy", "Memset") + ANNOTATIONS) or name.endswith("Sync")
                or "inductor_wrapper_call" in name or getattr(e, "is_user_annotation", False))


def count_kernels(events, calls: int) -> KernelCount:
    """Kernels per call over `calls` calls profiled into `events` (torch.profiler's
    FunctionEvents, or anything with name, device_type and id: the correlation id)."""
    cuda = torch.autograd.DeviceType.CUDA
    kernels = [e for e in events if e.device_type == cuda and _is_kernel(e)]
    launches = [e for e in events if e.device_type != cuda
                and (e.name or "").startswith(GRAPH_LAUNCHES)]
    ids = {e.id for e in launches if e.id}  # 0: no correlation id, ties nothing
    n = max(1, calls)
    return KernelCount(len(kernels) / n, len(launches) / n,
                       sum(1 for k in kernels if k.id in ids) / n)


def profile_kernels(fn: Callable, input_sets: Sequence[tuple], calls: int = 5,
                    warmup: int = 2) -> KernelCount:
    """Run `fn` `calls` times (after `warmup` calls) under torch.profiler, CUDA activity only."""
    from torch.profiler import ProfilerActivity, profile
    n = len(input_sets)
    with torch.no_grad():
        for i in range(warmup):
            fn(*input_sets[i % n])
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(calls):
                fn(*input_sets[i % n])
            torch.cuda.synchronize()
    return count_kernels(prof.events(), calls)


def kernels_per_call(fn: Callable, input_sets: Sequence[tuple], device: torch.device,
                     non_graph=None, calls: int = 5, profiler=profile_kernels
                     ) -> tuple[float | None, str]:
    """(CUDA kernels per call of `fn`, how it was counted) or (None, why it cannot be known).

    Where the profile shows a CUDA graph launch but no kernel tied to it, the graph's kernels
    were invisible to the profiler: then `non_graph` is counted instead, the same work without
    the graph, given as (label, callable) or (label, count already known, or None with
    the reason as label); without one the count is unknown. A call that shows no kernel at all
    is not believed either (every model launches some: the profiler saw nothing)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, f"{NO_CUDA}: kernels are counted on GPU runs only"
    try:
        got = profiler(fn, input_sets, calls)
    except Exception as e:
        return None, f"profiler failed: {type(e).__name__}: {str(e)[:120]}"
    if not got.graph_launches:
        if not got.per_call:
            return None, "the profiler saw no CUDA kernel in these calls (CUPTI records lost)"
        return got.per_call, "profiled"
    other, why = _count_variant(non_graph, input_sets, calls, profiler)
    if got.in_graphs:  # the graph's kernels are visible; the variant's count shown beside
        return got.per_call, (f"graph replay: {got.in_graphs:g} of the {got.per_call:g} kernels "
                              f"inside the graph" + (f"; {why}" if why else ""))
    seen = (f"replayed {got.graph_launches:g} CUDA graph(s) a call and the profiler saw no "
            f"kernel inside ({got.per_call:g} kernels a call outside)")
    if other is None:
        return None, f"{seen}; {why or 'no variant of this runner without the graph to count'}"
    return other, f"counted on {non_graph[0]}: {seen}"


def _count_variant(non_graph, input_sets, calls, profiler) -> tuple[float | None, str]:
    """(count of the runner's non-graph variant, 'label: count' or why it has none)."""
    if non_graph is None:
        return None, ""
    label, other = non_graph
    if callable(other):
        try:
            other = profiler(other, input_sets, calls).per_call
        except Exception as e:
            return None, f"profiling {label} failed: {type(e).__name__}"
    if not other:
        return None, f"{label} could not be counted"
    return other, f"{label}: {other:g}"
