"""The torch engine: the final graph as a flat list of steps, run without fx.Interpreter.

Built once: every node gets a slot in one value list; each step holds its resolved callable,
its argument template with the slots to fill, and the slots that die after it (their last
use), as torch.fx's Interpreter computes per call and we compute once.

With `plan_memory` (the default) the intermediates that have a real out= kernel are written
into typed views of one arena per device (passes/memory_plan.py decides where). Before it
commits to the plan the engine probes every planned step on the example inputs (and, for
symbolic shapes, at the low and high ends of the declared ranges too): the out= call must
write in place, in the planned layout, bitwise equal to the functional call,
and every op whose schema promises a fresh tensor must not share its inputs' storage;
steps that fail are demoted (and named in the report) and the plan is redone without them.
On CUDA (`cuda_graphs`) the step list is then captured as one CUDA graph
(runtime/cuda_graph.py), with a logged fallback to the step loop where capture fails; a graph
with symbolic shapes keeps one CUDA graph per shape bucket instead (runtime/buckets.py).

Invariant: `run(inputs)` returns exactly what `gm(*inputs)` returns, bit for bit; returned
tensors are never written by a later call unless the user chose `zero_copy_outputs`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from typing import Any, Callable

import torch
import torch.fx as fx

from fxc import dynamic, ir
from fxc.debug import log
from fxc.errors import FxcRuntimeError
from fxc.dynamic import is_symbolic
from fxc.passes import memory_plan as mp

from . import cuda_graph
from .arena import Arena
from .buckets import BucketedGraphs


@dataclasses.dataclass
class Step:
    fn: Callable
    args: list            # template; positions in `fills` are overwritten with slot values
    kwargs: dict
    fills: list           # (path, slot): path is (i,) for args[i], (i, j) for args[i][j]
    kwfills: list         # (key, slot) for tensor kwargs
    out: int
    frees: tuple[int, ...]
    node: fx.Node
    lists: tuple[int, ...] = ()   # positions of tensor-list args, copied per call before filling
    planned: bool = False         # writes into the arena through an out= kernel
    sized: bool = False           # planned, symbolically sized: its arena views are made per call


class _Slot:
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


class TorchEngine:
    """Runs a GraphModule's ATen graph step by step; one engine per compiled module.

    `options` (CompileOptions) switches planning and CUDA graphs; without options (or without
    example inputs) the engine is the plain step loop."""

    name = "torch"

    def __init__(self, gm: fx.GraphModule, options=None, example_inputs=None):
        self.gm = gm
        self.options = options
        self.device = options.device if options is not None else None
        self.plan: mp.MemoryPlan | None = None
        self.arena: Arena | None = None
        self.cuda_graph: cuda_graph.CudaGraphRunner | None = None
        self.bucketed: BucketedGraphs | None = None  # symbolic shapes on CUDA: a graph a bucket
        self.report_sections: list[tuple[str, list[str]]] = []
        self._sized: _SizedViews | None = None  # symbolically sized planned tensors' views
        self._layouts: dict[int, tuple] = {}  # their layout functions (_layout_at)
        self._build_steps(gm)
        if options is not None and getattr(options, "plan_memory", False):
            self._plan_memory(options, example_inputs)
        if options is not None and self.device is not None and self.device.type == "cuda":
            self._setup_cuda(options, example_inputs)
        # One call at a time where calls share buffers (the arena, a CUDA graph's static
        # inputs and outputs, the host staging buffers): a server's threads then each get
        # their own answer. A plain step loop allocates per call and runs unlocked.
        shared = self.arena is not None or self.device is not None and self.device.type == "cuda"
        self._lock = threading.Lock() if shared else contextlib.nullcontext()

    # -- building ----------------------------------------------------------------------------

    def _build_steps(self, gm: fx.GraphModule) -> None:
        slot: dict[fx.Node, int] = {}
        self.input_slots: list[int] = []
        self.template: list[Any] = []     # initial slot values: constants filled in
        self.steps: list[Step] = []
        for node in gm.graph.nodes:
            if node.op == "output":
                continue
            slot[node] = len(self.template)
            if node.op == "placeholder":
                self.input_slots.append(len(self.template))
                self.template.append(None)
            elif node.op == "get_attr":
                self.template.append(_fetch_attr(gm, node.target))
            elif node.op == "call_function":
                self.template.append(None)
                self.steps.append(_make_step(node, slot))
            else:
                raise FxcRuntimeError(f"the torch engine cannot run {node.op} node {ir.describe(node)}")
        out_node = gm.graph.output_node()
        self.outputs = [_Slot(slot[a]) if isinstance(a, fx.Node) else a for a in out_node.args[0]]
        _assign_frees(gm, self.steps, slot, out_node)

    def _plan_memory(self, options, example_inputs) -> None:
        where = dynamic.input_symbols(self.gm)  # root symbol -> the input axis carrying it
        declared = self.gm.meta.get("dim_ranges", {})
        ranges = {k: declared[k] for k in where if k in declared and declared[k][1] is not None}
        plan_args = dict(strategy=options.planner, zero_copy_outputs=options.zero_copy_outputs,
                         alignment=mp.ALIGNMENT.get(self.device.type) if self.device else None,
                         ranges=ranges)
        # the symbols' values to make first views (and probe) at: the example's, else the lows
        values = (_symbol_values(where, example_inputs) if example_inputs is not None
                  else {k: lo for k, (lo, _) in ranges.items()})
        plan = mp.plan(self.gm, **plan_args)
        arena = Arena(plan)
        calls = self._planned_calls(plan, arena, values)
        demoted: dict[str, str] = {}
        probed: list[str] = []
        if example_inputs is not None:
            ends = _range_ends(values, declared)
            demoted, lies, probed = self._probe(example_inputs, calls, plan, arena, ends)
            for name in lies:  # its out= form cannot be trusted either
                demoted.setdefault(name, "returns an alias of an input (its schema says fresh)")
            if demoted or lies:
                plan = mp.plan(self.gm, exclude=demoted, assume_alias=frozenset(lies), **plan_args)
                del arena, calls  # free the first arena before allocating the second
                arena = Arena(plan)
                calls = self._planned_calls(plan, arena, values)
        plan.verify()  # symbolic sizes: at both ends of every range
        self.plan, self.arena = plan, arena
        sized = {t.node for t in plan.tensors if t.span is not None}
        if sized:
            self._sized = _SizedViews(self, plan, arena, where, sized)
        for step in self.steps:
            call = calls.get(step.node.name)
            if call is not None:
                step.fn, step.planned = call[0], True
                step.sized = step.node.name in sized
                if not step.sized:  # fixed size: its views are made once, here
                    step.kwargs = {**step.kwargs, **call[1]}
        lines = plan.summary()
        if is_symbolic(self.gm):
            lines = ["symbolic shapes: tensors sized by a symbol with a declared maximum are "
                     "planned at it, their arena views made per call; the rest are allocated per "
                     "call (reasons below)"] + lines
        if len(probed) > 1:
            lines.append("out= calls probed at " + "; ".join(probed))
        self.report_sections.append((f"Memory plan ({', '.join(plan.arenas) or 'nothing planned'})",
                                     lines))

    def _planned_calls(self, plan: mp.MemoryPlan, arena: Arena, values: dict[str, int],
                       only: set[str] | None = None) -> dict[str, tuple]:
        """node name -> (out= overload, {out arg name: arena view}) for every planned node (of
        `only`, if given); a symbolically sized one's views at the symbols' `values`."""
        slots = {}
        for t in plan.tensors:
            if only is None or t.node in only:
                slots.setdefault(t.node, {})[t.index] = t
        calls = {}
        for step in self.steps:
            slots_of = slots.get(step.node.name)
            if not slots_of:
                continue
            ov, _ = mp.find_out_variant(step.node.target)
            val = step.node.meta["val"]
            metas = [val] if not isinstance(val, (tuple, list)) else list(val)

            def view(t, m):
                if t.span is None:
                    return arena.view(t, m)
                return arena.view_at(t, *_layout_at(m, values, self._layouts), m.dtype)

            if ov.list_out:  # one list of buffers; the op returns nothing, the step returns them
                views = {ov.out_args[0]: [view(slots_of[i], m) for i, m in enumerate(metas)]}
                calls[step.node.name] = (_ReturnsOut(ov.op, ov.out_args[0]), views)
                continue
            views = {name: view(slots_of[None if len(metas) == 1 else i], metas[i])
                     for i, name in enumerate(ov.out_args)}
            calls[step.node.name] = (ov.op, views)
        return calls

    def _probe(self, example_inputs, calls, plan: mp.MemoryPlan, arena: Arena,
               ends: list[dict[str, int]]) -> tuple[dict[str, str], set[str], list[str]]:
        """Probe the planned out= calls at the example inputs, then at each of `ends` (symbol
        values: a symbolic graph's range ends) on the example resized to them, with the arena
        views of that size. An out= call is trusted only if it behaves at every probed size:
        a kernel may resize its out, or broadcast differently, at size 1 or at the maximum only.
        Returns (node -> why its out= call is refused, at the first size that showed it; nodes
        that alias an input anyway at some size; the sizes probed, for the report)."""
        demoted: dict[str, str] = {}
        lies: set[str] = set()
        self._probe_at(example_inputs, calls, demoted, lies, "")
        probed = ["the example's sizes"]
        for at in ends:
            size = ", ".join(f"{k}={n}" for k, n in sorted(at.items()))
            try:
                self._probe_at(self._inputs_at(example_inputs, at),
                               self._planned_calls(plan, arena, at), demoted, lies, f" (at {size})")
                probed.append(size)
            except Exception as e:  # the graph itself fails there: a call at that size would too
                log.warning("memory plan: out= probe at %s skipped: %s: %s", size, type(e).__name__, e)
                probed.append(f"{size} (stopped: {type(e).__name__})")
        for name, why in demoted.items():
            log.info("memory plan: %%%s not planned: %s", name, why)
        return demoted, lies, probed

    def _probe_at(self, inputs, calls, demoted: dict[str, str], lies: set[str], where: str) -> None:
        """Run the functional steps once on `inputs`; check each planned out= call (`calls`: its
        views at these inputs' sizes) against its functional call on the same arguments, and
        each 'fresh' result against its inputs' storage. Adds to `demoted` (node -> why, tagged
        `where`; a reason already there is kept) and `lies` as it goes, so what a point found
        before a failing step is kept."""
        env = self._fresh_env(inputs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resized out= tensor warns; we refuse it below
            for step in self.steps:
                args, kwargs = _fill(step, env)
                res = step.fn(*args, **kwargs)
                if mp.fresh_by_schema(step.node) and _shares_storage(res, args, kwargs):
                    lies.add(step.node.name)
                if step.node.name in calls and step.node.name not in demoted:
                    why = _check_out_call(step.node, res, calls[step.node.name], args, kwargs)
                    if why:
                        demoted[step.node.name] = why + where
                env[step.out] = res
                for s in step.frees:
                    env[s] = None

    def _inputs_at(self, example_inputs, values: dict[str, int]) -> list:
        """The example inputs at the symbols' `values`: each symbolically sized input cut or
        grown to its shape there (_resized), so it holds only values the example holds (token
        ids stay valid indices, masks stay masks); other inputs as given."""
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        out = []
        for node, x in zip(placeholders, example_inputs):
            meta = node.meta.get("val")
            if isinstance(x, torch.Tensor) and isinstance(meta, torch.Tensor) and any(
                    isinstance(n, torch.SymInt) for n in meta.shape):
                x = _resized(x, _layout_at(meta, values, self._layouts)[0])
            out.append(x)
        return out

    def _setup_cuda(self, options, example_inputs) -> None:
        runner, status = None, "off (cuda_graphs=False)"
        if getattr(options, "cuda_graphs", False) and is_symbolic(self.gm):
            capture = lambda xs: cuda_graph.try_capture(  # noqa: E731
                self, xs, zero_copy_outputs=options.zero_copy_outputs, symbolic=True)
            self.bucketed = BucketedGraphs(self, capture, options.shape_buckets,
                                           options.max_cuda_graphs)
            status = self.bucketed.status()
        elif getattr(options, "cuda_graphs", False):
            if example_inputs is None:
                status = "off (no example inputs to capture with)"
            else:
                runner, status = cuda_graph.try_capture(self, example_inputs,
                                                        zero_copy_outputs=options.zero_copy_outputs)
        self.cuda_graph = runner
        self.stager = cuda_graph.HostStager(self.device)
        self.report_sections.append(("CUDA graph", [status]))

    # -- running -----------------------------------------------------------------------------

    def run(self, inputs: list[torch.Tensor]) -> list:
        with self._lock:
            if self.cuda_graph is not None:
                return self.cuda_graph.run(inputs)
            if self.device is not None and self.device.type == "cuda":
                inputs = [self.stager.to_device(i, x) for i, x in enumerate(inputs)]
                if self.bucketed is not None:
                    return self.bucketed.run(inputs)
            return self.run_steps(inputs)

    def _fresh_env(self, inputs) -> list:
        env = list(self.template)
        for s, x in zip(self.input_slots, inputs):
            env[s] = x
        return env

    def run_steps(self, inputs: list[torch.Tensor], timer=None) -> list:
        """The step loop (also what a CUDA graph captures). `timer`, if given, has
        before(k)/after(k) called around step k (runtime/profile.py)."""
        env = self._fresh_env(inputs)
        step = None
        sized = self._sized.views(inputs) if self._sized is not None else None
        try:
            for k, step in enumerate(self.steps):
                args, kwargs = _fill(step, env)
                if step.sized:
                    kwargs = {**kwargs, **sized[step.node.name]}
                if timer is not None:
                    timer.before(k)
                env[step.out] = step.fn(*args, **kwargs)
                if timer is not None:
                    timer.after(k)
                for s in step.frees:
                    env[s] = None
        except Exception as e:
            raise _step_error(step, e) from e
        return [env[o.i] if isinstance(o, _Slot) else o for o in self.outputs]

    def output_sources(self) -> list[tuple[str, Any]]:
        """For each output: ('input', i), ('constant', value) or ('computed', None)."""
        where = {s: i for i, s in enumerate(self.input_slots)}
        out = []
        for o in self.outputs:
            if not isinstance(o, _Slot):
                out.append(("constant", o))
            elif o.i in where:
                out.append(("input", where[o.i]))
            elif self.template[o.i] is not None:
                out.append(("constant", self.template[o.i]))
            else:
                out.append(("computed", None))
        return out


class _SizedViews:
    """The arena views of symbolically sized planned tensors, per tuple of symbol values: made
    on a call's first use of those sizes (shapes and strides from the graph's own expressions,
    compiled to Python once), then kept, a bounded number of size tuples at a time."""

    LIMIT = 256  # a server sees a few hundred sizes at most; past that the oldest are dropped

    def __init__(self, engine: "TorchEngine", plan: mp.MemoryPlan, arena: Arena,
                 where: dict[str, tuple[int, int, int, int]], nodes: set[str]):
        self.engine, self.plan, self.arena, self.nodes = engine, plan, arena, nodes
        self.symbols = sorted(where)
        self.where = [where[k] for k in self.symbols]
        self.cache: dict[tuple, dict[str, dict]] = {}

    def views(self, inputs) -> dict[str, dict]:
        key = tuple((inputs[i].shape[axis] - b) // a for i, axis, a, b in self.where)
        found = self.cache.get(key)
        if found is None:
            values = dict(zip(self.symbols, key))
            calls = self.engine._planned_calls(self.plan, self.arena, values, only=self.nodes)
            found = {name: views for name, (_, views) in calls.items()}
            if len(self.cache) >= self.LIMIT:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = found
        return found


def _symbol_values(where: dict[str, tuple[int, int, int, int]], inputs) -> dict[str, int]:
    return {k: (inputs[i].shape[axis] - b) // a for k, (i, axis, a, b) in where.items()}


def _range_ends(example: dict[str, int], declared: dict) -> list[dict[str, int]]:
    """The symbol values to probe besides the example's: every symbol at its declared low, then
    every one at its declared high (a symbol without a declared bound keeps the example's value
    there), as MemoryPlan.verify checks; a point equal to the example's or to the one before
    is left out. Two points, not every corner: the probe runs the whole graph per point."""
    def end(k, v, i):
        bound = declared.get(k, (None, None))[i]
        return v if bound is None else bound
    low = {k: end(k, v, 0) for k, v in example.items()}
    high = {k: end(k, v, 1) for k, v in example.items()}
    return [p for p in (low, high) if p != example and not (p is high and p == low)]


def _resized(x: torch.Tensor, shape) -> torch.Tensor:
    """`x` cut or grown to `shape`, axis by axis: a shorter axis keeps its first slices, a longer
    one repeats its last slice (zeros if it had none), so every value is one `x` holds. Dense,
    with x's order of strides (channels-last stays channels-last): laid out as a caller's would be."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))  # outermost axis first
    for d, n in enumerate(shape):
        have = x.shape[d]
        if n < have:
            x = x.narrow(d, 0, n)
        elif n > have:
            grow = (*x.shape[:d], n - have, *x.shape[d + 1:])
            extra = x.narrow(d, have - 1, 1).expand(grow) if have else x.new_zeros(grow)
            x = torch.cat([x, extra], d)
    out = torch.empty_permuted(x.shape, order, dtype=x.dtype, device=x.device)
    return out.copy_(x)


def _layout_at(meta: torch.Tensor, values: dict[str, int], cache: dict) -> tuple[tuple, tuple, int]:
    """(shape, stride, storage offset) of a symbolically sized meta at the symbols' values;
    `cache`: id(meta) -> (meta, symbol names, the compiled function), one per engine."""
    hit = cache.get(id(meta))
    if hit is None or hit[0] is not meta:
        import sympy
        e = lambda x: x.node.expr if isinstance(x, torch.SymInt) else sympy.Integer(int(x))  # noqa: E731
        exprs = [e(x) for x in (*meta.shape, *meta.stride(), meta.storage_offset())]
        names = sorted({str(s) for x in exprs for s in x.free_symbols})
        hit = cache[id(meta)] = (meta, names, dynamic.int_function(exprs, names))
    _, names, fn = hit
    ints = fn(*(values[n] for n in names))
    rank = meta.dim()
    return tuple(ints[:rank]), tuple(ints[rank:2 * rank]), ints[-1]


def _fill(step: Step, env: list) -> tuple[list, dict]:
    args = step.args
    if step.fills:
        args = list(args)
        for i in step.lists:
            args[i] = list(args[i])
        for path, s in step.fills:
            if len(path) == 1:
                args[path[0]] = env[s]
            else:
                args[path[0]][path[1]] = env[s]
    kwargs = step.kwargs
    if step.kwfills:
        kwargs = dict(kwargs)
        for key, s in step.kwfills:
            kwargs[key] = env[s]
    return args, kwargs


def _step_error(step: Step | None, e: Exception) -> FxcRuntimeError:
    node = step.node if step is not None else None
    where = f" at {ir.source_line(node)}" if node is not None and ir.source_line(node) else ""
    return FxcRuntimeError(f"step {ir.describe(node) if node else '?'} failed{where}: "
                           f"{type(e).__name__}: {e}")


# -- probe checks --------------------------------------------------------------------------------

def _check_out_call(node: fx.Node, res, call, args, kwargs) -> str | None:
    """Why the planned out= call of `node` cannot replace its functional call, or None."""
    op, views = call
    try:
        got = op(*args, **kwargs, **views)
    except Exception as e:  # an out= overload that refuses these arguments
        return f"out= call fails ({type(e).__name__})"
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    want = list(res) if isinstance(res, (tuple, list)) else [res]
    flat = [v for x in views.values() for v in (x if isinstance(x, list) else [x])]
    for g, w, v in zip(got, want, flat):
        if g.data_ptr() != v.data_ptr() or g.shape != v.shape or g.stride() != v.stride():
            return "out= kernel resized or moved its output"
        if not _same_layout(w, v):
            return f"functional layout {tuple(w.stride())} differs from meta {tuple(v.stride())}"
        if not bitwise_equal(g, w):
            return "out= kernel rounds differently from the functional op"
    return None


class _ReturnsOut:
    """An out= overload that returns nothing (`Tensor(a!)[] out -> ()`), called as a step:
    returns the buffers it wrote, as the functional op returned its results."""

    def __init__(self, op, name: str):
        self.op, self.name = op, name

    def __call__(self, *args, **kwargs):
        self.op(*args, **kwargs)
        return kwargs[self.name]


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return all(x == y for s, x, y in zip(a.shape, a.stride(), b.stride()) if s > 1)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bytes (NaN payloads included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    raw = lambda t: t.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return torch.equal(raw(a), raw(b))


def _storages(x) -> set[int]:
    if isinstance(x, torch.Tensor):
        return {x.untyped_storage().data_ptr()} if x.numel() and x.layout == torch.strided else set()
    if isinstance(x, (tuple, list)):
        return set().union(*(_storages(y) for y in x)) if x else set()
    if isinstance(x, dict):
        return _storages(list(x.values()))
    return set()


def _shares_storage(res, args, kwargs) -> bool:
    return bool(_storages(res) & _storages((args, kwargs)))


# -- step construction ---------------------------------------------------------------------------

def _fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _make_step(node: fx.Node, slot: dict[fx.Node, int]) -> Step:
    args, fills = [], []
    for i, a in enumerate(node.args):
        if isinstance(a, fx.Node):
            args.append(None)
            fills.append(((i,), slot[a]))
        elif isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a):
            # A tensor list (cat, stack, index): filled in place, so rebuild a fresh list per call.
            args.append(list(a))
            for j, x in enumerate(a):
                if isinstance(x, fx.Node):
                    fills.append(((i, j), slot[x]))
        else:
            args.append(a)
    kwargs, kwfills = {}, []
    for k, v in node.kwargs.items():
        if isinstance(v, fx.Node):
            kwfills.append((k, slot[v]))
        elif isinstance(v, (list, tuple)) and any(isinstance(x, fx.Node) for x in v):
            raise FxcRuntimeError(f"tensor-list keyword argument {k!r} in {ir.describe(node)}")
        else:
            kwargs[k] = v
    lists = tuple(sorted({path[0] for path, _ in fills if len(path) == 2}))
    return Step(node.target, args, kwargs, fills, kwfills, slot[node], (), node, lists)


def _assign_frees(gm: fx.GraphModule, steps: list[Step], slot: dict, out_node: fx.Node) -> None:
    """Free each value after its last use, unless it is a graph output or a constant."""
    keep = {a for a in out_node.args[0] if isinstance(a, fx.Node)}
    last_use: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        for inp in node.all_input_nodes:
            last_use[inp] = node
    dies_at: dict[fx.Node, list[int]] = {}
    for value, user in last_use.items():
        if value in keep or value.op == "get_attr":
            continue
        dies_at.setdefault(user, []).append(slot[value])
    for step in steps:
        step.frees = tuple(dies_at.get(step.node, ()))

