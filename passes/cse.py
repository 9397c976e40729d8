"""Common subexpression elimination: one node per distinct pure computation.

Three merges, in this order (each one makes the next one's arguments identical):
  1. get_attr nodes that read the same attribute;
  2. constants that are bitwise identical (same dtype, shape, strides, device and bytes), mostly
     made by constant folding (every layer's causal mask). Bytes, not torch.equal: that would
     merge -0.0 with 0.0 and never merge a NaN with itself;
  3. pure call_function nodes with the same target, args and kwargs, in graph order, so that
     a merge makes its users' arguments identical in turn.

Arguments are keyed structurally and exactly (`arg_key`): a node by identity; a list apart
from a tuple; a bool, an int and a float apart (they promote differently: x * 1 is not x * 1.0);
a float by its bits (-0.0 is not 0.0, a NaN matches only the same NaN); slices by their
bounds; dtypes, devices, layouts and memory formats by value; anything else by identity.

Never merged: impure, random or uninitialized-memory ops (`is_pure`), and two values that are
both graph outputs (the caller would get one tensor twice, and a write into one would show in
the other). A graph that writes in place (not one capture makes) is left alone.

Invariant: outputs bitwise equal to the stage before; the kept node's meta["val"] is true of
what it computes, which is what the merged one computed.
"""
from __future__ import annotations

import operator
import struct
from typing import Any

import torch
import torch.fx as fx

from fxc import ir

from .dce import drop_unused_attributes
from .manager import PassContext, PassResult
from .rewrite import is_graph_output

aten = torch.ops.aten

# Their values are whatever memory held: two of them are not "the same computation", and
# folding one would freeze garbage.
_UNINITIALIZED = {
    aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
    aten.new_empty.default, aten.new_empty_strided.default, aten.empty_permuted.default,
}
# Python callables fx graphs hold besides ATen ops; anything else is unknown, so impure.
_PURE_PYTHON = {operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv,
                operator.floordiv, operator.neg, operator.mod, operator.pow}


def is_pure(node: fx.Node) -> bool:
    """True when `node` computes a function of its arguments alone: no side effect (fx's
    is_impure, a mutable schema), no random number (nondeterministic_seeded), no
    uninitialized memory. Unknown Python callables count as impure."""
    if node.op != "call_function" or node.is_impure():
        return False
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return (torch.Tag.nondeterministic_seeded not in t.tags and not t._schema.is_mutable
                and t not in _UNINITIALIZED)
    return t in _PURE_PYTHON


def first_mutation(gm: fx.GraphModule) -> fx.Node | None:
    """The first node that writes into a tensor in place, or None. Captured graphs are
    functional; the clean-up passes skip a graph that is not (removing a copy, merging two
    copies or freezing a value into a constant is only safe when nothing writes into it)."""
    for n in gm.graph.nodes:
        if (n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                and n.target._schema.is_mutable):
            return n
    return None


def skipped(node: fx.Node) -> PassResult:
    return PassResult(notes=[f"skipped: {ir.describe(node)} writes in place"])


def aliases_input(node: fx.Node) -> bool:
    """The node's value shares memory with an input (a view op, or a getitem of one)."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return isinstance(node.args[0], fx.Node) and aliases_input(node.args[0])
    t = node.target
    return isinstance(t, torch._ops.OpOverload) and any(
        r.alias_info is not None for r in t._schema.returns)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if (writer := first_mutation(gm)) is not None:
        return skipped(writer)
    same_attr = _merge_same_attributes(gm)
    same_bytes = _merge_identical_constants(gm)
    calls, refused = _merge_calls(gm)
    freed = drop_unused_attributes(gm)
    notes = []
    if same_attr:
        notes.append(f"merged {same_attr} get_attr node(s) reading the same attribute")
    if same_bytes:
        notes.append(f"merged {same_bytes} bitwise-identical constant(s), freed {freed}")
    if calls:
        notes.append(f"merged {calls} duplicate computation(s)")
    if refused:
        notes.append(f"refused {refused}: both graph outputs")
    return PassResult(rewrites=same_attr + same_bytes + calls, notes=notes,
                      stats={"same_attribute": same_attr, "identical_constants": same_bytes,
                             "duplicate_calls": calls, "refused_outputs": refused})


def _replace(graph: fx.Graph, dup: fx.Node, kept: fx.Node) -> bool:
    """Users of `dup` read `kept` (which comes earlier in the graph); False when both are
    graph outputs."""
    if is_graph_output(dup) and is_graph_output(kept):
        return False
    dup.replace_all_uses_with(kept)
    graph.erase_node(dup)
    return True


# -- 1. and 2.: constants -------------------------------------------------------------------------

def _merge_same_attributes(gm: fx.GraphModule) -> int:
    first: dict[str, fx.Node] = {}
    merged = 0
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        kept = first.setdefault(node.target, node)
        if kept is not node and _replace(gm.graph, node, kept):
            merged += 1
    return merged


def _merge_identical_constants(gm: fx.GraphModule) -> int:
    """Group constants by a cheap signature (dtype, shape, strides, device, first bytes), then
    compare every byte within a group; the one first in the graph is kept."""
    groups: dict[tuple, list[tuple[fx.Node, torch.Tensor]]] = {}
    merged = 0
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        t = ir.fetch_attr(gm, node.target)
        if not isinstance(t, torch.Tensor) or t.is_quantized or t.is_sparse:
            continue
        candidates = groups.setdefault(_signature(t), [])
        for kept, kt in candidates:
            if kt is t or torch.equal(_bits(kt), _bits(t)):
                if _replace(gm.graph, node, kept):
                    merged += 1
                break
        else:
            candidates.append((node, t))
    return merged


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, as uint8, in logical order (so strides of equal tensors agree)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _signature(t: torch.Tensor) -> tuple:
    head = bytes(_bits(t.reshape(-1)[:8]).cpu().tolist()) if t.numel() else b""
    return (t.dtype, tuple(t.shape), t.stride(), t.device, head)




# -- 3.: computations -----------------------------------------------------------------------------

def _merge_calls(gm: fx.GraphModule) -> tuple[int, int]:
    seen: dict[tuple, fx.Node] = {}
    merged = refused = 0
    for node in list(gm.graph.nodes):
        if not is_pure(node):
            continue
        key = (node.target, arg_key(node.args), arg_key(node.kwargs))
        kept = seen.setdefault(key, node)
        if kept is node:
            continue
        if _replace(gm.graph, node, kept):
            merged += 1
        else:
            refused += 1
    return merged, refused


def arg_key(a: Any) -> Any:
    """A hashable key equal for two arguments exactly when an op cannot tell them apart."""
    if isinstance(a, fx.Node):
        return ("node", a)
    if isinstance(a, bool):  # before int: True == 1 and hash(True) == hash(1)
        return ("bool", a)
    if isinstance(a, int):
        return ("int", a)
    if isinstance(a, float):
        return ("float", struct.pack("<d", a))  # bits: -0.0 != 0.0, NaN == same NaN
    if isinstance(a, complex):
        return ("complex", struct.pack("<dd", a.real, a.imag))
    if isinstance(a, list):  # fx's immutable_list included
        return ("list", tuple(arg_key(x) for x in a))
    if isinstance(a, tuple):
        return ("tuple", tuple(arg_key(x) for x in a))
    if isinstance(a, dict):
        return ("dict", tuple(sorted((k, arg_key(v)) for k, v in a.items())))
    if isinstance(a, slice):
        return ("slice", arg_key(a.start), arg_key(a.stop), arg_key(a.step))
    if a is None or isinstance(a, (str, torch.dtype, torch.device, torch.layout,
                                   torch.memory_format)):
        return (type(a).__name__, a)
    return ("id", id(a))  # tensors, opaque objects: equal only to themselves
