"""Merge parallel linears that read the same input into one wider linear (QKV merge).

    y_i = linear(x, W_i, b_i), i = 1..n   ->   y = linear(x, cat(W_i), cat(b_i))
                                               y_1..y_n = split_with_sizes(y, [out_i], -1)

One GEMM of n * out features instead of n GEMMs over the same x (BERT's and Llama's q, k, v
projections). The concatenated weight and bias are new constants, made once at compile time;
the old ones are deleted from the module when nothing else reads them (a weight tied
elsewhere stays).

Invariant: same values (numerics="fp32": one wider GEMM may sum in another order). A group is
the linears of x whose weights (and biases) are get_attr constants, 2-d, of one dtype and
device, with biases all present or all absent; a linear whose result is a graph output is fine
(its getitem becomes the output). Left out of a group, with the reason: a weight or bias that
is not a constant, another dtype or device, a linear whose output some user views in a way a
strided slice of the merged output cannot be viewed (view merging the last dim, as_strided),
and a linear whose activation the later epilogue fusion takes (fuse_linear: linear + relu /
gelu -> fxc::linear_act; merging would hide the linear behind a split and block it, and the
epilogue saves a pass over the output that the merge does not). A single linear on x is no
candidate at all.

Order: after fuse_attention (its rule reads q, k, v as whatever feeds the matmuls, so getitems
of a split would do too, but attention is matched on the plain graph), and before or after
fuse_linear alike: before it, linears it will fuse are left out (its own match() is asked);
after it, they are fxc::linear_act already and no aten.linear.
"""
from __future__ import annotations

import collections
import contextlib
import operator

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensorMode

from fxc import ir

from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten
# Ops that read their input's strides as data: they must see a contiguous tensor.
_STRIDE_SENSITIVE = (aten.as_strided.default,)
# Ops whose output aliases their input's memory, so a strided input gives strided outputs.
_VIEW_CHAIN = {
    aten.view.default, aten._unsafe_view.default, aten.permute.default, aten.transpose.int,
    aten.t.default, aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.slice.Tensor, aten.select.int,
    aten.alias.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int,
    aten.narrow.default, aten.diagonal.default, aten.unfold.default, operator.getitem,
}


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    merged: list[tuple[int, list[str]]] = []  # per group: its size, the constants it concatenated

    def apply_and_record(gm: fx.GraphModule, group: list[fx.Node], ctx: PassContext) -> int:
        consts = [_arg(lin, i, k) for lin in group for i, k in ((1, "weight"), (2, "bias"))]
        merged.append((len(group), [c.target for c in consts if c is not None]))
        return apply(gm, group, ctx)

    result = run_rules(gm, [Rule("merge_linear", match, apply_and_record)], ctx)
    freed = _drop_unread(gm, {name for _, names in merged for name in names})
    if freed:
        result.notes.append(f"freed {freed} constant(s) now held concatenated")
    result.stats = {"groups": len(merged), "linears": sum(n for n, _ in merged)}
    return result


def _drop_unread(gm: fx.GraphModule, names: set[str]) -> int:
    """Delete the buffers in `names` that no get_attr reads any more (tied ones stay)."""
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    dead = [name for name in names if name not in read and hasattr(gm, name)]
    for name in dead:
        delattr(gm, name)
    return len(dead)


def match(node: fx.Node, ctx: PassContext):
    if not is_op(node, aten.linear.default) or getattr(node, "_erased", False):
        return None  # (apply erases a group's other linears while run_rules' sweep goes on)
    x = node.args[0]
    siblings = [u for u in x.users if is_op(u, aten.linear.default) and u.args[0] is x]
    if len(siblings) < 2:
        return None
    order = _order(x.graph)
    if node is not min(siblings, key=order):
        return None  # the group is matched once, at its first linear
    groups: dict = collections.defaultdict(list)
    reasons = []
    for lin in siblings:
        key = _key(lin, ctx)
        if isinstance(key, Refuse):
            reasons.append(key.reason)
        else:
            groups[key].append(lin)
    best = max(groups.values(), key=len, default=[])
    if len(best) < 2:
        why = reasons[0] if reasons else "the linears differ in dtype, device or bias"
        return Refuse(f"{len(siblings)} linears read %{x.name} but fewer than two can merge: {why}")
    return sorted(best, key=order)


def _order(graph: fx.Graph):
    index = {n: i for i, n in enumerate(graph.nodes)}
    return index.__getitem__


def _key(lin: fx.Node, ctx: PassContext):
    """What linears must share to merge, or why this one cannot."""
    w, b = _arg(lin, 1, "weight"), _arg(lin, 2, "bias")
    if not _is_constant(w):
        return Refuse(f"the weight of %{lin.name} is not a constant")
    if b is not None and not _is_constant(b):
        return Refuse(f"the bias of %{lin.name} is not a constant")
    wv, bv = ir.tensor_meta(w), ir.tensor_meta(b) if b is not None else None
    if wv is None or wv.dim() != 2 or not wv.is_floating_point():
        return Refuse(f"the weight of %{lin.name} is not a floating matrix")
    if bv is not None and (bv.shape != wv.shape[:1] or bv.dtype != wv.dtype):
        return Refuse(f"the bias of %{lin.name} is not one value per out feature, of the "
                      f"weight's dtype")
    if (why := _epilogue_taken(lin, ctx)):
        return Refuse(why)
    if (why := _strides_matter(lin)):
        return Refuse(why)
    return (wv.shape[1], wv.dtype, wv.device, b is not None)


def _arg(n: fx.Node, i: int, name: str):
    return n.args[i] if len(n.args) > i else n.kwargs.get(name)


def _is_constant(n) -> bool:
    return isinstance(n, fx.Node) and n.op == "get_attr"


def _epilogue_taken(lin: fx.Node, ctx: PassContext) -> str | None:
    """The epilogue fusion (fuse_linear, later in the pipeline) would fuse this linear."""
    if not ctx.options.enabled("fuse_linear"):
        return None
    from . import fuse_linear  # a sibling pass: ask its own rule, so the two never disagree

    m = fuse_linear.match(lin, ctx)
    if m and not isinstance(m, Refuse):
        return f"%{lin.name}'s activation is fused into its GEMM later (fuse_linear)"
    return None


def _strides_matter(lin: fx.Node) -> str | None:
    """A reader that cannot take a strided slice of the merged output where it took the
    contiguous linear output: a view merging the last dim with another, reached through any
    chain of views (view / permute / getitem ...), or an op that reads strides (as_strided).
    Ops that compute keep their input's dim order, which the slice shares."""
    out = ir.tensor_meta(lin)
    # the slice as the merged output holds it: rows of (at least) twice its width; on the
    # meta device, where views keep their strides and nothing is computed (symbolic sizes:
    # inside the graph's own fake mode, which owns their symbols)
    with _mode_of(out):
        piece = torch.empty(tuple(out.shape[:-1]) + (2 * out.shape[-1],), dtype=out.dtype,
                            device="meta")[..., : out.shape[-1]]
        return _views_fail(lin, piece, lin.name, 0)


def _mode_of(val: torch.Tensor):
    """The fake mode that owns a symbolic meta value's sizes; a no-op context for static ones."""
    if all(isinstance(s, int) for s in val.shape):
        return contextlib.nullcontext()
    return getattr(val, "fake_mode", None) or contextlib.nullcontext()


def _views_fail(node: fx.Node, fake, name: str, depth: int) -> str | None:
    for u in node.users:
        if u.op != "call_function" or not u.args or u.args[0] is not node:
            continue
        if u.target in _STRIDE_SENSITIVE:
            return f"%{u.name} reads the strides of %{name}"
        rest = pytree.tree_leaves((u.args[1:], u.kwargs))
        if u.target not in _VIEW_CHAIN or depth > 16:
            continue
        # a size computed in the graph (a symbolic dim): its meta value, a SymInt
        sized = lambda n: n.meta.get("val") if isinstance(n.meta.get("val"), torch.SymInt) else n  # noqa: E731
        args, kwargs = fx.node.map_arg((u.args[1:], u.kwargs), sized)
        if any(isinstance(a, fx.Node) for a in pytree.tree_leaves((args, kwargs))):
            continue
        try:
            val = u.target(fake, *args, **kwargs)
        except RuntimeError:
            return f"%{u.name} cannot view a strided slice of the merged output of %{name}"
        if (why := _views_fail(u, val, name, depth + 1)):
            return why
    return None


def apply(gm: fx.GraphModule, group: list[fx.Node], ctx: PassContext) -> int:
    g, first = gm.graph, group[0]
    weights = [ir.fetch_attr(gm, _arg(lin, 1, "weight").target) for lin in group]
    biases = [_arg(lin, 2, "bias") for lin in group]
    sizes = [int(w.shape[0]) for w in weights]
    with g.inserting_before(first):
        w = _constant(gm, torch.cat(weights, 0), _arg(first, 1, "weight").target + "_merged")
        b = None
        if biases[0] is not None:
            b = _constant(gm, torch.cat([ir.fetch_attr(gm, n.target) for n in biases], 0),
                          biases[0].target + "_merged")
        merged = ir.new_call(g, aten.linear.default, (first.args[0], w, b), like=first)
        parts = ir.new_call(g, aten.split_with_sizes.default, (merged, sizes, -1), like=first)
        outs = [_getitem(g, parts, i, lin) for i, lin in enumerate(group)]
    for lin, out in zip(group, outs):
        lin.replace_all_uses_with(out)
        g.erase_node(lin)
    return 1


def _getitem(g: fx.Graph, parts: fx.Node, i: int, like: fx.Node) -> fx.Node:
    """parts[i], its meta read off the split's (no fake execution needed)."""
    node = g.call_function(operator.getitem, (parts, i))
    node.meta["val"] = parts.meta["val"][i]
    if "stack_trace" in like.meta:
        node.meta["stack_trace"] = like.meta["stack_trace"]
    return node




def _constant(gm: fx.GraphModule, value: torch.Tensor, base: str) -> fx.Node:
    """Register `value` as a new buffer of gm (a fresh name) and return its get_attr node."""
    base = base.replace(".", "_")
    name, i = base, 1
    while hasattr(gm, name):
        i += 1
        name = f"{base}{i}"
    gm.register_buffer(name, value.detach(), persistent=False)
    node = gm.graph.get_attr(name)
    node.meta["val"] = FakeTensorMode(allow_non_fake_inputs=True).from_tensor(value)
    return node
