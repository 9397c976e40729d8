"""The torch engine: the final graph as a flat list of steps, run without fx.Interpreter.

Built once: every node gets a slot in one value list; each step holds its resolved callable,
its argument template with the slots to fill, and the slots that die after it (their last
use), as torch.fx's Interpreter computes per call and we compute once.

With `plan_memory` (the default) the intermediates that have a real out= kernel are written
into typed views of one arena per device (passes/memory_plan.py decides where). Before it
commits to the plan the engine probes every planned step once on the example inputs: the
out= call must write in place, in the planned layout, bitwise equal to the functional call,
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

from fxc import ir
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
        plan_args = dict(strategy=options.planner, zero_copy_outputs=options.zero_copy_outputs,
                         alignment=mp.ALIGNMENT.get(self.device.type) if self.device else None)
        plan = mp.plan(self.gm, **plan_args)
        arena = Arena(plan)
        calls = self._planned_calls(plan, arena)
        demoted: dict[str, str] = {}
        if example_inputs is not None:
            demoted, lies = self._probe(example_inputs, calls)
            for name in lies:  # its out= form cannot be trusted either
                demoted.setdefault(name, "returns an alias of an input (its schema says fresh)")
            if demoted or lies:
                plan = mp.plan(self.gm, exclude=demoted, assume_alias=frozenset(lies), **plan_args)
                del arena, calls  # free the first arena before allocating the second
                arena = Arena(plan)
                calls = self._planned_calls(plan, arena)
        plan.verify()
        self.plan, self.arena = plan, arena
        for step in self.steps:
            call = calls.get(step.node.name)
            if call is not None:
                step.fn, step.kwargs, step.planned = call[0], {**step.kwargs, **call[1]}, True
        lines = plan.summary()
        if is_symbolic(self.gm):  # why most tensors stay with the allocator
            lines = ["symbolic shapes: tensors whose size depends on a symbol are allocated per "
                     "call ('dynamic shape' below); only fixed-size ones are planned"] + lines
        self.report_sections.append((f"Memory plan ({', '.join(plan.arenas) or 'nothing planned'})",
                                     lines))

    def _planned_calls(self, plan: mp.MemoryPlan, arena: Arena) -> dict[str, tuple]:
        """node name -> (out= overload, {out arg name: arena view}) for every planned node."""
        slots = {}
        for t in plan.tensors:
            slots.setdefault(t.node, {})[t.index] = t
        calls = {}
        for step in self.steps:
            slots_of = slots.get(step.node.name)
            if not slots_of:
                continue
            ov, _ = mp.find_out_variant(step.node.target)
            val = step.node.meta["val"]
            metas = [val] if not isinstance(val, (tuple, list)) else list(val)
            if ov.list_out:  # one list of buffers; the op returns nothing, the step returns them
                views = {ov.out_args[0]: [arena.view(slots_of[i], m) for i, m in enumerate(metas)]}
                calls[step.node.name] = (_ReturnsOut(ov.op, ov.out_args[0]), views)
                continue
            views = {name: arena.view(slots_of[None if len(metas) == 1 else i], metas[i])
                     for i, name in enumerate(ov.out_args)}
            calls[step.node.name] = (ov.op, views)
        return calls

    def _probe(self, example_inputs, calls) -> tuple[dict[str, str], set[str]]:
        """Run the functional steps once; check each planned out= call against its functional
        call on the same arguments, and each 'fresh' result against its inputs' storage.
        Returns (node -> why its out= call is refused, nodes that alias an input anyway)."""
        demoted, lies = {}, set()
        env = self._fresh_env(example_inputs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resized out= tensor warns; we refuse it below
            for step in self.steps:
                args, kwargs = _fill(step, env)
                res = step.fn(*args, **kwargs)
                if mp.fresh_by_schema(step.node) and _shares_storage(res, args, kwargs):
                    lies.add(step.node.name)
                if step.node.name in calls:
                    why = _check_out_call(step.node, res, calls[step.node.name], args, kwargs)
                    if why:
                        demoted[step.node.name] = why
                env[step.out] = res
                for s in step.frees:
                    env[s] = None
        for name, why in demoted.items():
            log.info("memory plan: %%%s not planned: %s", name, why)
        return demoted, lies

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
        try:
            for k, step in enumerate(self.steps):
                args, kwargs = _fill(step, env)
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

