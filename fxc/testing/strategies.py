"""Hypothesis strategies that generate random well-formed PyTorch graphs for fxc's tests.

`graphs()` draws a `GeneratedGraph`: an eval-mode `torch.fx.GraphModule` of plain torch
calls, its inputs, and the `Program` it was built from. What every drawn graph guarantees:

- well-formed: it runs in eager PyTorch on its inputs; `graph.lint()` passes;
- finite: every value (intermediates included) is finite in its own dtype, FP16 values stay
  below 8192, integers never wrap; FP32 values may pass 65504 (FP16 overflow bait);
- stable: no result hinges on a rounding error (comparisons of near-equal floats, casts
  next to an integer, catastrophic cancellation are refused), so backends can be compared
  under `tolerances()`;
- no mutation of inputs or parameters (in-place ops touch intermediates only);
- deterministic given the draw: the same hypothesis choices give the same code and the
  same tensors (data comes from drawn seeds, never from the global RNG), and shrinking
  gives small graphs with small, size-1 shapes.

It aims at the bug classes of /work/shared/TESTING.md: dtype mixes and cast chains, 0-d
tensors and Python scalars, size-1 broadcasting, rank-1 matmul, empty dims, intermediates
with several users, parameters and inputs returned as outputs, in-place ops on views,
values past FP16's range. The op table is `fxc.testing.ops.OPS`.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.fx as fx
from hypothesis import reject
from hypothesis import strategies as st

from . import shape as S
from .ops import ALL, FLOATS, INTS, OPS, OpRejected
from .program import Builder, Program, _fmt, flatten
from .settings import tolerances

Planter = Callable[[Builder, Callable], "int | Sequence[int]"]


@dataclass(repr=False, eq=False)
class GeneratedGraph:
    module: fx.GraphModule
    inputs: tuple[torch.Tensor, ...]
    program: Program
    rejected: Counter = field(default_factory=Counter)  # ops refused while building, by name

    @property
    def code(self) -> str:
        return self.module.code

    @property
    def dtypes(self) -> set[torch.dtype]:
        """Every dtype a value of the graph has (inputs, parameters, intermediates)."""
        return {v.dtype for v in self.program.values}

    @property
    def lowest_float(self) -> torch.dtype | None:
        """The least precise float dtype in the graph: its error reaches every output."""
        fl = [d for d in self.dtypes if d.is_floating_point]
        return max(fl, key=lambda d: torch.finfo(d).eps) if fl else None

    @property
    def tolerances(self) -> dict:
        """assert_close tolerances for this graph's outputs (see `tolerances(dtype)`)."""
        return tolerances(self.lowest_float or torch.int64)

    def __call__(self):
        return self.module(*self.inputs)

    def _repr_pretty_(self, printer, cycle):  # hypothesis prints falsifying examples this way
        printer.text(repr(self))

    def __repr__(self):
        p = self.program
        lines = [f"# {v.name}: {_fmt(v)}  ({v.kind})" for v in p.values if v.kind != "op"]
        lines += [f"# {name}: {m}" for name, m in p.modules.items()]
        return "GeneratedGraph(\n" + "\n".join(lines) + "\n" + self.module.code.strip() + "\n)"


def _select(ops):
    if ops is None:
        return list(OPS.values())
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ValueError(f"unknown ops {unknown}; the table has {sorted(OPS)}")
    return [OPS[o] for o in ops]


def _feasible(b: Builder, specs) -> list:
    """The ops that have an operand dtype at hand (in a chain: the last value's dtype)."""
    if b.chain and b.last is not None:
        have = {b.value(b.last).dtype}
    else:
        have = {v.dtype for v in b.values} | set(b.dtypes)
    return [s for s in specs if any(d in have for d in s.dtypes) for _ in range(s.weight)]


def _plant(b: Builder, draw, planter) -> list[int]:
    for _ in range(3):
        try:
            with b.transaction():
                out = planter(b, draw)
                return [out] if isinstance(out, int) else list(out)
        except OpRejected:
            continue
    reject()  # a planter that cannot place its pattern three times: drop this example


def _outputs(draw, b: Builder, planted, form, chain):
    last = b.last
    if chain:
        outs = [last]
    else:
        users = b.p.users()
        outs = [last] + [p for p in planted if p != last and not users[p]]
        # most other unused results are outputs too; the rest is dead code (for DCE)
        outs += [v.id for v in b.values if v.kind == "op" and v.id not in outs
                 and not users[v.id] and draw(st.integers(0, 3)) != 3]
        ids = [v.id for v in reversed(b.values)]
        outs += [ids[draw(st.integers(0, len(ids) - 1))] for _ in range(draw(st.integers(0, 2)))]
        if draw(st.integers(0, 3)) == 0:  # an input or parameter returned as it is
            leaves = [v.id for v in b.values if v.kind != "op"]
            outs.append(leaves[draw(st.integers(0, len(leaves) - 1))])
        if draw(st.integers(0, 7)):  # now and then the same value returned twice
            outs = list(dict.fromkeys(outs))
    if form == "tuple":
        return tuple(outs)
    kind = draw(st.sampled_from(["tuple", "single", "list", "dict"]))
    if kind == "single" and len(outs) == 1:
        return outs[0]
    if kind == "list":
        return list(outs)
    if kind == "dict":
        return {f"out{i}": v for i, v in enumerate(outs)}
    return tuple(outs)


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread: on tiny tensors, waking a second thread costs more (up to
    tens of ms on a loaded machine) than the op itself."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class GraphConfig:
    """What graphs() / chains() were asked for; build_graph(draw, config) does the work.
    (A plain class: hypothesis prints its repr, one line, with every failure.)"""

    def __init__(self, specs, max_ops=8, min_ops=1, dtypes=(torch.float32,), allow_params=True,
                 outputs="tuple", plant=(), chain=False, allow_empty=True, max_leaves=6):
        self.specs, self.dtypes, self.plant = tuple(specs), tuple(dtypes), tuple(plant)
        self.max_ops, self.min_ops, self.allow_params = max_ops, min_ops, allow_params
        self.outputs, self.chain = outputs, chain
        self.allow_empty, self.max_leaves = allow_empty, max_leaves

    def __repr__(self):
        ops = "all" if len(self.specs) == len(OPS) else [s.name for s in self.specs]
        plant = [getattr(p, "__name__", repr(p)) for p in self.plant]
        dtypes = [str(d).removeprefix("torch.") for d in self.dtypes]
        return (f"GraphConfig(ops={ops}, max_ops={self.max_ops}, dtypes={dtypes}, "
                f"outputs={self.outputs!r}, plant={plant}, chain={self.chain})")


@st.composite
def _graphs(draw, cfg: GraphConfig):
    with single_thread():
        return build_graph(draw, cfg)


def build_graph(draw, cfg: GraphConfig) -> GeneratedGraph:
    """The graph a sequence of draws describes: `draw(strategy)` is hypothesis' draw, or any
    function returning values of those strategies (a replay of recorded draws, say)."""
    b = Builder(draw, dtypes=cfg.dtypes, allow_params=cfg.allow_params, chain=cfg.chain,
                max_leaves=cfg.max_leaves, allow_empty=cfg.allow_empty)
    b.new_leaf(draw(S.shapes(allow_empty=cfg.allow_empty)), draw(st.sampled_from(cfg.dtypes)),
               kind="input")
    n = draw(st.integers(min(cfg.min_ops, cfg.max_ops), cfg.max_ops))
    slots = [draw(st.integers(0, n)) for _ in cfg.plant]
    planted = []
    for step in range(n + 1):
        for planter, at in zip(cfg.plant, slots):
            if at == step:
                planted += _plant(b, draw, planter)
        if step == n:
            break
        feasible = _feasible(b, cfg.specs)
        if not feasible:
            break
        spec = draw(st.sampled_from(feasible))
        try:
            with b.transaction():
                ins, static = spec.rule(b, spec)
                b.add(spec.name, *ins, **static)
        except OpRejected:
            pass
    if b.last is None:  # every drawn op was refused: keep the graph non-trivial
        if b.try_add("add_scalar", b.values[-1].id, c=1) is None:
            reject()
    p = b.p
    p.outputs = _outputs(draw, b, planted, cfg.outputs, cfg.chain)
    gm = p.to_graph_module()
    inputs = tuple(p.leaves[i].clone() for i in p.inputs)
    try:
        out = gm(*inputs)
    except RuntimeError:  # eager with autograd on refuses an in-place op that no_grad allowed
        reject()
    _check_run(p, b.env, out, inputs)
    return GeneratedGraph(gm, inputs, p, b.rejected)


def _check_run(p: Program, env, out, inputs):
    """The module computes exactly what the builder computed, and leaves its inputs alone."""
    for vid, t in zip(p.output_ids(), flatten(out)):
        assert torch.equal(t.detach(), env[vid]), f"generator bug: v{vid} differs from its build\n{p}"
    for vid, t in zip(p.inputs, inputs):
        assert torch.equal(t, p.leaves[vid]), f"generator bug: input {vid} was mutated\n{p}"


def graph_config(*, max_ops: int = 8, dtypes=(torch.float32,), ops: Sequence[str] | None = None,
                 allow_params: bool = True, outputs: str = "tuple", plant: Sequence[Planter] = (),
                 min_ops: int = 1, allow_empty: bool = True, max_leaves: int = 6,
                 chain: bool = False) -> GraphConfig:
    if outputs not in ("tuple", "any"):
        raise ValueError('outputs is "tuple" or "any"')
    if not dtypes:
        raise ValueError("dtypes is empty")
    return GraphConfig(tuple(_select(ops)), max_ops, min_ops, tuple(dtypes), allow_params,
                       outputs, tuple(plant), chain, allow_empty, max_leaves)


def graphs(*, max_ops: int = 8, dtypes=(torch.float32,), ops: Sequence[str] | None = None,
           allow_params: bool = True, outputs: str = "tuple", plant: Sequence[Planter] = (),
           min_ops: int = 1, allow_empty: bool = True, max_leaves: int = 6):
    """Random DAGs of min_ops..max_ops drawn ops (plus their guards) as GeneratedGraph.

    dtypes: the dtypes of inputs, parameters and cast targets; ops derive others by
      PyTorch's rules (comparisons give bool, sum of int32 gives int64, int / int float32).
    ops: names from the op table (default: all). outputs: "tuple" always returns a tuple;
      "any" also a bare tensor, a list or a dict. plant: planters, each called once at a
      drawn step as `planter(builder, draw)` to place a target pattern (see planters.py).
    allow_empty: size-0 dims now and then; max_leaves: fresh inputs/parameters at most.
    """
    return _graphs(graph_config(max_ops=max_ops, dtypes=dtypes, ops=ops, allow_params=allow_params,
                                outputs=outputs, plant=plant, min_ops=min_ops,
                                allow_empty=allow_empty, max_leaves=max_leaves))


def chains(*, max_ops: int = 8, dtypes=(torch.float32,), ops: Sequence[str] | None = None,
           allow_params: bool = True, plant: Sequence[Planter] = (), min_ops: int = 1,
           allow_empty: bool = True, max_leaves: int = 6):
    """Like graphs(), but each op consumes the previous result (its other operands are
    inputs or parameters); returns a 1-tuple of the last value."""
    return _graphs(graph_config(max_ops=max_ops, dtypes=dtypes, ops=ops, allow_params=allow_params,
                                plant=plant, min_ops=min_ops, allow_empty=allow_empty,
                                max_leaves=max_leaves, chain=True))


ALL_DTYPES = ALL
FLOAT_DTYPES = FLOATS
INT_DTYPES = INTS
shapes = S.shapes
shapes_broadcastable_to = S.shapes_broadcastable_to
shapes_broadcast_compatible = S.shapes_broadcast_compatible
