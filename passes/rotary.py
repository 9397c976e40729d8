"""Rotary embeddings in one index space, so the generated kernels take them whole.

    x1, x2 = x[..., :h], x[..., h:]                        (h = D / 2; x may be a slice of q:
    y = x * cos + cat([-x2, x1], -1) * sin                  GPT-NeoX/Phi's partial rotary)
        ->  xv = x.view(..., 2, h)                          (split the last dim: a view)
            r  = where([[True], [False]], -xv[..., 1:2, :], xv[..., 0:1, :])
            y  = (xv * cos.view(..., 2, h) + r * sin.view(..., 2, h)).view(..., D)

HF's rotate_half (Llama, Qwen2, Mistral, Phi-3, GPT-NeoX) is a neg and a cat: two ATen kernels
per q and per k in every layer, and the cat ends any fused region (its halves come from other
positions of the row). Written over [..., 2, h], the rotation is a select between two views of
x, so neg, where, the muls and the add are pointwise on views and fuse_regions makes them one
kernel per q and per k.

Invariant: exact. The same neg, mul and add on the same values in the same dtype; the where
only places them (cat([-x2, x1])[..., k*h + j] is -x2[j] for k = 0, x1[j] for k = 1). The
result has the shape and strides the add had (strides of size-1 dims aside; else the pass
refuses), so every reader sees the same tensor. Runs where fuse_regions runs (elsewhere the new form is no fewer kernels), just
before it. Refuses, with the reason: halves that are not x's two halves, a cat not over the
last dim, cos/sin that do not have x's last dim, mixed dtypes, a result laid out otherwise.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from fxc import ir

from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten
END = 2**63 - 1  # slice's "to the end"


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    return run_rules(gm, [Rule("rotary", match, apply)], ctx)


def match(add: fx.Node, ctx: PassContext):
    """add(mul(x, cos), mul(rotate_half(x), sin)), either operand order at each op."""
    if not is_op(add, aten.add.Tensor) or len(add.args) != 2 or add.kwargs.get("alpha", 1) != 1:
        return None
    for m1, m2 in (add.args, add.args[::-1]):
        for rh, sin in _mul_operands(m2):
            if not is_op(rh, aten.cat.default):
                continue
            found = _rotate_half(rh)
            if isinstance(found, Refuse):
                return found
            x, h = found
            cos = _other(m1, x)
            if cos is None or cos is x:
                return Refuse(f"%{m1.name} does not multiply the rotated tensor %{x.name}")
            orders = (m1.args[0] is x, m2.args[0] is rh, add.args[0] is m1)
            why = _check(add, x, cos, sin, h, orders)
            return Refuse(why) if why else (add, m1, m2, rh, x, cos, sin, h)
    return None


def _mul_operands(m: fx.Node):
    if is_op(m, aten.mul.Tensor) and len(m.args) == 2 and all(isinstance(a, fx.Node) for a in m.args):
        yield m.args[0], m.args[1]
        yield m.args[1], m.args[0]


def _other(m: fx.Node, x: fx.Node) -> fx.Node | None:
    """The factor multiplying x in mul node m (x either side), else None."""
    for a, b in _mul_operands(m):
        if a is x:
            return b
    return None


def _last(node: fx.Node, dim: int) -> bool:
    v = ir.tensor_meta(node)
    return v is not None and dim in (-1, v.dim() - 1)


def _half(node: fx.Node):
    """(base, start, end) of slice(base, last dim, start, end, step 1), else None."""
    if not is_op(node, aten.slice.Tensor):
        return None
    a, kw = list(node.args), node.kwargs
    base = a[0]
    dim, start, end, step = (a[i] if len(a) > i else kw.get(k, d) for i, k, d in
                             ((1, "dim", 0), (2, "start", None), (3, "end", None), (4, "step", 1)))
    if step != 1 or not _last(base, dim):
        return None
    n = ir.tensor_meta(base).shape[-1]
    start = 0 if start is None else start
    end = n if end is None or (isinstance(end, int) and end > n) else end
    return (base, start, end) if all(isinstance(v, int) and v >= 0 for v in (start, end, n)) \
        else None


def _rotate_half(cat: fx.Node):
    """(x, h) when cat is cat([neg(x[..., h:]), x[..., :h]], -1), x the node both halves
    slice (or a slice of one base over [off, off + 2h)); else a Refuse."""
    parts, dim = (list(cat.args) + [0])[:2]
    if len(parts) != 2 or not _last(cat, dim):
        return Refuse("the cat is not two parts over the last dim")
    neg, first = parts
    if not is_op(neg, aten.neg.default):
        return Refuse("the cat's first part is not a negation")
    hi, lo = _half(neg.args[0]), _half(first)
    if hi is None or lo is None or hi[0] is not lo[0]:
        return Refuse("the halves are not slices of one tensor's last dim")
    base, (lo_s, lo_e), (hi_s, hi_e) = hi[0], lo[1:], hi[1:]
    h = lo_e - lo_s
    if h <= 0 or lo_e != hi_s or hi_e - hi_s != h:
        return Refuse(f"the halves [{lo_s}:{lo_e}] and [{hi_s}:{hi_e}] are not adjacent halves")
    if lo_s == 0 and ir.tensor_meta(base).shape[-1] == 2 * h:
        return base, h
    # partial rotary: x = base[..., lo_s:hi_e] is its own slice node beside the halves
    for user in base.users:
        s = _half(user)
        if s is not None and s[1:] == (lo_s, hi_e):
            return user, h
    return Refuse("no node holds the rotated span of the sliced tensor")


def _check(add, x, cos, sin, h, orders) -> str | None:
    xv, cv, sv, av = (ir.tensor_meta(n) for n in (x, cos, sin, add))
    if any(v is None for v in (xv, cv, sv, av)):
        return "an operand without meta"
    if not all(isinstance(n, int) for v in (xv, cv, sv) for n in (*v.shape, *v.stride())):
        return "a symbolic shape (the layout check needs sizes)"
    if len({xv.dtype, cv.dtype, sv.dtype, av.dtype}) != 1:
        return f"mixed dtypes {xv.dtype}, {cv.dtype}, {sv.dtype}"
    if cv.dim() == 0 or sv.dim() == 0 or cv.shape[-1] != 2 * h or sv.shape[-1] != 2 * h:
        return "cos or sin does not span the rotated last dim"
    if tuple(av.shape) != tuple(xv.shape):
        return "cos or sin broadcasts x to a larger shape"
    new = _new_layout(xv, cv, sv, h, orders)
    if new is None or any(n > 1 and a != b for n, a, b in zip(av.shape, av.stride(), new)):
        return "the split form would lay the result out otherwise (readers' views could break)"
    return None


def _in_order(a, b, first: bool):
    return (a, b) if first else (b, a)


def _new_layout(xv, cv, sv, h, orders) -> tuple | None:
    """The strides the rewritten result gets (the same ops in the same operand order on meta
    tensors: an elementwise op's output layout follows its operands in order), None if the
    final merge of [2, h] back into the last dim is not a view."""
    x_first, rot_first, m1_first = orders
    def meta(v):
        return torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="meta")

    def split(t):
        return t.view(*t.shape[:-1], 2, h)
    xs, cs, ss = split(meta(xv)), split(meta(cv)), split(meta(sv))
    first = torch.tensor([[True], [False]], device="meta")
    rot = torch.where(first, -xs[..., 1:2, :], xs[..., 0:1, :])
    a = torch.mul(*_in_order(xs, cs, x_first))
    b = torch.mul(*_in_order(rot, ss, rot_first))
    y2 = torch.add(*_in_order(a, b, m1_first))
    try:
        return tuple(y2.view(xv.shape).stride())
    except RuntimeError:
        return None


def _split(g: fx.Graph, node: fx.Node, h: int) -> fx.Node:
    shape = list(ir.tensor_meta(node).shape)
    return ir.new_call(g, aten.view.default, (node, shape[:-1] + [2, h]), like=node)


def apply(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    add, m1, m2, rh, x, cos, sin, h = m
    g = gm.graph
    first = ir.add_constant(gm, torch.tensor([[True], [False]], device=ir.tensor_meta(x).device),
                            "rotary_first", after=add.prev)
    with g.inserting_before(add):
        xs, cs, ss = (_split(g, n, h) for n in (x, cos, sin))
        x1 = ir.new_call(g, aten.slice.Tensor, (xs, -2, 0, 1), like=x)
        x2 = ir.new_call(g, aten.slice.Tensor, (xs, -2, 1, 2), like=x)
        neg = ir.new_call(g, aten.neg.default, (x2,), like=m2)
        rot = ir.new_call(g, aten.where.self, (first, neg, x1), like=m2)
        a = ir.new_call(g, aten.mul.Tensor, _mapped(m1, {x: xs, cos: cs}), like=m1)
        b = ir.new_call(g, aten.mul.Tensor, _mapped(m2, {rh: rot, sin: ss}), like=m2)
        y2 = ir.new_call(g, aten.add.Tensor, (a, b) if add.args[0] is m1 else (b, a), like=add)
        out = ir.new_call(g, aten.view.default, (y2, list(ir.tensor_meta(add).shape)), like=add)
    add.replace_all_uses_with(out)
    g.erase_node(add)
    return 1


def _mapped(mul: fx.Node, new: dict) -> tuple:
    """mul's two operands in their own order, each replaced by its split form (IEEE
    multiplication commutes, but keeping the order keeps the graph readable as written)."""
    return tuple(new[a] for a in mul.args)
