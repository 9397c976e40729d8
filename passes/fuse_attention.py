"""Fuse attention written out in ops into one aten.scaled_dot_product_attention.

    S = [q * a] @ [k * b]^T  [* c | / c]  {+ mask | masked_fill(cond, -inf) | view}*
    P = softmax(S, -1)  [-> clone: eval dropout]
    O = P @ v                   -> SDPA(q, k, v, attn_mask, scale=a*b*c | a*b/c | a*b)

and, on SDPA calls already in the graph (the model's own, HF's sdpa path):

    SDPA(q * a, k, v, scale=s)  -> SDPA(q, k, v, scale=a*s)        (Whisper scales q first)
    SDPA(q, repeat_kv(k), repeat_kv(v)) -> SDPA(q, k, v, enable_gqa=True)   (Llama, Qwen2: GQA)
                                     on CUDA in half without a mask, where flash attention
                                     reads the shared heads (elsewhere torch would repeat them)
    SDPA(..., attn_mask=constant) -> is_causal=True when it keeps exactly the lower triangle
                                     (Llama's folded causal mask: flash attention takes it),
                                     no mask when it keeps everything, else one float constant
                                     whose rows are 16-element aligned (see below)

SDPA computes softmax(q @ k^T * scale + attn_mask) @ v, so the scale is the one constant the
scores are multiplied by (dividing by c gives scale = 1/c; no scaling gives scale = 1.0, not
SDPA's default 1/sqrt(E)). k^T is usually permute(k, last two swapped); another permute of a
tensor is composed with the swap, and any other k^T is transposed back with one permute.
An additive mask (float, the scores' dtype, broadcasting to the scores' shape: BERT's
extended mask, Llama's causal + padding mask) is passed as attn_mask. masked_fill(cond, -inf)
(nanoGPT's causal mask) becomes the bool mask SDPA reads as "keep": logical_not(cond);
where(keep, S, -inf) passes keep itself. A constant mask (a folded buffer) that keeps exactly
the causal lower triangle becomes is_causal=True. Eval dropout (a clone) and a cast between
the softmax and the second matmul are looked through (to refuse them with a reason). A scalar
multiplying (or dividing) q or k before the matmul moves into the scale, also under views and
copies (HF's (q_proj(h) * scaling).view(...).transpose(1, 2): the view then reads q_proj(h)).
HF's eager masks write finfo(dtype).min, not -inf: for the causal test such values count as
-inf (every causal row keeps its diagonal, so their weights are exactly 0 either way).

Several masks, and views between them (torchvision Swin's shifted windows: S + bias, viewed
(B, nW, heads, N, N), + window mask, viewed back): when every mask is a constant (get_attr
through views; fold_constants makes Swin's bias and window mask constants), they are added up
at compile time into one float constant of the scores' shape, shrunk to size 1 along every
dim it does not vary on (Swin at batch 1: (nW, heads, N, N); batch B: B x that, up to
MASK_BYTES), 0/-inf only and the causal triangle: is_causal. Its rows are stored padded to 16
elements and read through a slice: the CUDA memory-efficient kernel wants the mask's strides
aligned and otherwise pads it on every call (N = 49 for Swin). Masks computed at run time are
combined with add / where nodes when no view separates them; between views they refuse.

Invariant: same function (numerics="fp32"), with one documented difference: a row whose every
key is masked with -inf gives NaN in the written form and 0 in SDPA (torch's math backend
uses a safe softmax since 2.5). Refusals, with the reason: the probabilities or the scores
have another user or are returned (output_attentions), softmax over another dim or in another
dtype (the half_to_float trick), a scale that is a tensor, a mask that is bool added as a
number, of another dtype, or that broadcasts the scores to a larger shape, masked_fill with a
finite value, q/k/v of different dtypes or batch shapes (GQA without repeat), ranks other than
3 and 4, and reduced-precision attention (SDPA rounds differently than the written form beyond
float16 tolerance: compile the float32 model with precision="fp16"), a mask computed at run
time between views of the scores, a constant mask over MASK_BYTES, a scale between masks.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.fx as fx

from fxc import ir

from . import sdpa_views
from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten
_MATMULS = (aten.matmul.default, aten.bmm.default)
_FP32 = (torch.float32, torch.float64)
_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)
# ops that only re-index a constant: a mask read through them is still a compile-time constant
_CONST_VIEWS = _VIEWS + (aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
                         aten.expand.default, aten.permute.default, aten.slice.Tensor,
                         aten.select.int, aten.clone.default, aten.alias.default)
MASK_BYTES = 256 << 20  # the largest combined constant mask the pass makes
ALIGN = 16  # a constant mask's rows are padded to this many elements (SDPA's aligned bias)
_MAX_STEPS = 8  # masks and views between the scores and the softmax


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    result = run_rules(gm, [Rule("attention", match, apply),
                            Rule("sdpa", match_sdpa, apply_sdpa)], ctx)
    # which kernel runs each SDPA may have changed: views of its output must hold for any
    reshaped = sdpa_views.fix(gm)
    result.stats = {"sdpa": sum(1 for n in gm.graph.nodes
                                if is_op(n, aten.scaled_dot_product_attention.default))}
    if reshaped:
        result.notes.append(f"{len(reshaped)} view(s) of an SDPA output became reshape: their "
                            f"input's layout depends on the attention kernel ({', '.join(reshaped[:3])})")
        result.stats["sdpa_views_reshaped"] = len(reshaped)
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
    const_mask: torch.Tensor | None = None  # several constant masks, added up now
    pieces: list = dataclasses.field(default_factory=list)  # run-time masks: (kind, node, negate)
    fixes: list = dataclasses.field(default_factory=list)  # _unscaled's rewirings, made by apply


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
    qk, scale, steps, interior = chain
    for n, user in interior:
        if (why := _only_feeds(n, user, "scores")):
            return Refuse(why)
    att = _qkv(node, qk, v, scale)
    if isinstance(att, Refuse):
        return att
    if steps:
        why = _masks(att, steps, qk, p)
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
    """Walk up from the softmax: {mask op | view}* <- [scale] <- q @ k^T.

    Returns (qk matmul, scale, steps from the matmul down: ("view", node) or ("mask", op,
    its scores input), [(node, its one allowed user)]); None when the input is not a scores
    chain at all; or Refuse."""
    s, user = sm.args[0], sm
    interior, steps = [], []
    while len(steps) <= _MAX_STEPS:
        if is_op(s, *_VIEWS) and _reaches_core(s.args[0]):
            steps.append(("view", s))
            interior.append((s, user))
            user, s = s, s.args[0]
        elif is_op(s, aten.add.Tensor, *_WHERES):
            candidates = s.args[:2] if s.target is aten.add.Tensor else _where_args(s)[1:]
            inner = [a for a in candidates if _reaches_core(a)]
            if not inner:
                return None
            steps.append(("mask", s, inner[0]))
            interior.append((s, user))
            user, s = s, inner[0]
        else:
            break
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
        if _reaches_core(s):
            return Refuse(f"%{s.name} scales the scores after a mask (or more than once)")
        return None
    interior.append((s, user))
    return s, scale, steps[::-1], interior


def _reaches_core(a: Any, depth: int = 0) -> bool:
    """a is q @ k^T under masks, views and a scale (what _scores walks), at most a few deep."""
    if _core(a) is not None:
        return True
    if depth > _MAX_STEPS or not isinstance(a, fx.Node):
        return False
    if is_op(a, *_VIEWS):
        return _reaches_core(a.args[0], depth + 1)
    if is_op(a, aten.add.Tensor):
        return any(_reaches_core(x, depth + 1) for x in a.args[:2])
    if is_op(a, *_WHERES):
        return any(_reaches_core(x, depth + 1) for x in _where_args(a)[1:])
    return False


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
    q, a, q_fix = _unscaled(q, qk)
    scale *= a
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
    k_fix = None
    if k_from is not kt and len(kt.users) == 1:  # k * b, then permuted: b moves to the scale
        k_from, b, k_fix = _unscaled(k_from, kt)
        scale *= b
    return Attention(out, q, k_from, k_perm, v, scale, fixes=[q_fix, k_fix])


_SCALE_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.permute.default,
                aten.transpose.int, aten.unsqueeze.default, aten.clone.default)


def _unscaled(x: Any, user: fx.Node) -> tuple[Any, float, tuple | None]:
    """x = y * c (or y / c), perhaps viewed (HF: (q_proj(h) * scaling).view(...).transpose(...)),
    read by `user` alone -> (what `user` reads without the product, c, the rewiring that
    drops it: (the first view, y) or None when x itself was the product); else (x, 1.0, None).
    A scalar product commutes with views and copies."""
    chain, n = [], x
    while is_op(n, *_SCALE_VIEWS) and len(chain) < 4 and len(n.users) == 1:
        chain.append(n)
        n = n.args[0]
    reader = chain[-1] if chain else user
    if not (is_op(n, aten.mul.Tensor, aten.div.Tensor) and len(n.users) == 1
            and next(iter(n.users)) is reader):
        return x, 1.0, None
    a, b = n.args[:2]
    found = None
    if n.target is aten.div.Tensor:
        c = _scalar(b)
        if isinstance(a, fx.Node) and c not in (None, 0.0):
            found = (a, 1.0 / c)
    else:
        for y, c in ((a, _scalar(b)), (b, _scalar(a))):
            if isinstance(y, fx.Node) and c is not None and c != 0.0 and math.isfinite(c):
                found = (y, c)
                break
    if found is None:
        return x, 1.0, None
    y, c = found
    yv, nv = ir.tensor_meta(y), ir.tensor_meta(n)
    if yv is None or nv is None or yv.dtype != nv.dtype or yv.shape != nv.shape or \
            (chain and yv.stride() != nv.stride()):
        return x, 1.0, None  # a view of y would not see what it saw of y * c
    if not chain:
        return y, c, None
    return x, c, (chain[-1], n, y, chain)


def _rewire(fix: tuple | None) -> None:
    """Apply _unscaled's rewiring: the first view reads y instead of y * c."""
    if fix is None:
        return
    first, product, y, chain = fix
    first.replace_input_with(product, y)
    for n in reversed(chain):
        ir.infer_node_meta(n)


def _masks(att: Attention, steps: list, qk: fx.Node, sm: fx.Node) -> str | None:
    """Fill att's mask from the masks and views between the scores and the softmax; or why not."""
    sv = ir.tensor_meta(qk)
    pieces, views = [], False
    for step in steps:
        if step[0] == "view":
            views = True
            continue
        _, op, scores_in = step
        piece = _mask_piece(op, scores_in, sv.dtype)
        if isinstance(piece, str):
            return piece
        pieces.append(piece)
    if tuple(ir.tensor_meta(sm.args[0]).shape) != tuple(sv.shape):
        return f"the scores reach the softmax as {list(ir.tensor_meta(sm.args[0]).shape)}, " \
               f"not as q @ k^T's {list(sv.shape)}"
    if not pieces:
        return None
    values = [_const_value(node) for _, node, _ in pieces]
    if all(t is not None for t in values):
        return _constant_mask(att, steps, values, sv)
    if views:
        return "a mask computed at run time is added between views of the scores"
    if len(pieces) == 1:
        _, att.mask, att.negate = pieces[0]
        return None
    att.pieces = pieces
    return None


def _mask_piece(op: fx.Node, scores_in: fx.Node, dtype) -> tuple | str:
    """One add/where between the scores and the softmax as ("add" | "keep", node, negate)."""
    sv = ir.tensor_meta(scores_in)
    if is_op(op, aten.add.Tensor):
        if op.kwargs.get("alpha", 1) != 1:
            return f"%{op.name} adds the mask times alpha"
        mask = op.args[1] if op.args[0] is scores_in else op.args[0]
        mv = ir.tensor_meta(mask)
        if mv is None:
            return f"%{op.name} adds a scalar to the scores"
        if mv.dtype == torch.bool:
            return f"%{op.name} adds a bool mask as a number (SDPA reads bool as keep)"
        if mv.dtype != dtype:
            return f"the mask is {mv.dtype}, the scores {dtype}"
        piece = ("add", mask, False)
    else:
        cond, a, b = _where_args(op)
        fill_first = b is scores_in
        fill = _fill_value(a if fill_first else b)
        if fill is None:
            return f"%{op.name} fills with a tensor, not a constant"
        if fill != float("-inf"):
            return f"%{op.name} fills with {fill:g}, not -inf: SDPA's bool mask means -inf"
        mv = ir.tensor_meta(cond)
        if mv is None or mv.dtype != torch.bool:
            return f"%{op.name}: the condition is not a bool tensor"
        piece = ("keep", cond, fill_first)
    if torch.broadcast_shapes(tuple(mv.shape), tuple(sv.shape)) != tuple(sv.shape):
        return (f"the mask {list(mv.shape)} broadcasts the scores {list(sv.shape)} to a "
                f"larger shape")
    if ir.tensor_meta(op).dtype != dtype:
        return f"%{op.name} changes the scores' dtype"
    return piece


def _constant_mask(att: Attention, steps: list, values: list, sv) -> str | None:
    """Every mask is a constant: add them up now, through the views, as SDPA will read them.
    Scores of a symbolic size (dynamic_shapes): a constant cannot vary along a symbolic dim, so
    the sum is made at size 1 there and SDPA broadcasts it; a constant that is not size 1 along
    one, or views between the masks, refuse."""
    shape = tuple(sv.shape)
    if not all(isinstance(d, int) for d in shape):
        why = _symbolic_problem(steps, values, shape)
        if why:
            return why
        shape = tuple(d if isinstance(d, int) else 1 for d in shape)
    it = iter(values)
    z = torch.zeros(shape, dtype=sv.dtype, device=values[0].device)
    with torch.no_grad():
        for step in steps:
            if step[0] == "view":
                z = z.reshape(tuple(ir.tensor_meta(step[1]).shape))
                continue
            t = next(it)
            kind, _, negate = _mask_piece(step[1], step[2], sv.dtype)
            if kind == "add":
                z = z + t.to(z.device)
            else:
                keep = ~t if negate else t
                z = z.masked_fill(~keep.to(z.device), float("-inf"))
    z = z.reshape(shape)
    if z.shape == tuple(sv.shape) and _keeps_causal(z, sv.shape):
        att.causal = True
    elif not bool((z == 0).all()):
        z = _shrink(z)
        if z.numel() * z.element_size() > MASK_BYTES:
            return (f"the masks add up to a constant of {z.numel() * z.element_size() / 2**20:.0f} "
                    f"MiB, over MASK_BYTES")
        att.const_mask = z
    return None


def _symbolic_problem(steps: list, values: list, shape: tuple) -> str | None:
    """Why constant masks cannot be summed at size 1 along the scores' symbolic dims."""
    if any(step[0] == "view" for step in steps):
        return "views between constant masks of scores with a symbolic size"
    for t in values:
        for d in range(1, t.dim() + 1):  # aligned from the right, as broadcasting does
            if d <= len(shape) and not isinstance(shape[-d], int) and t.shape[-d] != 1:
                return (f"a constant mask {list(t.shape)} varies along a symbolic dim of the "
                        f"scores {list(shape)}")
    return None


def _shrink(z: torch.Tensor) -> torch.Tensor:
    """z as small as broadcasting allows: size 1 along every dim it does not vary on."""
    for d in range(z.dim()):
        if z.shape[d] > 1 and bool((z == z.narrow(d, 0, 1)).all()):
            z = z.narrow(d, 0, 1)
    return z.contiguous()


def _keeps_causal(z: torch.Tensor, shape) -> bool:
    """An additive mask of 0 / -inf only that keeps exactly the lower triangle (top-left) of
    scores of `shape`. HF's eager masks write finfo(dtype).min for -inf: a key at min has weight
    exactly 0 after the softmax as long as its row keeps a key (a causal row keeps its diagonal),
    so values at or below half of finfo.min count as -inf here."""
    if not all(isinstance(d, int) for d in shape[-2:]):
        return False  # a symbolic query/key length: no one constant is its triangle
    # a symbolic leading dim (the batch): the constant is size 1 there, the test per slice
    shape = tuple(d if isinstance(d, int) else 1 for d in shape)
    z = torch.where(z <= torch.finfo(z.dtype).min / 2, float("-inf"), z)
    if not bool(((z == 0) | (z == float("-inf"))).all()):
        return False
    tril = torch.ones(shape[-2], shape[-1], dtype=torch.bool, device=z.device).tril()
    try:
        return bool((torch.broadcast_to(z == 0, shape) == tril).all())
    except RuntimeError:  # z is larger than size 1 along a symbolic dim
        return False


def _const_value(n: Any) -> torch.Tensor | None:
    """The value of a constant read through view-like ops (unsqueeze, expand, ...), or None."""
    chain = []
    while is_op(n, *_CONST_VIEWS) and len(chain) < 8:
        chain.append(n)
        n = n.args[0]
    t = _constant(n)
    if t is None:
        return None
    with torch.no_grad():
        for c in reversed(chain):
            args = [t] + list(c.args[1:])
            t = c.target(*args, **c.kwargs)
    return t


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


def apply(gm: fx.GraphModule, att: Attention, ctx: PassContext) -> int:
    g = gm.graph
    for fix in att.fixes:
        _rewire(fix)
    with g.inserting_before(att.out):
        k = att.k_from
        if att.k_perm is not None:
            k = ir.new_call(g, aten.permute.default, (k, att.k_perm), like=att.out)
        mask = None
        if att.const_mask is not None:
            mask = _aligned_constant(gm, att.const_mask, att.out)
        elif att.pieces:
            mask = _combine(g, att.pieces, att.out)
        elif att.mask is not None and not att.causal:
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


def _aligned_constant(gm: fx.GraphModule, z: torch.Tensor, before: fx.Node) -> fx.Node:
    """z as a new constant whose rows are padded to ALIGN elements, read through a slice (the
    insert point is the caller's: before `before`)."""
    n = z.shape[-1]
    if n % ALIGN == 0:
        return ir.add_constant(gm, z, "attention_mask", after=before.prev)
    padded = z.new_zeros(*z.shape[:-1], -(-n // ALIGN) * ALIGN)
    padded[..., :n] = z
    const = ir.add_constant(gm, padded, "attention_mask", after=before.prev)
    return ir.new_call(gm.graph, aten.slice.Tensor, (const, -1, 0, n), like=before)


def _combine(g: fx.Graph, pieces: list, like: fx.Node) -> fx.Node:
    """Run-time masks as one: the additive ones summed, then -inf where a bool keeps nothing
    (adding and filling with -inf commute), or the bool masks and-ed when none is additive."""
    acc = None
    for kind, node, _ in pieces:
        if kind == "add":
            acc = node if acc is None else ir.new_call(g, aten.add.Tensor, (acc, node), like=like)
    for kind, node, negate in pieces:
        if kind != "keep":
            continue
        keep = ir.new_call(g, aten.logical_not.default, (node,), like=like) if negate else node
        if acc is None:
            acc = keep
        elif ir.tensor_meta(acc).dtype == torch.bool:
            acc = ir.new_call(g, aten.logical_and.default, (acc, keep), like=like)
        else:
            acc = ir.new_call(g, aten.where.ScalarOther, (keep, acc, float("-inf")), like=like)
    return acc


# -- SDPA calls already in the graph ------------------------------------------------------------

@dataclasses.dataclass
class SdpaMatch:
    node: fx.Node
    q: Any
    k: Any
    scale: float
    mask: str               # "keep": as it is; "none", "causal", "constant"
    fixes: list = dataclasses.field(default_factory=list)
    const_mask: torch.Tensor | None = None
    gqa: tuple | None = None  # (k, v) before repeat_kv: SDPA(..., enable_gqa=True) reads them


def match_sdpa(node: fx.Node, ctx: PassContext):
    if not is_op(node, aten.scaled_dot_product_attention.default):
        return None
    args = dict(zip(("query", "key", "value", "attn_mask", "dropout_p", "is_causal"), node.args))
    args.update(node.kwargs)
    if args.get("dropout_p", 0.0) or args.get("enable_gqa", False):
        return None
    q, k = args["query"], args["key"]
    qv = ir.tensor_meta(q)
    if qv is None:
        return None
    scale = args.get("scale")
    scale = 1.0 / math.sqrt(qv.shape[-1]) if scale is None else float(scale)
    q2, a, q_fix = _unscaled(q, node)
    k2, b, k_fix = _unscaled(k, node)
    m = SdpaMatch(node, q2, k2, scale * a * b, "keep", fixes=[q_fix, k_fix])
    mask = args.get("attn_mask")
    if mask is not None and not args.get("is_causal", False):
        t = _const_value(mask)
        sv = ir.tensor_meta(node)
        if t is not None and sv is not None and t.dim() >= 1:
            scores = torch.Size(list(sv.shape[:-1]) + [ir.tensor_meta(k).shape[-2]])
            z = torch.zeros((), dtype=qv.dtype, device=t.device).masked_fill(~t, float("-inf")) \
                if t.dtype == torch.bool else t.to(qv.dtype)
            if torch.broadcast_shapes(tuple(z.shape), tuple(scores)) == tuple(scores):
                if _keeps_causal(z, scores):
                    m.mask = "causal"
                elif bool((z == 0).all()):
                    m.mask = "none"
                elif t.dtype == torch.bool or not _aligned(mask):
                    m.mask, m.const_mask = "constant", _shrink(z)
    no_mask = m.mask in ("none", "causal") or mask is None or args.get("is_causal", False)
    if no_mask and _gqa_kernel(ctx, qv):
        kx, vx = _repeated_kv(k), _repeated_kv(args["value"])
        if kx and vx and kx[1] == vx[1] and m.k is k:
            m.gqa = (kx[0], vx[0])
    if m.mask == "keep" and a == b == 1.0 and m.gqa is None:
        return None
    return m


def _gqa_kernel(ctx: PassContext, qv) -> bool:
    """SDPA's enable_gqa has a kernel (flash attention: CUDA, half, head dim <= 256, no mask);
    elsewhere torch repeats k and v itself, and the memory-efficient kernel would be lost."""
    o = ctx.options
    return o.device.type == "cuda" and o.precision in ("fp16", "bf16") and qv.shape[-1] <= 256


def _repeated_kv(n: Any) -> tuple[fx.Node, int] | None:
    """n = HF's repeat_kv(x, r): view(clone(expand(unsqueeze(x, 2), (B, H, r, S, D))),
    (B, H * r, S, D)) -> (x, r)."""
    if not is_op(n, aten.view.default, aten._unsafe_view.default):
        return None
    c = n.args[0]
    if not is_op(c, aten.clone.default):
        return None
    e = c.args[0]
    if not is_op(e, aten.expand.default):
        return None
    u = e.args[0]
    if not is_op(u, aten.unsqueeze.default) or int(u.args[1]) % 5 != 2:
        return None
    x = u.args[0]
    xv, nv = ir.tensor_meta(x), ir.tensor_meta(n)
    if xv is None or nv is None or xv.dim() != 4 or nv.dim() != 4:
        return None
    r = nv.shape[1] // xv.shape[1]
    if r < 2 or list(ir.tensor_meta(e).shape) != [xv.shape[0], xv.shape[1], r, *xv.shape[2:]] \
            or list(nv.shape) != [xv.shape[0], xv.shape[1] * r, *xv.shape[2:]]:
        return None
    return x, r


def _aligned(n: fx.Node) -> bool:
    """Every stride but the last is a multiple of ALIGN (size-1 dims aside)."""
    v = ir.tensor_meta(n)
    return all(v.stride(d) % ALIGN == 0 or v.shape[d] == 1 for d in range(v.dim() - 1))


def apply_sdpa(gm: fx.GraphModule, m: SdpaMatch, ctx: PassContext) -> int:
    node, g = m.node, gm.graph
    for fix in m.fixes:
        _rewire(fix)
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    kwargs = dict(zip(names[3:], node.args[3:]))
    kwargs.update(node.kwargs)
    kwargs["scale"] = m.scale
    with g.inserting_before(node):
        if m.mask == "causal":
            kwargs["attn_mask"], kwargs["is_causal"] = None, True
        elif m.mask == "none":
            kwargs["attn_mask"] = None
        elif m.mask == "constant":
            kwargs["attn_mask"] = _aligned_constant(gm, m.const_mask, node)
    k, v = m.gqa if m.gqa is not None else (m.k, node.args[2])
    if m.gqa is not None:
        kwargs["enable_gqa"] = True
    node.args = (m.q, k, v)
    node.kwargs = kwargs
    ir.infer_node_meta(node)
    return 1
