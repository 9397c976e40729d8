"""Fuse attention written out in ops into one aten.scaled_dot_product_attention.

    S = q @ k^T  [* c | / c]  [+ mask | masked_fill(cond, -inf)]
    P = softmax(S, -1)  [-> clone: eval dropout]
    O = P @ v                   -> SDPA(q, k, v, attn_mask, scale=c | 1/c | 1.0)

SDPA computes softmax(q @ k^T * scale + attn_mask) @ v, so the scale is the one constant the
scores are multiplied by (dividing by c gives scale = 1/c; no scaling gives scale = 1.0, not
SDPA's default 1/sqrt(E)). k^T is usually permute(k, last two swapped); another permute of a
tensor is composed with the swap, and any other k^T is transposed back with one permute.
An additive mask (float, the scores' dtype, broadcasting to the scores' shape: BERT's
extended mask, Llama's causal + padding mask) is passed as attn_mask. masked_fill(cond, -inf)
(nanoGPT's causal mask) becomes the bool mask SDPA reads as "keep": logical_not(cond);
where(keep, S, -inf) passes keep itself. A constant mask (a folded buffer) that keeps exactly
the causal lower triangle becomes is_causal=True. Eval dropout (a clone) and a cast between
the softmax and the second matmul are looked through (to refuse them with a reason).

Invariant: same function (numerics="fp32"), with one documented difference: a row whose every
key is masked with -inf gives NaN in the written form and 0 in SDPA (torch's math backend
uses a safe softmax since 2.5). Refusals, with the reason: the probabilities or the scores
have another user or are returned (output_attentions), softmax over another dim or in another
dtype (the half_to_float trick), a scale that is a tensor, a mask that is bool added as a
number, of another dtype, or that broadcasts the scores to a larger shape, masked_fill with a
finite value, q/k/v of different dtypes or batch shapes (GQA without repeat), ranks other than
3 and 4, and reduced-precision attention (SDPA rounds differently than the written form beyond
float16 tolerance: compile the float32 model with precision="fp16").
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.fx as fx

from fxc import ir

from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten
_MATMULS = (aten.matmul.default, aten.bmm.default)
_FP32 = (torch.float32, torch.float64)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    result = run_rules(gm, [Rule("attention", match, apply)], ctx)
    result.stats = {"sdpa": sum(1 for n in gm.graph.nodes
                                if is_op(n, aten.scaled_dot_product_attention.default))}
    return result


@dataclasses.dataclass
class Attention:
    out: fx.Node                    # P @ v: its users read the SDPA
    q: fx.Node
    k_from: fx.Node                 # the tensor k is derived from
    k_perm: list[int] | None        # permute(k_from, k_perm) is k; None: k_from is k
    v: fx.Node
    scale: float
    mask: fx.Node | None = None     # additive float mask, or bool "keep" mask when not negate
    negate: bool = False            # mask is masked_fill's cond: SDPA keeps logical_not(cond)
    causal: bool = False


def match(node: fx.Node, ctx: PassContext):
    if not is_op(node, *_MATMULS):
        return None
    p, v = node.args[:2]
    between, user = [], node  # eval-mode dropout (a clone), HF's cast back after softmax
    while len(between) < 2 and (_is_dropout(p) or is_op(p, aten._to_copy.default)):
        between.append((p, user))
        user, p = p, p.args[0]
    if not is_op(p, aten.softmax.int, aten._softmax.default):
        return None
    why = _softmax_problem(p, node) or _only_feeds(p, user, "attention probabilities")
    for n, n_user in between:
        why = why or _only_feeds(n, n_user, "attention probabilities")
    if why:
        return Refuse(why)
    chain = _scores(p)
    if chain is None:
        return Refuse("the scores are not q @ k^T (optionally scaled and masked)")
    if isinstance(chain, Refuse):  # (a Refuse is falsy: test its type, never its truth)
        return chain
    qk, scale, mask_op, scores_in, interior = chain
    for n, user in interior:
        if (why := _only_feeds(n, user, "scores")):
            return Refuse(why)
    att = _qkv(node, qk, v, scale)
    if isinstance(att, Refuse):
        return att
    if mask_op is not None:
        why = _mask(att, mask_op, scores_in, qk)
        if why:
            return Refuse(why)
    return att


def _is_dropout(n) -> bool:
    return is_op(n, aten.clone.default) and len(n.args) == 1 and \
        n.kwargs.get("memory_format") in (None, torch.contiguous_format, torch.preserve_format)


def _softmax_problem(sm: fx.Node, out: fx.Node) -> str | None:
    x = sm.args[0]
    xv, sv = ir.tensor_meta(x), ir.tensor_meta(sm)
    dim = sm.args[1] if len(sm.args) > 1 else sm.kwargs.get("dim")
    if xv is None or sv is None or dim is None:
        return "softmax without a known input"
    if int(dim) % xv.dim() != xv.dim() - 1:
        return f"softmax over dim {dim}, not the last of a {xv.dim()}-d tensor"
    if is_op(sm, aten._softmax.default) and sm.args[2]:
        return "softmax with half_to_float: computes in another dtype than the scores"
    if sv.dtype != xv.dtype:
        return f"softmax computes in {sv.dtype} on {xv.dtype} scores"
    if ir.tensor_meta(out) is None or ir.tensor_meta(out).dtype != xv.dtype:
        return "the attention output's dtype is not the scores'"
    if sv.dtype not in _FP32:
        return (f"attention in {str(sv.dtype).replace('torch.', '')}: SDPA rounds differently than "
                f"the written form (compile the float32 model with precision='fp16')")
    return None


def _only_feeds(n: fx.Node, user: fx.Node, what: str) -> str | None:
    """None when `user` is n's only reader; else why fusing would lose or recompute n."""
    if any(u.op == "output" for u in n.users):
        return f"the {what} %{n.name} are a graph output (output_attentions?)"
    others = [u for u in n.users if u is not user]
    if others:
        return f"the {what} %{n.name} are also used by %{others[0].name}"
    return None


def _scalar(a: Any) -> float | None:
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return float(a)
    return None


def _scores(sm: fx.Node):
    """Walk up from the softmax: [mask op] <- [scale] <- q @ k^T.

    Returns (qk matmul, scale, mask op or None, the mask op's scores input, [(node, its one
    allowed user)]); None when the input is not a scores chain at all; or Refuse."""
    s, user = sm.args[0], sm
    interior, mask_op, scores_in = [], None, None
    if is_op(s, aten.add.Tensor, *_WHERES):
        candidates = s.args[:2] if s.target is aten.add.Tensor else _where_args(s)[1:]
        inner = [a for a in candidates if _core(a) is not None]
        if not inner:
            return None
        interior.append((s, user))
        mask_op, scores_in, user, s = s, inner[0], s, inner[0]
    scale = 1.0
    if is_op(s, aten.mul.Tensor, aten.div.Tensor):
        first_is_node = isinstance(s.args[0], fx.Node)
        c = _scalar(s.args[1] if first_is_node else s.args[0])
        if c is None:
            return Refuse(f"the scores are scaled by a tensor (%{s.name}), not a constant")
        if s.target is aten.div.Tensor:
            if not first_is_node:
                return Refuse(f"%{s.name} divides a constant by the scores")
            c = 1.0 / c
        interior.append((s, user))
        user, s, scale = s, (s.args[0] if first_is_node else s.args[1]), c
    if not is_op(s, *_MATMULS):
        return None
    interior.append((s, user))
    return s, scale, mask_op, scores_in, interior


def _core(a: Any) -> fx.Node | None:
    """The q @ k^T under an optional scale (checked later: a tensor scale refuses), or None."""
    if is_op(a, aten.mul.Tensor, aten.div.Tensor):
        a = next((x for x in a.args[:2] if is_op(x, *_MATMULS)), None)
    return a if is_op(a, *_MATMULS) else None


def _qkv(out: fx.Node, qk: fx.Node, v: Any, scale: float) -> Attention | Refuse:
    q, kt = qk.args[:2]
    qv, ktv, vv = ir.tensor_meta(q), ir.tensor_meta(kt), ir.tensor_meta(v)
    if qv is None or ktv is None or vv is None:
        return Refuse("q, k or v has no tensor meta")
    if not (qv.dim() == ktv.dim() == vv.dim() and qv.dim() in (3, 4)):
        return Refuse(f"ranks q {qv.dim()}, k^T {ktv.dim()}, v {vv.dim()}: SDPA here takes "
                      f"three 3-d or 4-d tensors")
    if not (qv.shape[:-2] == ktv.shape[:-2] == vv.shape[:-2]):
        return Refuse(f"batch dims differ (q {list(qv.shape[:-2])}, k {list(ktv.shape[:-2])}, "
                      f"v {list(vv.shape[:-2])}): a broadcasting matmul (GQA without repeat?)")
    if qv.shape[-1] != ktv.shape[-2] or ktv.shape[-1] != vv.shape[-2]:
        return Refuse("q @ k^T @ v: inner dims do not chain")
    if not (qv.dtype == ktv.dtype == vv.dtype):
        return Refuse(f"q, k, v dtypes differ ({qv.dtype}, {ktv.dtype}, {vv.dtype})")
    if not math.isfinite(scale) or scale == 0.0:
        return Refuse(f"scale {scale} is not a finite nonzero number")
    nd = ktv.dim()
    swap = list(range(nd - 2)) + [nd - 1, nd - 2]
    if is_op(kt, aten.permute.default):
        perm = [int(p) % nd for p in kt.args[1]]
        composed = [perm[i] for i in swap]  # k = permute(kt, swap) = permute(base, perm∘swap)
        base = kt.args[0]
        k_from, k_perm = base, (None if composed == list(range(nd)) else composed)
    elif is_op(kt, aten.transpose.int) and \
            sorted(int(d) % nd for d in kt.args[1:3]) == [nd - 2, nd - 1]:
        k_from, k_perm = kt.args[0], None
    else:
        k_from, k_perm = kt, swap
    return Attention(out, q, k_from, k_perm, v, scale)


def _mask(att: Attention, op: fx.Node, scores_in: fx.Node, qk: fx.Node) -> str | None:
    """Fill att.mask from the add/where between the scores and the softmax; or why not."""
    sv = ir.tensor_meta(qk)
    if is_op(op, aten.add.Tensor):
        if op.kwargs.get("alpha", 1) != 1:
            return f"%{op.name} adds the mask times alpha"
        mask = op.args[1] if op.args[0] is scores_in else op.args[0]
        mv = ir.tensor_meta(mask)
        if mv is None:
            return f"%{op.name} adds a scalar to the scores"
        if mv.dtype == torch.bool:
            return f"%{op.name} adds a bool mask as a number (SDPA reads bool as keep)"
        if mv.dtype != sv.dtype:
            return f"the mask is {mv.dtype}, the scores {sv.dtype}"
        negate = False
    else:
        cond, a, b = _where_args(op)
        fill_first = b is scores_in
        fill = _fill_value(a if fill_first else b)
        if fill is None:
            return f"%{op.name} fills with a tensor, not a constant"
        if fill != float("-inf"):
            return f"%{op.name} fills with {fill:g}, not -inf: SDPA's bool mask means -inf"
        mask, mv, negate = cond, ir.tensor_meta(cond), fill_first
        if mv is None or mv.dtype != torch.bool:
            return f"%{op.name}: the condition is not a bool tensor"
    if torch.broadcast_shapes(tuple(mv.shape), tuple(sv.shape)) != tuple(sv.shape):
        return (f"the mask {list(mv.shape)} broadcasts the scores {list(sv.shape)} to a "
                f"larger shape")
    if ir.tensor_meta(op).dtype != sv.dtype:
        return f"%{op.name} changes the scores' dtype"
    att.mask, att.negate = mask, negate
    att.causal = _is_causal(mask, negate, sv)
    return None


_WHERES = (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.masked_fill.Scalar)


def _where_args(op: fx.Node) -> tuple:
    """(cond, a, b) of where(cond, a, b), any spelling; masked_fill(s, c, v) = where(c, v, s)."""
    if op.target is aten.masked_fill.Scalar:
        return op.args[1], op.args[2], op.args[0]
    return tuple(op.args[:3])


def _fill_value(n: Any) -> float | None:
    """The constant a masked_fill writes: a Python number, scalar_tensor(v), full([], v) or a
    0-d constant."""
    if _scalar(n) is not None:
        return _scalar(n)
    if is_op(n, aten.scalar_tensor.default):
        return _scalar(n.args[0])
    if is_op(n, aten.full.default) and list(n.args[0]) == []:
        return _scalar(n.args[1])
    t = _constant(n)
    if t is not None and t.dim() == 0 and t.is_floating_point():
        return float(t.item())
    return None


def _constant(n: Any) -> torch.Tensor | None:
    """The real tensor behind a get_attr node, or None."""
    if isinstance(n, fx.Node) and n.op == "get_attr":
        t = getattr(n.graph.owning_module, n.target, None)
        return t if isinstance(t, torch.Tensor) and not t.is_meta else None
    return None


def _is_causal(mask: fx.Node, negate: bool, scores) -> bool:
    """A constant mask that keeps exactly the lower triangle (SDPA's is_causal: top-left)."""
    t = _constant(mask)
    if t is None:
        return False
    lq, lk = scores.shape[-2], scores.shape[-1]
    if t.dtype == torch.bool:
        keep = ~t if negate else t
    elif t.is_floating_point():
        if not bool(((t == 0) | (t == float("-inf"))).all()):
            return False
        keep = t == 0
    else:
        return False
    tril = torch.ones(lq, lk, dtype=torch.bool, device=t.device).tril()
    return bool((torch.broadcast_to(keep, tuple(scores.shape)) == tril).all())


def apply(gm: fx.GraphModule, att: Attention, ctx: PassContext) -> int:
    g = gm.graph
    with g.inserting_before(att.out):
        k = att.k_from
        if att.k_perm is not None:
            k = ir.new_call(g, aten.permute.default, (k, att.k_perm), like=att.out)
        mask = None
        if att.mask is not None and not att.causal:
            mask = att.mask
            if att.negate:
                mask = ir.new_call(g, aten.logical_not.default, (mask,), like=att.out)
        new = ir.new_call(g, aten.scaled_dot_product_attention.default, (att.q, k, att.v),
                          {"attn_mask": mask, "dropout_p": 0.0, "is_causal": att.causal,
                           "scale": att.scale}, like=att.out)
    ov, nv = ir.tensor_meta(att.out), ir.tensor_meta(new)
    assert ov.shape == nv.shape and ov.dtype == nv.dtype, (ov.shape, nv.shape)
    att.out.replace_all_uses_with(new)
    return 1
