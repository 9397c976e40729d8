"""`fxc bench`: fxc against eager and the peers, in one process, as ../shared/BENCHMARKS.md says.

Every runner of a table is built and timed in the same run: warm-up, then `iters` calls over
3 rotating input sets, CUDA events on GPU (perf_counter on CPU); median, p90, p99, throughput,
compile time (module to first result), peak memory during inference (GPU, weights excluded)
and the max error against eager FP32 on the same inputs.

Runners: eager_fp32, eager_<precision>, eager_<precision>_cudagraph (GPU), torch.compile
default and reduce-overhead (GPU, --torch-compile), ort_export (CPU: ONNX Runtime on the graph
torch.onnx.export writes) and fxc with each available backend; on CUDA also fxc_torch_zero_copy,
fxc under the contract of the CUDA-graph peers (outputs are static buffers that the next call
overwrites; by default fxc returns outputs the caller owns).

Models: zoo names (`resnet50`) and garden names (`tv:convnext_tiny`, `hf:bert-base`: library
models, fxc.models.garden), both through fxc.models.get; a model is built once per (model,
batch) and shared by every runner.

Kernels per call (GPU): the CUDA kernels one call launches, counted with torch.profiler over a
few calls after the timing, never inside it; memcpy and memset are not kernels. A runner that
replays a CUDA graph (eager_*_cudagraph, torch.compile_ro, fxc on the torch backend) is counted
on its replay where the profiler shows the kernels inside the graph (CUPTI reports them one by
one, tied to the graph's launch); where it does not, the row is counted on the same runner
without its graph (the eager model, torch.compile default, fxc's step loop) and its
kernels_how says so. A count that cannot be known is None, with the reason in kernels_how.

Compile time: wall seconds from the module to the first result; for torch.compile that is its
first call. Under --isolate each child gets an empty TORCHINDUCTOR_CACHE_DIR, so
torch.compile's first call is a cold one, as a user's first compile is; without it the
process's cache may be warm from an earlier run.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable

import torch

from . import timing

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass
class Row:
    model: str
    batch: int
    runner: str
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None       # samples / s
    compile_s: float | None = None
    peak_mem_mb: float | None = None      # GPU: peak allocated during calls, beyond the weights
    max_abs_err: float | None = None
    rel_err: float | None = None
    error: str | None = None
    round_ms: list[float] | None = None   # CPU: the median of each interleaved round, in order
    kernels_per_call: float | None = None  # GPU: CUDA kernels one call launches (module doc)
    kernels_how: str | None = None         # how they were counted, or why they cannot be


def _cast_inputs(inputs: tuple, dtype: torch.dtype) -> tuple:
    return tuple(x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                 for x in inputs)


def _eager(model, precision, device):
    m = copy.deepcopy(model).to(device)
    if precision != "fp32":
        m = m.to(DTYPES[precision])
    dtype = DTYPES[precision]

    def run(*xs):
        return m(*_cast_inputs(xs, dtype))
    return run


def _eager_cudagraph(model, precision, device, example):
    """The eager model replayed as one CUDA graph over static input buffers."""
    run_eager = _eager(model, precision, device)
    static = [x.clone() for x in example]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            run_eager(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = run_eager(*static)

    def run(*xs):
        for s, x in zip(static, xs):
            s.copy_(x)
        graph.replay()
        return static_out
    # The graph reads the model copy's weights by address but does not own them: without this
    # reference the copy is freed on return, its memory reused, and replays read garbage (a
    # gather over HF BERT's freed position_ids buffer asserted out of bounds; issue 16.7).
    run.keep_alive = (run_eager, graph, static)
    return run


def _torch_compile(model, precision, device, mode):
    run_eager = _eager(model, precision, device)
    return torch.compile(run_eager, mode=mode)


def _fxc(model, precision, device, example, backend, disable=(), **options):
    import fxc
    return fxc.compile(model, example, device=device, precision=precision, backend=backend,
                       disable_passes=disable, **options)


def runners(device: torch.device, precision: str, with_torch_compile: bool,
            fxc_backends: list[str], tc_modes=("default", "reduce-overhead")
            ) -> list[tuple[str, Callable]]:
    """(name, build(model, example) -> callable) in table order."""
    out = [("eager_fp32", lambda m, ex: _eager(m, "fp32", device))]
    if precision != "fp32":
        out.append((f"eager_{precision}", lambda m, ex: _eager(m, precision, device)))
    if device.type == "cuda":
        out.append((f"eager_{precision}_cudagraph",
                    lambda m, ex: _eager_cudagraph(m, precision, device, ex)))
        if with_torch_compile and "default" in tc_modes:
            out.append(("torch.compile", lambda m, ex: _torch_compile(m, precision, device, None)))
        if with_torch_compile and "reduce-overhead" in tc_modes:
            out.append(("torch.compile_ro",
                        lambda m, ex: _torch_compile(m, precision, device, "reduce-overhead")))
    else:
        out.append(("ort_export", lambda m, ex: _ort_export(m, ex)))
        if with_torch_compile:
            out.append(("torch.compile", lambda m, ex: _torch_compile(m, precision, device, None)))
    for b in fxc_backends:
        out.append((f"fxc_{b}", lambda m, ex, b=b: _fxc(m, precision, device, ex, b)))
    if device.type == "cuda" and "torch" in fxc_backends:
        # The CUDA-graph peers return their static output buffers, overwritten by the next
        # call; fxc's default clones its outputs. This row is fxc under the peers' contract.
        out.append(("fxc_torch_zero_copy", lambda m, ex: _fxc(m, precision, device, ex, "torch",
                                                               zero_copy_outputs=True)))
    return out


def _ort_export(model, example):
    from .peers import ort_export_runner
    run, _how = ort_export_runner(model, example, threads=torch.get_num_threads())
    return run


def available_backends(device: torch.device, precision: str) -> list[str]:
    from . import backends
    from .options import resolve
    names = []
    for name in ("torch", "onnxruntime", "tensorrt"):
        opts = resolve(device=device, precision=precision, backend=name, verify=False,
                       dump_dir=None, disable_passes=(), default_device=device)
        try:
            backends.choose(opts)
            names.append(name)
        except Exception:
            continue
    return names


def bench_one(name: str, size: str, batch: int, device: torch.device, precision: str,
              iters: int, with_torch_compile: bool, backends_: list[str],
              progress: Callable[[str], None] = lambda s: None,
              tc_modes=("default", "reduce-overhead"), rounds: int | None = None,
              kernels: bool = True) -> list[Row]:
    """One row per runner. On GPU each runner is built, timed, its kernels counted (`kernels`)
    and freed in turn (its peak memory is its own). On CPU all runners are built first and
    timed in `rounds` interleaved rounds (default 5) of iters/rounds calls each, so the load of
    a shared machine drifting during the run falls on every runner alike rather than on
    whichever ran then. A model that cannot be built is one '(model)' row with the error."""
    try:
        model, sets = _model(name, size, batch, device)
        example = sets[0]
        with torch.no_grad():
            refs = [model.to(device)(*s) for s in sets]
    except Exception as e:  # a garden model whose library is missing, an OOM: a row
        row = Row(name, batch, "(model)")
        _fail(row, e)
        return [row]
    plan = runners(device, precision, with_torch_compile, backends_, tc_modes)
    rows = []
    if device.type == "cuda":
        # The eager CUDA-graph peer runs last: capturing a model whose Python code syncs
        # (transformers' mask checks) fails, and a failed capture can leave the process's CUDA
        # state unusable; then it costs its own row, not every runner after it.
        order = sorted(range(len(plan)), key=lambda i: plan[i][0].endswith("_cudagraph"))
        for rname, build in (plan[i] for i in order):
            progress(f"{name} b{batch}: {rname}")
            _journal({"started": rname})
            row, fn = _build(name, batch, rname, build, model, example, sets, refs, device)
            try:
                if fn is not None:
                    _time(row, fn, sets, device, iters)
                    if kernels and not row.error:
                        progress(f"{name} b{batch}: kernels of {rname}")
                        row.kernels_per_call, row.kernels_how = timing.kernels_per_call(
                            fn, sets, device, non_graph=_non_graph(rname, fn, rows))
                del fn
                torch.cuda.empty_cache()
            except Exception as e:  # timing or counting failed: this runner's row says why
                _fail(row, e)
            rows.append(row)
            _journal({"row": dataclasses.asdict(row)})
        rank = {rname: i for i, (rname, _) in enumerate(plan)}
        rows.sort(key=lambda r: rank[r.runner])  # back in table order
    else:
        built = []
        for rname, build in plan:
            progress(f"{name} b{batch}: building {rname}")
            built.append(_build(name, batch, rname, build, model, example, sets, refs, device))
        progress(f"{name} b{batch}: timing {len(built)} runners interleaved")
        _time_interleaved(built, sets, device, iters, rounds or 5)
        rows = [row for row, _ in built]
        for row, fn in built:
            if kernels and fn is not None:
                row.kernels_per_call, row.kernels_how = timing.kernels_per_call(fn, sets, device)
    model.cpu()
    return rows


def _model(name: str, size: str, batch: int, device: torch.device):
    """(model, 3 input sets on `device`), the model built once. Zoo models draw their sets from
    seeds 0-2 (inputs only matter); a garden model (name with ':') may take many seconds to
    build, so its other two sets are rotated from its example (timing.rotated_inputs)."""
    from .models import get
    model, example = get(name, size=size, batch=batch, seed=0)
    if ":" in name:
        sets = timing.rotated_inputs(tuple(example))
    else:
        sets = [example] + [get(name, size=size, batch=batch, seed=s)[1] for s in (1, 2)]
    return model, [tuple(x.to(device) for x in s) for s in sets]


def _non_graph(rname: str, fn, done: list[Row]):
    """The runner without its CUDA graph, counted when the profiler cannot see inside a
    replayed graph (timing.kernels_per_call): fxc's own step loop (what its graph captured),
    or the row already measured of the peer that runs the same kernels without the graph."""
    engine = getattr(fn, "engine", None)
    if rname.startswith("fxc"):
        if getattr(engine, "cuda_graph", None) is None or not hasattr(engine, "run_steps"):
            return None
        return "fxc's step loop (the steps its CUDA graph captured)", lambda *xs: _step_loop(fn, xs)
    peer = "torch.compile" if rname == "torch.compile_ro" else (
        rname[:-len("_cudagraph")] if rname.endswith("_cudagraph") else None)
    if peer is None:
        return None
    got = next((r for r in done if r.runner == peer), None)
    if got is None or got.kernels_per_call is None:
        why = "not in this run" if got is None else (got.kernels_how or got.error or "no count")
        return f"{peer} ({why})", None
    return f"{peer}, the same kernels without the graph", got.kernels_per_call


def _step_loop(compiled, xs: tuple):
    engine = compiled.engine
    flat = compiled.checker.flatten(xs, {})
    return engine.run_steps([engine.stager.to_device(i, x) for i, x in enumerate(flat)])


def _build(name, batch, rname, build, model, example, sets, refs, device):
    """(row with compile time and error filled, fn) or (row with the failure, None)."""
    row = Row(name, batch, rname)
    try:
        _sync(device)
        t0 = time.perf_counter()
        fn = build(model, example)
        with torch.no_grad():
            fn(*example)
        _sync(device)
        row.compile_s = time.perf_counter() - t0
        with torch.no_grad():
            row.max_abs_err, row.rel_err = timing.max_error(fn(*sets[1]), refs[1])
        return row, fn
    except Exception as e:  # a peer that cannot run this model is a row, not a crash
        _fail(row, e)
        return row, None


def _fail(row: Row, e: Exception) -> None:
    row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def _time(row: Row, fn, sets, device, iters: int) -> None:
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t = timing.measure(fn, sets, device=device, warmup=10, iters=iters)
        if device.type == "cuda":
            row.peak_mem_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        _fill(row, t)
    except Exception as e:
        _fail(row, e)


def _time_interleaved(built: list, sets, device, iters: int, rounds: int) -> None:
    """Every runner timed in each of `rounds` rounds, the order reversed every other round (a
    runner is not always the one right after the same neighbour). Each row keeps its rounds'
    medians in order, so two runners can be compared round by round (paired_ratio): the load
    of a shared machine moves both of a round's numbers alike."""
    samples: dict[int, list[float]] = {i: [] for i, (_, fn) in enumerate(built) if fn is not None}
    per_round = max(1, iters // rounds)
    for r in range(rounds):
        order = list(samples) if r % 2 == 0 else list(samples)[::-1]
        for i in order:
            row, fn = built[i]
            if row.error:
                continue
            try:
                t = timing.measure(fn, sets, device=device, warmup=10 if r == 0 else 2,
                                   iters=per_round)
                samples[i] += t.samples
                row.round_ms = (row.round_ms or []) + [t.median_ms]
            except Exception as e:
                _fail(row, e)
    for i, xs in samples.items():
        if xs and not built[i][0].error:
            _fill(built[i][0], timing.summary(xs))


def paired_ratio(slow: Row, fast: Row) -> tuple[float, float, float] | None:
    """slow / fast, round by round (both rows timed in the same interleaved rounds): the
    median ratio and the 25th/75th percentiles, or None without per-round times."""
    a, b = slow.round_ms or [], fast.round_ms or []
    if not a or len(a) != len(b):
        return None
    ratios = sorted(x / y for x, y in zip(a, b))
    q = lambda f: ratios[min(len(ratios) - 1, int(f * len(ratios)))]  # noqa: E731
    return statistics.median(ratios), q(0.25), q(0.75)


def _fill(row: Row, t: timing.Timing) -> None:
    row.median_ms, row.p90_ms, row.p99_ms = t.median_ms, t.p90_ms, t.p99_ms
    row.throughput = row.batch / (t.median_ms / 1e3)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(rows: list[Row]) -> str:
    """Terminal table: one line a runner, with the speed-up over the best peer per model."""
    w = max([14] + [len(r.model) + 1 for r in rows])  # garden names run long
    hdr = (f"{'model':<{w}}{'batch':>6}  {'runner':<26}{'median ms':>10}{'p90':>9}{'p99':>9}"
           f"{'compile s':>10}{'peak MB':>9}{'rel err':>10}{'kernels':>9}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        if r.error:
            lines.append(f"{r.model:<{w}}{r.batch:>6}  {r.runner:<26}  failed: {r.error}")
            continue
        mem = f"{r.peak_mem_mb:>9.1f}" if r.peak_mem_mb is not None else f"{'':>9}"
        lines.append(f"{r.model:<{w}}{r.batch:>6}  {r.runner:<26}{r.median_ms:>10.3f}"
                     f"{r.p90_ms:>9.3f}{r.p99_ms:>9.3f}{r.compile_s:>10.2f}{mem}{r.rel_err:>10.1e}"
                     f"{kernels_cell(r.kernels_per_call, r.kernels_how):>9}")
    lines += ["", "fxc vs the best peer (median; >1 means fxc is faster), kernels per call, "
              "relative error against eager FP32 and compile time (s, module to first result):"]
    lines += [f"  {line}" for line in ratios(rows)]
    notes = [f"  {r.model} b{r.batch} {r.runner}: {r.kernels_how}" for r in rows
             if r.kernels_how and not r.kernels_how.startswith(timing.NO_CUDA)
             and (r.kernels_per_call is None or r.kernels_how.startswith("counted on"))]
    if notes:
        lines += ["", "kernels per call: * counted on the runner without its CUDA graph; "
                  "empty: not known"] + notes
    return "\n".join(lines)


def kernels_cell(count: float | None, how: str | None) -> str:
    """'212', '212.4' (varies between calls), '212*' (counted on the runner without its CUDA
    graph: the profiler showed none of the graph's kernels) or '' (unknown: see kernels_how)."""
    if count is None:
        return ""
    text = f"{count:.0f}" if float(count).is_integer() else f"{count:.1f}"
    return text + ("*" if how and how.startswith("counted on") else "")


def _is_fxc(r: Row) -> bool:
    return r.runner.startswith("fxc")


def summary(rows: list[Row]) -> list[dict]:
    """Per (model, batch), in run order, what the issue's goals compare: the fastest fxc runner
    against the fastest peer (speedup: peer ms / fxc ms, and against torch.compile_ro), their
    kernels per call, fxc's relative error against eager FP16's own (eager_<precision>: err_ratio,
    goal <= 1.5) and fxc's compile time against torch.compile's first call (default mode, the
    first compile of the process; reduce-overhead's where default did not run)."""
    out = []
    for key in dict.fromkeys((r.model, r.batch) for r in rows):
        group = [r for r in rows if (r.model, r.batch) == key]
        timed = [r for r in group if r.median_ms]
        mine = [r for r in timed if _is_fxc(r)]
        peers = [r for r in timed if not _is_fxc(r)]
        if not mine or not peers:
            continue
        best = min(mine, key=lambda r: r.median_ms)
        peer = min(peers, key=lambda r: r.median_ms)
        by = {r.runner: r for r in timed}
        half = next((r for r in timed if r.runner.startswith("eager_") and r.runner != "eager_fp32"
                     and not r.runner.endswith("_cudagraph")), None)
        tc = by.get("torch.compile") or by.get("torch.compile_ro")
        ro = by.get("torch.compile_ro")
        ratio = lambda a, b: a / b if a is not None and b else None  # noqa: E731
        out.append(dict(
            model=key[0], batch=key[1], fxc=best.runner, fxc_ms=best.median_ms,
            peer=peer.runner, peer_ms=peer.median_ms, speedup=peer.median_ms / best.median_ms,
            speedup_vs_tc_ro=ratio(ro.median_ms, best.median_ms) if ro else None,
            fxc_kernels=best.kernels_per_call, fxc_kernels_how=best.kernels_how,
            peer_kernels=peer.kernels_per_call, peer_kernels_how=peer.kernels_how,
            fxc_rel_err=best.rel_err, eager_half=half.runner if half else None,
            eager_half_rel_err=half.rel_err if half else None,
            err_ratio=ratio(best.rel_err, half.rel_err) if half else None,
            fxc_compile_s=best.compile_s, tc=tc.runner if tc else None,
            tc_compile_s=tc.compile_s if tc else None,
            compile_ratio=ratio(best.compile_s, tc.compile_s) if tc else None))
    return out


def ratios(rows: list[Row]) -> list[str]:
    out = []
    for s in summary(rows):
        line = (f"{s['model']} b{s['batch']}: {s['fxc']} {s['fxc_ms']:.3f} ms vs "
                f"{s['peer']} {s['peer_ms']:.3f} ms = {s['speedup']:.2f}x")
        if s["fxc_kernels"] is not None or s["peer_kernels"] is not None:
            line += (f"; kernels {kernels_cell(s['fxc_kernels'], s['fxc_kernels_how']) or '?'} vs "
                     f"{kernels_cell(s['peer_kernels'], s['peer_kernels_how']) or '?'}")
        if s["err_ratio"] is not None:
            line += (f"; rel err {s['fxc_rel_err']:.1e} vs {s['eager_half']} "
                     f"{s['eager_half_rel_err']:.1e} ({s['err_ratio']:.2f}x)")
        if s["compile_ratio"] is not None:
            line += (f"; compile {s['fxc_compile_s']:.1f} s vs {s['tc']} first call "
                     f"{s['tc_compile_s']:.1f} s")
        out.append(line)
    return out


def geomean(xs) -> float | None:
    """Geometric mean of the positive numbers in xs (None where there are none)."""
    import math
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


FUSION = ("fuse_bn", "fuse_conv", "fuse_linear", "fuse_attention", "merge_parallel_linear",
          "recognize_norm_act", "fuse_add_norm")


def ablation_sets(spec: str) -> list[tuple[str, ...]]:
    """'each' -> every pass alone; 'fusion,cast_precision' -> [FUSION, (cast_precision,)]."""
    from .passes import names as pass_names
    if spec == "each":
        return [(p,) for p in pass_names()]
    known = set(pass_names())
    sets = []
    for item in spec.split(","):
        names = tuple(p for part in item.split("+") for p in (FUSION if part == "fusion" else (part,)))
        unknown = [p for p in names if p not in known]
        if unknown:
            from .errors import FxcOptionError
            raise FxcOptionError(f"--ablate {item!r}: no pass named {unknown}; passes: "
                                 f"{sorted(known)} (or 'fusion')")
        sets.append(names)
    return sets


def ablate(name: str, size: str, batch: int, device: torch.device, precision: str,
           iters: int, sets: list[tuple[str, ...]] | None = None) -> list[dict]:
    """Compile again with each set of passes left out (default: each pass alone), all in this
    process: one row a compile, {without, median_ms, rel_err, arena_bytes, nodes} (or {without,
    error}). "(none)" is the full pipeline, "(all)" every pass left out (capture, memory plan
    and runtime only, in the model's own precision since cast_precision is off too): the two
    ends `ablation_shares` measures each set's share of latency, memory and error against."""
    import fxc
    from .models import get
    from .passes import names as pass_names
    model, example = get(name, size=size, batch=batch, seed=0)
    example = tuple(x.to(device) for x in example)
    with torch.no_grad():
        ref = model.to(device)(*example)
    sets_in = timing.rotated_inputs(example)
    every = tuple(pass_names())
    out = []
    for left_out in [(), every] + list(sets if sets is not None else ablation_sets("each")):
        label = "+".join(left_out) or "(none)"
        if left_out == every:
            label = "(all)"
        elif set(FUSION) <= set(left_out):
            label = "+".join(["fusion"] + [p for p in left_out if p not in FUSION])
        try:
            c = fxc.compile(model, example, device=device, precision=precision, backend="torch",
                            disable_passes=left_out)
            t = timing.measure(c, sets_in, device=device, iters=iters)
            _, rel = timing.max_error(c(*example), ref)
            plan = c.memory_plan
            out.append(dict(without=label, median_ms=t.median_ms, rel_err=rel,
                            arena_bytes=getattr(plan, "arena_bytes", None),
                            nodes=c.report_data.records[-1].nodes_after))
            del c
        except Exception as e:
            out.append(dict(without=label, error=f"{type(e).__name__}: {e}"[:200]))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    model.cpu()
    return out


def _delta(row: dict, full: dict, key: str):
    a, b = row.get(key), full.get(key)
    return None if a is None or b is None else a - b


def ablation_shares(rows: list[dict]) -> list[dict]:
    """`ablate`'s rows, each copied with what leaving its set out costs against the full
    pipeline ("(none)"): d_ms, d_arena_bytes, d_rel_err (the row minus "(none)"; positive:
    slower, more arena, larger error without the set), and ms_share / arena_share, the part of
    the whole pipeline's gain that the set accounts for: d / ("(all)" minus "(none)"), where
    "(all)" leaves every pass out. Passes interact (one enables or replaces another), so shares
    need not add up to 1, a set can exceed 1 (without it the graph is worse than with no passes)
    or be negative (the model is faster without it). A share is None where there is no "(all)"
    row (runs recorded before ablate measured one), it failed, or "(all)" equals "(none)" on that
    measure. Rows that failed (an 'error'), and every row when "(none)" failed or is
    missing, come back unchanged."""
    ok = {r["without"]: r for r in rows if not r.get("error")}
    full, every = ok.get("(none)"), ok.get("(all)")
    measures = (("median_ms", "d_ms", "ms_share"), ("arena_bytes", "d_arena_bytes", "arena_share"),
                ("rel_err", "d_rel_err", None))
    gains = {key: _delta(every, full, key) if every is not None and full is not None else None
             for key, _, _ in measures}
    out = []
    for r in rows:
        r = dict(r)
        if full is not None and not r.get("error"):
            for key, d_key, share_key in measures:
                r[d_key] = _delta(r, full, key)
                if share_key:
                    gain = gains[key]
                    r[share_key] = r[d_key] / gain if gain and r[d_key] is not None else None
        out.append(r)
    return out


ABLATION_COLUMNS = ("without", "ms", "d ms", "share of gain", "arena KB", "d arena KB",
                    "arena share", "rel err", "d rel err", "nodes")


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def ablation_cells(row: dict) -> list[str]:
    """One `ablation_shares` row as strings in ABLATION_COLUMNS order; a failed row reads
    'failed' under ms (its error is the row's 'error')."""
    if row.get("error"):
        return [row["without"], "failed"] + [""] * (len(ABLATION_COLUMNS) - 2)
    kb = lambda b: None if b is None else b / 1024  # noqa: E731
    ref = row["without"] == "(none)"  # the reference: its deltas are zero by definition
    return [row["without"], _fmt(row.get("median_ms"), ".3f"),
            "" if ref else _fmt(row.get("d_ms"), "+.3f"),
            "" if ref else _fmt(row.get("ms_share"), ".0%"),
            _fmt(kb(row.get("arena_bytes")), ".1f"),
            "" if ref else _fmt(kb(row.get("d_arena_bytes")), "+.1f"),
            "" if ref else _fmt(row.get("arena_share"), ".0%"),
            _fmt(row.get("rel_err"), ".1e"),
            "" if ref else _fmt(row.get("d_rel_err"), "+.1e"),
            _fmt(row.get("nodes"), "d")]


def ablation_table(rows: list[dict]) -> str:
    """`ablate`'s rows as an aligned text table (shares computed here); failed rows after it."""
    rows = ablation_shares(rows)
    body = [list(ABLATION_COLUMNS)] + [ablation_cells(r) for r in rows if not r.get("error")]
    widths = [max(len(line[i]) for line in body) for i in range(len(ABLATION_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in body]
    lines += [f"{r['without']}: failed: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines)


def run_isolated(name: str, batch: int, args, backends_: list[str]) -> tuple[list[Row], dict]:
    """`fxc bench` for one (model, batch) in a child process; its rows (and ablation), or one
    error row per runner family if the child died (a device-side assert poisons a process)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fxc", "bench", "--model", f"{name}@{batch}",
               "--size", args.size, "--precision", args.precision, "--iters", str(args.iters),
               "--rounds", str(getattr(args, "rounds", 5)),
               "--backends", ",".join(backends_), "--tc-modes", args.tc_modes,
               "--out", tmp, "--tag", "child"]
        cmd += ["--device", args.device] if args.device else []
        cmd += ["--torch-compile"] if args.torch_compile else []
        cmd += ["--ablate", args.ablate] if args.ablate is not None else []
        cmd += [] if getattr(args, "kernels", True) else ["--no-kernels"]
        # torch.compile's first call, cold as a user's first compile: an empty Inductor cache
        # per child (Triton's lives in it). Always: Inductor writes its default directory into
        # os.environ once it has run in this process, so a user's choice cannot be told apart.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor")
        env[JOURNAL_ENV] = os.path.join(tmp, "journal.jsonl")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        path = os.path.join(tmp, "child.json")
        data = json.load(open(path)) if os.path.exists(path) else {"rows": []}
        journal, running = _read_journal(env[JOURNAL_ENV])
    rows = [Row(**r) for r in data["rows"] or journal]
    if proc.returncode != 0:
        tail = _error_line(proc.stderr)
        if running:  # the runner that killed the child gets the error; the rest keep theirs
            rows.append(Row(name, batch, running, error=f"killed the process (exit "
                            f"{proc.returncode}): {tail}"[:300]))
        else:
            done = {r.runner for r in rows}
            rows.append(Row(name, batch, "(child process)", error=f"exit {proc.returncode} "
                            f"after {sorted(done) or 'no runner'}: {tail}"[:300]))
    return rows, data.get("ablation", {})


JOURNAL_ENV = "FXC_BENCH_JOURNAL"


def _journal(event: dict) -> None:
    """Under run_isolated, one JSON line per runner started and per row finished, appended to
    the file the parent named in $FXC_BENCH_JOURNAL: if a runner kills the child (a device-side
    assert poisons the whole process), the rows before it survive and the parent can say which
    runner was running."""
    path = os.environ.get(JOURNAL_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


def _read_journal(path: str) -> tuple[list[dict], str | None]:
    """(finished rows, the runner started last and not finished) from a child's journal."""
    rows, running = [], None
    if os.path.exists(path):
        for line in open(path):
            event = json.loads(line)
            if "started" in event:
                running = event["started"]
            else:
                rows.append(event["row"])
                running = None
    return rows, running


def _error_line(stderr: str) -> str:
    """The line of a child's stderr that names its exception (the last 'XError: ...' line),
    not torch's trailing hint such as 'Compile with TORCH_USE_CUDA_DSA ...'."""
    lines = stderr.strip().splitlines() or ["(no output)"]
    named = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return (named or lines)[-1]


def write_results(rows: list[Row], out_dir: str, tag: str, extra: dict | None = None,
                  plots: bool = True) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{tag}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), "rows": [dataclasses.asdict(r) for r in rows],
                   "summary": summary(rows), **(extra or {})}, f, indent=1)
    if plots:
        plot(rows, os.path.join(out_dir, f"{tag}"))
    return path


def plot(rows: list[Row], prefix: str) -> None:
    """PNG plots: latency per runner, and speed-up over eager FP32, one group a model."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return
    keys = sorted({(r.model, r.batch) for r in rows})
    names = list(dict.fromkeys(r.runner for r in rows))
    for kind in ("latency", "speedup"):
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
        width = 0.8 / max(1, len(names))
        for j, n in enumerate(names):
            vals = []
            for k in keys:
                r = next((r for r in rows if (r.model, r.batch) == k and r.runner == n), None)
                base = next((r for r in rows if (r.model, r.batch) == k
                             and r.runner == "eager_fp32"), None)
                v = r.median_ms if r and r.median_ms else 0.0
                if kind == "speedup":
                    v = base.median_ms / v if v and base and base.median_ms else 0.0
                vals.append(v)
            ax.bar([i + j * width for i in range(len(keys))], vals, width, label=n)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
        ax.set_xticklabels([f"{m}\nb{b}" for m, b in keys], fontsize=8)
        ax.set_ylabel("median ms (log)" if kind == "latency" else "speed-up over eager FP32")
        if kind == "latency":
            ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{kind} — {machine().get('gpu', machine()['cpu'])}")
        fig.tight_layout()
        fig.savefig(f"{prefix}_{kind}.png", dpi=110)
        plt.close(fig)
