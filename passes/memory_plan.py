"""Memory planning: one arena per device, an offset for every planned intermediate tensor.

Analysis only: the graph is not rewritten. The torch backend calls `plan(gm, ...)` when it
builds its engine; it is not a pipeline Pass because (1) only the torch engine executes into
an arena (ONNX Runtime and TensorRT plan their own memory), (2) what can be planned depends on
runtime facts the engine checks on the example inputs (an out= kernel that resizes its output
or rounds differently is demoted: `exclude`), and (3) offsets are only valid for the final
schedule, so nothing may run after it.

Invariant of a plan (checked by `MemoryPlan.verify`): two planned tensors whose live ranges
[first, last] (step indices, inclusive) intersect never share a byte of the arena; no planned
tensor is a graph input or constant, or aliased by a returned output (unless the user asked
for `zero_copy_outputs`).

Symbolic shapes (a graph compiled for ranges, fxc/dynamic.py): a tensor whose size depends on
symbols is planned at the most bytes it can span over the declared ranges (`ranges`: root
symbol -> (low, high)), an upper bound from interval arithmetic over its size expression
(torch's bound_sympy), so its slot holds it at every size in range; `verify()` checks that at
both ends. One whose symbols have no declared maximum (or that no input carries) stays with
the allocator, the reason in `unplanned`. The engine makes its arena view per call, at the
call's sizes (runtime/torch_engine.py).

Live ranges are alias-aware: a view (any return whose schema carries alias info: view,
permute, expand, slice, split outputs, in-place results, ...) keeps its base alive as long as
the view lives, so a tensor's range ends at the last use of any of its aliases.
Assignment is greedy by size for offset calculation (Pisarchyk and Lee 2020, "Efficient
Memory Management for Deep Neural Net Inference", best-fit gap), run over several orders of
the tensors; 'best' keeps the order that gives the smallest arena.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx

from fxc import ir
from fxc.errors import FxcOptionError, FxcPassError

ALIGNMENT = {"cuda": 256, "cpu": 64}

# Ops whose schema says "fresh tensor" but which return an alias of an input in eager mode.
_SCHEMA_LIES = {"aten::_unsafe_view", "aten::type_as"}


class FxcMemoryPlanError(FxcPassError):
    """A memory plan breaks its invariant; names the two nodes involved."""

    def __init__(self, message: str, first: str, second: str | None = None):
        self.first, self.second = first, second
        both = f"%{first}" + (f" and %{second}" if second else "")
        super().__init__("memory_plan", f"{message} ({both})")


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    """One arena slot: bytes [offset, offset + size) hold `node`'s output `index` during
    steps first..last. `nbytes` is what the tensor spans; `size` is that, aligned."""

    node: str
    index: int | None
    offset: int
    size: int
    nbytes: int
    first: int
    last: int
    device: str = "cpu"
    # Symbolically sized: the bytes it spans as a sympy expression of the root symbols (`nbytes`
    # is its maximum over the plan's ranges); None for a fixed size.
    span: Any = None

    @property
    def name(self) -> str:
        return self.node if self.index is None else f"{self.node}#{self.index}"

    def overlaps(self, other: "PlannedTensor") -> bool:
        in_time = self.first <= other.last and other.first <= self.last
        in_space = self.offset < other.offset + other.size and other.offset < self.offset + self.size
        return in_time and in_space and self.size > 0 and other.size > 0


@dataclasses.dataclass
class MemoryPlan:
    """The plan as data. `arenas` maps a device to its arena's bytes."""

    tensors: list[PlannedTensor]
    arenas: dict[str, int]
    lower_bounds: dict[str, int]
    alignment: int
    strategy: str
    strategy_bytes: dict[str, int]                 # every order tried -> total arena bytes
    unplanned: list[tuple[str, str, str]]          # (node, op, reason)
    inputs: frozenset[str] = frozenset()           # placeholders and constants
    output_roots: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    zero_copy_outputs: bool = False
    ranges: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # symbol -> low, high

    @property
    def arena_bytes(self) -> int:
        return sum(self.arenas.values())

    @property
    def lower_bound_bytes(self) -> int:
        return sum(self.lower_bounds.values())

    @property
    def no_reuse_bytes(self) -> int:
        return sum(t.size for t in self.tensors)

    def by_name(self) -> dict[str, PlannedTensor]:
        return {t.name: t for t in self.tensors}

    def verify(self, at: dict[str, int] | None = None) -> None:
        """Raise FxcMemoryPlanError naming both nodes if the invariant does not hold. Symbolically
        sized tensors must also fit their slots at `at` (symbol -> size) or, by default, at both
        ends of the ranges (every symbol at its low, then at its high)."""
        for t in self.tensors:
            if t.node in self.inputs:
                raise FxcMemoryPlanError("a graph input or constant is planned", t.node)
            if t.first > t.last or t.size < t.nbytes or t.offset % self.alignment:
                raise FxcMemoryPlanError(f"malformed slot {t}", t.node)
            if t.offset + t.size > self.arenas.get(t.device, 0):
                raise FxcMemoryPlanError("slot outside its arena", t.node)
        planned = self.by_name()
        if not self.zero_copy_outputs:
            for out, roots in self.output_roots.items():
                for r in sorted(roots & planned.keys()):
                    raise FxcMemoryPlanError("a returned output aliases a planned tensor", out, r)
        for a, b in _overlapping_pairs(self.tensors):
            raise FxcMemoryPlanError(f"live at once (steps {a.first}-{a.last} and {b.first}-"
                                     f"{b.last}) and overlapping in the arena", a.name, b.name)
        sized = [t for t in self.tensors if t.span is not None]
        if not sized:
            return
        points = [at] if at is not None else [{k: lo for k, (lo, _) in self.ranges.items()},
                                              {k: hi for k, (_, hi) in self.ranges.items()}]
        for point in points:
            outside = [k for k, n in point.items() if k in self.ranges and
                       not self.ranges[k][0] <= n <= self.ranges[k][1]]
            if outside:
                raise FxcMemoryPlanError(f"{outside[0]}={point[outside[0]]} is outside the planned "
                                         f"range {self.ranges[outside[0]]}", sized[0].node)
            for t in sized:
                need = span_at(t.span, point)
                if need > t.nbytes:
                    raise FxcMemoryPlanError(f"spans {need} B at {point}, more than its slot's "
                                             f"{t.nbytes} B", t.node)

    def summary(self) -> list[str]:
        """Report lines: arena, lower bound, no-reuse total, the order that won, what was not
        planned and why."""
        gap = (self.arena_bytes / self.lower_bound_bytes - 1) * 100 if self.lower_bound_bytes else 0.0
        tried = ", ".join(f"{k} {_mib(v)}" for k, v in self.strategy_bytes.items())
        lines = [f"arena {_mib(self.arena_bytes)}  lower bound {_mib(self.lower_bound_bytes)} "
                 f"(+{gap:.1f}%)  no reuse {_mib(self.no_reuse_bytes)}  "
                 f"({len(self.tensors)} tensors, align {self.alignment} B)",
                 f"order '{self.strategy}' won; tried: {tried}"]
        sized = sum(1 for t in self.tensors if t.span is not None)
        if sized:
            at = ", ".join(f"{k} <= {hi}" for k, (_, hi) in sorted(self.ranges.items()))
            lines.append(f"{sized} symbolically sized tensors planned at the declared maximum "
                         f"({at}); verified at both ends of the ranges")
        if self.zero_copy_outputs:
            lines.append("zero_copy_outputs: returned outputs are arena views, overwritten by "
                         "the next call")
        by_reason: dict[str, list[str]] = {}
        for node, op, reason in self.unplanned:
            by_reason.setdefault(reason, []).append(f"%{node} ({op})")
        if by_reason:
            lines.append(f"not planned ({len(self.unplanned)} steps, allocated as usual):")
        for reason, nodes in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {reason}: {', '.join(nodes)}")
        return lines


def _mib(n: int) -> str:
    return f"{n / 2**20:.3f} MiB"


def _overlapping_pairs(tensors: list[PlannedTensor]) -> Iterable[tuple[PlannedTensor, PlannedTensor]]:
    """Pairs live at once that share bytes (sweep over first; fine for thousands of tensors)."""
    by_dev: dict[str, list[PlannedTensor]] = {}
    for t in tensors:
        by_dev.setdefault(t.device, []).append(t)
    for group in by_dev.values():
        group = sorted(group, key=lambda t: t.first)
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if b.first > a.last:
                    break
                if a.overlaps(b):
                    yield a, b


# -- out variants ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OutVariant:
    op: torch._ops.OpOverload
    out_args: tuple[str, ...]   # keyword names, one per return of the functional op
    list_out: bool = False      # one `Tensor(a!)[] out` for a `Tensor[]` return; returns nothing


def find_out_variant(op) -> tuple[OutVariant | None, str | None]:
    """The real out= overload of `op` (not a generated one that computes, then copies), or
    (None, why not). Its non-out arguments must be exactly `op`'s. An fxc op returning
    `Tensor[]` may have an `.out` overload writing `Tensor(a!)[] out` (fxc::fused_region)."""
    if not isinstance(op, torch._ops.OpOverload):
        return None, "not an ATen op"
    if _list_returning_fxc_op(op):
        out = getattr(op.overloadpacket, "out", None) if "out" in op.overloadpacket.overloads() else None
        if out is None or not _same_inputs(op, out) or out._schema.returns:
            return None, "multi-output (tensor list) without an out= form"
        return OutVariant(out, tuple(a.name for a in out._schema.arguments if a.is_out), True), None
    returns = op._schema.returns
    if any(str(r.type) != "Tensor" for r in returns):
        return None, "multi-output (tensor list)" if returns else "returns nothing"
    seen_generated = False
    packet = op.overloadpacket
    for cand in _out_candidates(op):
        out = getattr(packet, cand)
        if not _same_inputs(op, out):
            continue
        if torch.Tag.generated in out.tags:
            seen_generated = True
            continue
        outs = tuple(a.name for a in out._schema.arguments if a.is_out)
        if len(outs) == len(returns):
            return OutVariant(out, outs), None
    return None, "no out variant" + (" (only a generated one that copies)" if seen_generated else "")


def _list_returning_fxc_op(op) -> bool:
    returns = op._schema.returns
    return op.namespace == "fxc" and len(returns) == 1 and str(returns[0].type) == "List[Tensor]"


def _out_candidates(op) -> list[str]:
    """Overload names that may be op's out= form; the conventional names first."""
    name = op._overloadname
    first = ["out"] if name == "default" else [f"{name}_out", "out"]
    rest = sorted(o for o in op.overloadpacket.overloads() if o not in first and o != name)
    return [o for o in first + rest if o in op.overloadpacket.overloads()]


def _same_inputs(op, out) -> bool:
    fa = [(a.name, str(a.type)) for a in op._schema.arguments]
    oa = [(a.name, str(a.type)) for a in out._schema.arguments if not a.is_out]
    return fa == oa


# -- liveness ----------------------------------------------------------------------------------

Buf = tuple[fx.Node, "int | None"]  # a fresh tensor: (producer, output index or None)


@dataclasses.dataclass
class Liveness:
    """What the planner learns from the graph, before choosing offsets."""

    schedule: list[fx.Node]
    roots: dict[fx.Node, set]                  # node -> the fresh buffers (or externals) it aliases
    first: dict[Buf, int]
    last: dict[Buf, int]
    fresh: dict[Buf, torch.Tensor]             # buffer -> its meta
    external: set                              # roots that are inputs/constants (never planned)
    output_roots: dict[fx.Node, set]           # returned node -> roots it aliases


def analyze(gm: fx.GraphModule, assume_alias: frozenset[str] = frozenset()) -> Liveness:
    """Alias sets and live ranges of every tensor over the graph's node order.

    `assume_alias`: node names whose result must be assumed to alias all their inputs
    (the engine found them sharing storage although their schema says otherwise)."""
    schedule = [n for n in gm.graph.nodes if n.op == "call_function"]
    pos = {n: i for i, n in enumerate(schedule)}
    lv = Liveness(schedule, {}, {}, {}, {}, set(), {})
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            lv.roots[node] = {(node, None)}
            lv.external.add((node, None))
        elif node.op == "call_function":
            lv.roots[node] = _node_roots(node, lv, pos[node], node.name in assume_alias)
        elif node.op == "output":
            for a in _tensor_nodes(node.args):
                lv.output_roots.setdefault(a, set()).update(lv.roots.get(a, ()))
    for node in schedule:  # a buffer lives until the last use of anything aliasing it
        end = max((pos.get(u, len(schedule)) for u in node.users), default=pos[node])
        for r in lv.roots[node]:
            if r in lv.last:
                lv.last[r] = max(lv.last[r], end)
    return lv


def _node_roots(node: fx.Node, lv: Liveness, i: int, assume_alias: bool) -> set:
    target, val = node.target, node.meta.get("val")
    if target is operator.getitem:
        src, idx = node.args[0], node.args[1]
        own = (src, idx)
        if own not in lv.fresh:  # an item of a list of views (split): aliases what src does
            return set(lv.roots.get(src, ()))
        # an output of a multi-output op, plus whatever src may alias beyond its own outputs
        return {own} | {r for r in lv.roots.get(src, ()) if r[0] is not src}
    if not isinstance(target, torch._ops.OpOverload) or assume_alias:
        # Unknown semantics: the result is fresh but may alias any input.
        inherited = set().union(*(lv.roots[a] for a in _tensor_nodes((node.args, node.kwargs))))
        return _new_buffers(node, val, lv, i, range(len(val)) if isinstance(val, (tuple, list))
                            else [None]) | inherited
    returns = target._schema.returns
    roots: set = set()
    fresh_idx = []
    for k, r in enumerate(returns):
        if _returns_fresh(target, r) and _list_returning_fxc_op(target):
            fresh_idx.extend(range(len(val)))  # fresh tensors, read through getitem
        elif _returns_fresh(target, r):
            fresh_idx.append(k if len(returns) > 1 else None)
        else:
            roots |= set().union(*(lv.roots[a] for a in _aliased_args(node, r)))
    return roots | _new_buffers(node, val, lv, i, fresh_idx)


def _returns_fresh(op, ret) -> bool:
    return ret.alias_info is None and op._schema.name not in _SCHEMA_LIES


def fresh_by_schema(node: fx.Node) -> bool:
    """Does the node's schema promise that every result is a new tensor (no alias)?"""
    op = node.target
    return isinstance(op, torch._ops.OpOverload) and all(
        _returns_fresh(op, r) for r in op._schema.returns)


def _new_buffers(node, val, lv: Liveness, i: int, indices) -> set:
    out = set()
    for k in indices:
        v = val if k is None else (val[k] if isinstance(val, (tuple, list)) else None)
        if isinstance(v, torch.Tensor):
            buf = (node, k)
            lv.fresh[buf], lv.first[buf], lv.last[buf] = v, i, i
            out.add(buf)
    return out


def _aliased_args(node: fx.Node, ret) -> list[fx.Node]:
    """The argument nodes a schema return aliases: those sharing its alias set; where the
    set is not spelled out (`Tensor(a)[]`), every argument with alias info; else all."""
    schema_args = node.target._schema.arguments
    sets = ret.alias_info.before_set if ret.alias_info is not None else set()
    bound = _bind(node)
    picked = [bound[a.name] for a in schema_args
              if a.name in bound and a.alias_info is not None and (a.alias_info.before_set & sets)]
    if not picked:
        picked = [bound[a.name] for a in schema_args if a.name in bound and a.alias_info is not None]
    if not picked:
        picked = list(bound.values())
    return [n for v in picked for n in _tensor_nodes(v)]


def _bind(node: fx.Node) -> dict:
    names = [a.name for a in node.target._schema.arguments]
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def _tensor_nodes(tree) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(tree, lambda n: found.append(n))
    return found


# -- what may be planned -----------------------------------------------------------------------

def planning_refusal(buf: Buf, lv: Liveness, zero_copy_outputs: bool,
                     ranges: dict[str, tuple[int, int]] | None = None) -> str | None:
    """Why fresh buffer `buf` stays with the allocator, or None if it can go in the arena."""
    node, _ = buf
    val = lv.fresh[buf]
    span = symbolic_span(val)
    if span is not None:
        why = _unbounded(span, ranges or {})
        if why:
            return why
    if val.layout != torch.strided or val.is_quantized:
        return f"layout {val.layout}"
    if not zero_copy_outputs:
        for out, roots in lv.output_roots.items():
            if buf in roots:
                own = out is node or _is_item(out, buf)
                return "graph output" if own else f"aliased by output %{out.name}"
    ov, why = find_out_variant(node.target)
    if ov is None:
        return why
    known = _OUT_QUIRKS.get(node.target)
    return known(node) if known else None


def _matmul_quirk(node: fx.Node) -> str | None:
    ranks = [a.meta["val"].dim() for a in node.args[:2] if isinstance(a, fx.Node)]
    if 1 in ranks:  # matmul_out unsqueezes/resizes `out` for 1-D operands, warning each call
        return "out= kernel resizes its output (a 1-D operand)"
    return None


# Real out= kernels that misbehave for some arguments, found the hard way: node -> reason.
_OUT_QUIRKS = {torch.ops.aten.matmul.default: _matmul_quirk}


def _is_item(n: fx.Node, buf: Buf) -> bool:
    return n.target is operator.getitem and (n.args[0], n.args[1]) == buf


def symbolic_span(val: torch.Tensor):
    """span_bytes of a symbolically sized tensor as a sympy expression; None for a fixed size."""
    if all(isinstance(s, int) for s in (*val.shape, *val.stride(), val.storage_offset())):
        return None
    import sympy
    e = lambda s: s.node.expr if isinstance(s, torch.SymInt) else sympy.Integer(int(s))  # noqa: E731
    last = e(val.storage_offset()) + sum((e(s) - 1) * e(st) for s, st in zip(val.shape, val.stride()))
    return (last + 1) * val.element_size()


def _unbounded(span, ranges: dict[str, tuple[int, int]]) -> str | None:
    """Why `span` has no maximum over `ranges` (a symbol with no declared maximum, or one no
    input carries, or an expression interval arithmetic cannot bound), or None."""
    missing = sorted(str(s) for s in span.free_symbols if str(s) not in ranges)
    if missing:
        return (f"dynamic shape: {', '.join(missing)} has no declared maximum carried by an input "
                f"axis")
    if max_span(span, _ranges_key(ranges)) is None:
        return "dynamic shape: its size has no finite bound over the declared ranges"
    return None


def _ranges_key(ranges: dict[str, tuple[int, int]]) -> tuple:
    return tuple(sorted(ranges.items()))


@functools.lru_cache(maxsize=4096)
def max_span(span, ranges_key: tuple) -> int | None:
    """The most bytes `span` takes over the ranges (interval arithmetic: an upper bound, exact for
    sizes that grow with their symbols), or None if unbounded. Cached: many tensors share one."""
    from torch.utils._sympy.value_ranges import ValueRanges, bound_sympy

    from fxc.dynamic import range_end
    ranges = dict(ranges_key)
    bounds = {s: ValueRanges(*ranges[str(s)]) for s in span.free_symbols}
    try:
        high = range_end(bound_sympy(span, bounds).upper)
    except Exception:  # noqa: BLE001 - an expression bound_sympy cannot take: no bound
        return None
    return max(high, 0) if high is not None else None


def span_at(span, point: dict[str, int]) -> int:
    """`span` evaluated with its symbols at `point` (>= 0: an empty tensor spans nothing)."""
    import sympy
    value = span.xreplace({s: sympy.Integer(point[str(s)]) for s in span.free_symbols})
    return max(int(value), 0)


def span_bytes(val: torch.Tensor) -> int:
    """Bytes from the storage start to one past the last element (non-contiguous aware)."""
    if val.numel() == 0:
        return 0
    last = val.storage_offset() + sum((s - 1) * st for s, st in zip(val.shape, val.stride()))
    return (last + 1) * val.element_size()


# -- offsets -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Interval:
    key: object
    size: int
    first: int
    last: int


def _breadth(items: list[Interval]) -> dict[int, int]:
    """Bytes live at each step."""
    live: dict[int, int] = {}
    for it in items:
        for t in range(it.first, it.last + 1):
            live[t] = live.get(t, 0) + it.size
    return live


def _order_size(items, live):
    return sorted(items, key=lambda t: (-t.size, t.first, t.last))


def _order_breadth(items, live):
    # Tensors of the busiest steps first (Pisarchyk and Lee's greedy by breadth ordering).
    peak = {id(t): max(live[s] for s in range(t.first, t.last + 1)) for t in items}
    return sorted(items, key=lambda t: (-peak[id(t)], -t.size, t.first))


def _order_area(items, live):
    return sorted(items, key=lambda t: (-t.size * (t.last - t.first + 1), -t.size, t.first))


def _order_lifetime(items, live):
    return sorted(items, key=lambda t: (-(t.last - t.first), -t.size, t.first))


def _order_conflicts(items, live):
    # Most conflicting bytes first: the tensor that constrains the most others.
    events = sorted(items, key=lambda t: t.first)
    weight = {id(t): 0 for t in items}
    for i, a in enumerate(events):
        for b in events[i + 1:]:
            if b.first > a.last:
                break
            weight[id(a)] += b.size
            weight[id(b)] += a.size
    return sorted(items, key=lambda t: (-weight[id(t)], -t.size, t.first))


ORDERS: dict[str, Callable] = {
    "size": _order_size, "breadth": _order_breadth, "conflicts": _order_conflicts,
    "area": _order_area, "lifetime": _order_lifetime,
}


def greedy_offsets(ordered: list[Interval]) -> tuple[dict, int]:
    """Place each interval, in the given order, in the smallest gap between the already placed
    ones it is live with that fits it (else above them all). Returns (key -> offset, arena)."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last), by offset
    offsets, arena = {}, 0
    for t in ordered:
        prev_end, best, best_gap = 0, None, math.inf
        for off, size, first, last in placed:
            if first > t.last or t.first > last:
                continue
            gap = off - prev_end
            if t.size <= gap < best_gap:
                best, best_gap = prev_end, gap
            prev_end = max(prev_end, off + size)
        offset = prev_end if best is None else best
        _insort(placed, (offset, t.size, t.first, t.last))
        offsets[t.key] = offset
        arena = max(arena, offset + t.size)
    return offsets, arena


def _insort(placed: list, item: tuple) -> None:
    lo, hi = 0, len(placed)
    while lo < hi:
        mid = (lo + hi) // 2
        if placed[mid][0] <= item[0]:
            lo = mid + 1
        else:
            hi = mid
    placed.insert(lo, item)


def assign(items: list[Interval], strategy: str = "best") -> tuple[dict, int, str, dict[str, int]]:
    """Offsets for `items` by one order, or by every order keeping the smallest arena ('best').
    Returns (key -> offset, arena bytes, the order used, arena bytes per order tried)."""
    if strategy != "best" and strategy not in ORDERS:
        raise FxcOptionError(f"planner={strategy!r}: expected 'best' or one of {sorted(ORDERS)}")
    names = list(ORDERS) if strategy == "best" else [strategy]
    live = _breadth(items) if items else {}
    results, tried = {}, {}
    for name in names:
        results[name] = greedy_offsets(ORDERS[name](items, live))
        tried[name] = results[name][1]
    winner = min(names, key=lambda n: (tried[n], names.index(n)))
    return results[winner][0], results[winner][1], winner, tried


def lower_bound(items: list[Interval]) -> int:
    """The most bytes live at one step: no placement can use less."""
    return max(_breadth(items).values(), default=0)


# -- the plan ----------------------------------------------------------------------------------

def plan(gm: fx.GraphModule, *, alignment: int | None = None, strategy: str = "best",
         exclude: dict[str, str] | None = None, assume_alias: frozenset[str] = frozenset(),
         zero_copy_outputs: bool = False,
         ranges: dict[str, tuple[int, int]] | None = None) -> MemoryPlan:
    """Plan every intermediate tensor of `gm` that has a real out= kernel.

    alignment: bytes (default 256 when any tensor is on CUDA, else 64); strategy: 'best' or an
    ORDERS name; exclude: node name -> why the engine refuses it (kept as the reason);
    ranges: root symbol -> (low, high) that a call's inputs can take (symbolic graphs: tensors
    sized by these symbols are planned at their maximum, see the module docstring)."""
    exclude = exclude or {}
    ranges = dict(ranges or {})
    lv = analyze(gm, assume_alias)
    align = alignment or _default_alignment(lv)
    items: dict[str, list[Interval]] = {}
    meta: dict[Buf, int] = {}
    spans: dict[Buf, Any] = {}
    refused: dict[fx.Node, str] = {}
    for buf, val in lv.fresh.items():
        why = exclude.get(buf[0].name) or planning_refusal(buf, lv, zero_copy_outputs, ranges)
        if why:
            refused.setdefault(buf[0], why)
            continue
        spans[buf] = symbolic_span(val)
        meta[buf] = span_bytes(val) if spans[buf] is None else max_span(spans[buf], _ranges_key(ranges))
        size = -(-meta[buf] // align) * align
        items.setdefault(str(val.device), []).append(Interval(buf, size, lv.first[buf], lv.last[buf]))
    # A multi-output node is planned whole or not at all (one out= call writes every output).
    for dev in items:
        items[dev] = [it for it in items[dev] if it.key[0] not in refused]
    used = {str(x) for sp in spans.values() if sp is not None for x in sp.free_symbols}
    plan = _build(gm, lv, items, meta, refused, align, strategy, zero_copy_outputs, spans)
    plan.ranges = {k: v for k, v in ranges.items() if k in used}
    return plan


def _build(gm, lv, items, meta, refused, align, strategy, zero_copy_outputs, spans) -> MemoryPlan:
    tensors, arenas, bounds, tried_all, winners = [], {}, {}, {}, []
    for dev, its in items.items():
        offsets, arena, winner, tried = assign(its, strategy)
        arenas[dev], bounds[dev] = arena, lower_bound(its)
        winners.append(winner)
        for k, v in tried.items():
            tried_all[k] = tried_all.get(k, 0) + v
        for it in its:
            node, idx = it.key
            tensors.append(PlannedTensor(node.name, idx, offsets[it.key], it.size, meta[it.key],
                                         it.first, it.last, dev, spans.get(it.key)))
    tensors.sort(key=lambda t: (t.first, t.name))
    return MemoryPlan(
        tensors=tensors, arenas=arenas, lower_bounds=bounds, alignment=align,
        strategy="/".join(sorted(set(winners))) or strategy, strategy_bytes=tried_all,
        unplanned=_unplanned(lv, refused),
        inputs=frozenset(n.name for n in gm.graph.nodes if n.op in ("placeholder", "get_attr")),
        output_roots={o.name: frozenset(_buf_name(r) for r in roots)
                      for o, roots in lv.output_roots.items()},
        zero_copy_outputs=zero_copy_outputs)


def _unplanned(lv: Liveness, refused: dict[fx.Node, str]) -> list[tuple[str, str, str]]:
    """Every step that does not write into the arena, with why: refused, or a view."""
    out = []
    for node in lv.schedule:
        if node in refused:
            out.append((node.name, ir.op_name(node), refused[node]))
        elif not any(r[0] is node for r in lv.roots[node]) and node.target is not operator.getitem:
            bases = sorted(_buf_name(r) for r in lv.roots[node])
            out.append((node.name, ir.op_name(node), f"view of {', '.join('%' + b for b in bases)}"
                        if bases else "returns no tensor"))
    return out


def _buf_name(buf) -> str:
    node, idx = buf
    return node.name if idx is None else f"{node.name}#{idx}"


def _default_alignment(lv: Liveness) -> int:
    cuda = any(v.device.type == "cuda" for v in lv.fresh.values())
    return ALIGNMENT["cuda" if cuda else "cpu"]


def plan_intervals(sizes_ranges: list[tuple[int, int, int]], *, alignment: int = 1,
                   strategy: str = "best") -> MemoryPlan:
    """A plan for bare (nbytes, first, last) triples: the assignment, without a graph (tests,
    and anyone planning lifetimes of their own)."""
    items = [Interval((f"t{i}", None), -(-n // alignment) * alignment, a, b)
             for i, (n, a, b) in enumerate(sizes_ranges)]
    offsets, arena, winner, tried = assign(items, strategy)
    tensors = [PlannedTensor(it.key[0], None, offsets[it.key], it.size, n, it.first, it.last)
               for it, (n, _, _) in zip(items, sizes_ranges)]
    return MemoryPlan(tensors, {"cpu": arena}, {"cpu": lower_bound(items)}, alignment, winner,
                      tried, [])
