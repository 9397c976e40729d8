"""Constant folding: compute at compile time every value that depends only on constants.

A call_function node folds when every input is a get_attr constant, a literal or a folded
node, and it is pure and deterministic (cse.is_pure: no side effect, no random op, no
uninitialized memory). The frontier of the folded region (folded values that an unfolded node
still reads) becomes new get_attr constants, buffers of the GraphModule named after the node
they replace (`folded_<node>`); the rest of the region, and constants nothing reads any more,
then go. Evaluation runs the graph's own kernels on the constants where they live (so on the
device they are on).

Refused, with the count in the notes:
  - size: a value of more than `options.fold_size_limit` x the bytes of the distinct constants
    it is computed from, unless it is small in absolute terms: at most SMALL_BYTES (1 MiB)
    itself, while the small values folded over the ratio add up to at most SMALL_TOTAL (32
    MiB) per graph. A large expand/repeat of a weight stays lazy: folding would make the
    compiled model that much bigger. A small one folds: Swin's relative position bias is 14x
    its table but 49*49*heads floats, and its shifted-window mask 64*49*49 floats from a few
    row vectors; left to run time they cost a dozen gather/copy kernels a call. A value
    computed from literals alone (arange, full, scalar_tensor and what follows from them: a
    causal mask) counts as a constant of its own size, since the run time allocates it on
    every call anyway; a view of one (an expand) allocates nothing, so it stays under the
    limit. The notes say how many values folded by the absolute rule, and their bytes.
  - graph output: the caller would get the shared constant itself, and writing into it would
    change every later call; its inputs fold instead.
A graph that writes in place (not one capture makes) is left alone, for the same reason.

Invariant: outputs as close as fp32 allows to the stage before (the same kernels on the same
values; a folded view is materialized dense, so a later kernel may see other strides), and
every meta["val"] true: a new get_attr's is a FakeTensor of the folded tensor.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from fxc import ir

from .cse import aliases_input, first_mutation, is_pure, skipped
from .dce import drop_unused_attributes
from .manager import PassContext, PassResult
from .rewrite import is_graph_output

_MAX_RETRIES = 8  # evaluation failures tolerated (each blocks one node and re-plans)
SMALL_BYTES = 1 << 20  # a value this small folds whatever its ratio to its constants ...
SMALL_TOTAL = 32 << 20  # ... while such values add up to no more than this per graph


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if (writer := first_mutation(gm)) is not None:
        return skipped(writer)  # a write into a folded constant would persist across calls
    before = constant_bytes(gm)
    blocked: set[fx.Node] = set()
    for _ in range(_MAX_RETRIES):
        plan = _plan(gm, ctx.options.fold_size_limit, blocked, _small_budget(ctx))
        if not plan.frontier:
            values = {}
            break
        values, failed = _evaluate(gm, plan)
        if failed is None:
            break
        blocked.add(failed)
    else:
        values = {}
    folded = _substitute(gm, plan, values) if values else 0
    after = constant_bytes(gm)
    notes = [f"constants {fmt_bytes(before)} -> {fmt_bytes(after)}"]
    if folded:
        notes.append(f"folded {folded} node(s) into {len(values)} constant(s)")
    if plan.small:
        notes.append(f"{plan.small} small value(s) over {ctx.options.fold_size_limit:g}x their "
                     f"constants allowed ({fmt_bytes(plan.small_bytes)}; each at most "
                     f"{fmt_bytes(plan.budget[0])}, at most {fmt_bytes(plan.budget[1])} in all)")
    if plan.refused_size:
        notes.append(f"refused {plan.refused_size} for size (over {ctx.options.fold_size_limit:g}x "
                     f"the constants they read and over {fmt_bytes(plan.budget[0])}, or past "
                     f"the {fmt_bytes(plan.budget[1])} budget for small values)")
    for why, n in sorted(plan.kept.items()):
        notes.append(f"kept {n} constant-only node(s): {why}")
    if blocked:
        notes.append(f"kept {len(blocked)} node(s) that failed to evaluate: "
                     + ", ".join(ir.describe(n) for n in blocked if n.graph is gm.graph))
    stats = {"constant_bytes_before": before, "constant_bytes_after": after,
             "folded_nodes": folded, "new_constants": len(values),
             "refused_size": plan.refused_size, "small_folded": plan.small,
             "small_bytes": plan.small_bytes}
    return PassResult(rewrites=folded, notes=notes, stats=stats)


# -- planning: which nodes fold, which values become constants ---------------------------------

def _small_budget(ctx: PassContext) -> tuple[int, int]:
    """(bytes per value, bytes in all) under which values over the ratio still fold."""
    return (getattr(ctx.options, "fold_small_bytes", SMALL_BYTES),
            getattr(ctx.options, "fold_small_total", SMALL_TOTAL))


class _Plan:
    def __init__(self, budget: tuple[int, int] = (SMALL_BYTES, SMALL_TOTAL)):
        self.foldable: dict[fx.Node, None] = {}     # ordered set, graph order
        self.sources: dict[fx.Node, dict] = {}      # node -> {source key: bytes}
        self.frontier: list[fx.Node] = []
        self.refused_size = 0
        self.budget = budget
        self.small = self.small_bytes = 0           # folded over the ratio, for being small
        self.kept: dict[str, int] = {}              # other refusals of constant-only nodes

    def admit(self, size: int, limit: float, read: int) -> bool:
        """The size rule: within `limit` x the bytes read, or small (SMALL_BYTES/SMALL_TOTAL)."""
        if size <= limit * read:
            return True
        if size <= self.budget[0] and self.small_bytes + size <= self.budget[1]:
            self.small += 1
            self.small_bytes += size
            return True
        self.refused_size += 1
        return False

    def keep(self, why: str) -> None:
        self.kept[why] = self.kept.get(why, 0) + 1


def _plan(gm: fx.GraphModule, limit: float, blocked: set[fx.Node],
          budget: tuple[int, int] = (SMALL_BYTES, SMALL_TOTAL)) -> _Plan:
    plan = _Plan(budget)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            t = fetch_attr(gm, node.target)
            if isinstance(t, torch.Tensor):
                plan.sources[node] = {node.target: nbytes(t)}
            continue
        if node.op != "call_function":
            continue
        inputs = node.all_input_nodes
        if not all(i in plan.foldable or (i.op == "get_attr" and i in plan.sources) for i in inputs):
            continue  # reads an input (or an unfolded value): runs at run time
        if node in blocked:
            continue  # named in the notes
        why = _refusal(node)
        if why:
            plan.keep(why)
            continue
        sources = {}
        for i in inputs:
            sources.update(plan.sources[i])
        if all(isinstance(k, fx.Node) for k in sources) and not aliases_input(node):
            sources[node] = nbytes(node.meta["val"])  # from literals alone: allocated per call
        if not plan.admit(nbytes(node.meta["val"]), limit, sum(sources.values())):
            continue
        plan.foldable[node] = None
        plan.sources[node] = sources
    _unfold_tuples(plan)
    plan.frontier = [n for n in plan.foldable
                     if any(u not in plan.foldable for u in n.users)]
    return plan


def _refusal(node: fx.Node) -> str | None:
    """Why a node whose inputs are all constant must still run at run time, or None."""
    if not is_pure(node):
        return "impure or random"
    if not _tensors(node.meta.get("val")):
        return "not a tensor value"
    if is_graph_output(node):
        return "graph output (the caller would share the constant)"
    return None


def _tensors(val: Any) -> bool:
    """A tensor, or a tuple/list of tensors (a multi-output op read through getitem)."""
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, (tuple, list)) and len(val) > 0 and all(
        isinstance(v, torch.Tensor) for v in val)


def _unfold_tuples(plan: _Plan) -> None:
    """A tuple-valued node cannot become a get_attr: when an unfolded node reads it (a getitem
    refused for size, say), it stays, and its own inputs become the frontier instead."""
    changed = True
    while changed:
        changed = False
        for node in list(plan.foldable):
            if not isinstance(node.meta["val"], torch.Tensor) and any(
                    u not in plan.foldable for u in node.users):
                del plan.foldable[node]
                changed = True


# -- evaluation ---------------------------------------------------------------------------------

def _evaluate(gm: fx.GraphModule, plan: _Plan) -> tuple[dict[fx.Node, torch.Tensor], fx.Node | None]:
    """Run the folded region on the real constants; returns frontier values, or the node that
    failed. Intermediates are freed after their last use in the region."""
    needed = _ancestors(plan.frontier, plan.foldable)
    remaining = {n: sum(1 for u in n.users if u in needed) for n in needed}
    env: dict[fx.Node, Any] = {}
    frontier = set(plan.frontier)
    out: dict[fx.Node, torch.Tensor] = {}

    def value(n: fx.Node):
        return env[n] if n in env else fetch_attr(gm, n.target)

    with torch.no_grad():
        for node in plan.foldable:
            if node not in needed:
                continue
            args = fx.node.map_arg(node.args, value)
            kwargs = fx.node.map_arg(node.kwargs, value)
            try:
                env[node] = node.target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - the node runs at run time instead
                return {}, node
            if node in frontier:
                out[node] = env[node]
            for i in node.all_input_nodes:
                if i in remaining:
                    remaining[i] -= 1
                    if remaining[i] == 0 and i not in frontier:
                        env.pop(i, None)
    return out, None


def _ancestors(roots: list[fx.Node], within: dict[fx.Node, None]) -> set[fx.Node]:
    seen, stack = set(), list(roots)
    while stack:
        n = stack.pop()
        if n in seen or n not in within:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


# -- substitution -------------------------------------------------------------------------------

def _substitute(gm: fx.GraphModule, plan: _Plan, values: dict[fx.Node, torch.Tensor]) -> int:
    """Frontier nodes -> get_attr of their value; then the dead region goes. Returns the
    number of call_function nodes removed."""
    graph, layout_changed = gm.graph, False
    aliases = {t.untyped_storage().data_ptr() for t in gm.buffers()}
    aliases |= {t.untyped_storage().data_ptr() for t in gm.parameters()}
    mode = _fake_mode(gm)
    for node, val in values.items():
        tensor = _own(val, aliases)
        name = _unique_name(gm, f"folded_{node.name}")
        gm.register_buffer(name, tensor, persistent=False)
        with graph.inserting_before(node):
            new = graph.get_attr(name)
        new.meta["val"] = mode.from_tensor(tensor, static_shapes=True)
        if "stack_trace" in node.meta:
            new.meta["stack_trace"] = node.meta["stack_trace"]
        layout_changed |= tensor.stride() != node.meta["val"].stride()
        node.replace_all_uses_with(new)
    removed = 0
    for node in reversed(list(plan.foldable)):
        if not node.users:
            graph.erase_node(node)
            removed += 1
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    drop_unused_attributes(gm)
    if layout_changed:
        ir.infer_meta(gm)  # a materialized view is dense now: later strides follow it
    return removed


def _own(val: torch.Tensor, aliases: set[int]) -> torch.Tensor:
    """The folded value as a tensor with its own compact storage: a view of a constant (a
    slice of a buffer) would otherwise keep all of the buffer alive, or share it."""
    val = val.detach()
    dense = val.is_non_overlapping_and_dense() if hasattr(val, "is_non_overlapping_and_dense") \
        else val.is_contiguous()
    compact = val.untyped_storage().nbytes() == nbytes(val) and val.storage_offset() == 0
    if val._base is not None or not dense or not compact or \
            val.untyped_storage().data_ptr() in aliases:
        return val.clone()  # preserve_format: strides kept where dense, else contiguous
    return val


def _fake_mode(gm: fx.GraphModule) -> FakeTensorMode:
    """The fake mode the graph's get_attr metas already live in, so new metas mix with them."""
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, FakeTensor):
            return val.fake_mode
    return FakeTensorMode(allow_non_fake_inputs=True)


def _unique_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


# -- sizes --------------------------------------------------------------------------------------

def fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def nbytes(val: Any) -> int:
    """Bytes of a tensor's elements (or of all tensors of a tuple), as materialized."""
    if isinstance(val, torch.Tensor):
        return val.numel() * val.element_size()
    if isinstance(val, (tuple, list)):
        return sum(nbytes(v) for v in val)
    return 0


def constant_bytes(gm: fx.GraphModule) -> int:
    """Bytes of the distinct constants the graph reads (get_attr tensors)."""
    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    return sum(nbytes(fetch_attr(gm, t)) for t in targets)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


