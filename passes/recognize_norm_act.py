"""Recognize layer norm, RMS norm, GELU and SiLU written out in primitives as the single op.

    LN   (x - m) * rsqrt(var + eps) [* w] [+ b],  m = mean(x, D), var = mean((x - m)^2, D)
                                 -> aten.layer_norm(x, shape, w, b, eps)
    RMS  x * rsqrt(mean(x^2, D) + eps) [* w]      -> aten.rms_norm(x, shape, w, eps)
    GELU 0.5 * x * (1 + erf(x / sqrt(2)))         -> aten.gelu(x)
         0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
                                                  -> aten.gelu(x, approximate="tanh")
    SiLU x * sigmoid(x)                           -> aten.silu(x)
    layer scale  linear(x, W, b) [-> permute] [-> clone] * g
                                                  -> linear(x, W * g[:, None], b * g) ...

Layer scale (timm's ConvNeXt/ViT LayerScale `x * gamma`, torchvision CNBlock's `layer_scale *
block(x)` after its permute back) multiplies a linear's output features by a constant vector
g: folded into the weight and bias at compile time (constants only, read by nothing else), it
is one elementwise kernel a block less. The permute may sit between them when g varies along
the dim the linear's features land on.

D is the last dim(s), reduced with keepdim. The variance may also be var(x, D, correction=0),
var_mean, pow(d, 2) or d * d; 1/std may be rsqrt(v), pow(v, -0.5), reciprocal(sqrt(v)) or a
division by sqrt(v). Products are read as flat factor lists and the erf/tanh arguments as
polynomials in x, so association and constant placement do not matter (x * 0.5 * ...,
HF's NewGELUActivation and FastGELU's x * c * (1 + 0.044715 * x * x) all match); constants are
compared with a relative tolerance of 1e-6 (graphs hold 0.7978845608 and the like).

RMS norm (Llama writes x.to(float32) ... .to(input_dtype) * w): aten.rms_norm exists since
torch 2.4 and computes rsqrt(mean(x^2) + eps) in float32 (opmath) for float16/bfloat16 input,
casts back, then multiplies the weight: the Llama function. In float32 it is bitwise equal to
the written form on CPU with torch 2.11 and 2.13 (test_rms_norm_is_bitwise_in_float32); with
the float16/bfloat16 round trip it differs by at most one rounding of the output (within that
dtype's tolerance).

Invariant: the graph computes the same function, rounded differently at float32 level
(numerics="fp32"). Only arithmetic in float32/float64 is recognized: the fused ops round once
where the written form rounds at every step, and in float16 that difference exceeds float16
tolerance (compile the float32 model with precision="fp16" instead). Refusals, with the reason:
an intermediate with another user or returned by the graph (the mean reused, say), a
reduction over a dim that is not the last, no keepdim, eps that is not a Python scalar,
constants that are not GELU's, a reduced-precision pattern.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import operator
from typing import Any

import torch
import torch.fx as fx

from fxc import ir

from .dce import drop_unused_attributes
from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten
_FP32 = (torch.float32, torch.float64)
_getitem = operator.getitem
_REL_TOL = 1e-6


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    before = _census(gm)
    result = run_rules(gm, [Rule("norm", match_norm, apply_norm),
                            Rule("gelu", match_gelu, apply_act),
                            Rule("silu", match_silu, apply_act),
                            Rule("layer_scale", match_layer_scale, apply_layer_scale)], ctx)
    after = _census(gm)
    result.stats = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    scaled = sum(int(n.split(" x")[1]) for n in result.notes if n.startswith("layer_scale x"))
    if scaled:
        result.stats["layer_scale"] = scaled
        drop_unused_attributes(gm)  # the weights and biases the scaled copies replaced
    return result


def _census(gm: fx.GraphModule) -> collections.Counter:
    """How many of each recognized op the graph holds (gelu split by approximation)."""
    c = collections.Counter({"layer_norm": 0, "rms_norm": 0, "gelu": 0, "gelu_tanh": 0, "silu": 0})
    for n in gm.graph.nodes:
        if is_op(n, aten.layer_norm.default):
            c["layer_norm"] += 1
        elif is_op(n, aten.rms_norm.default):
            c["rms_norm"] += 1
        elif is_op(n, aten.gelu.default):
            c["gelu_tanh" if n.kwargs.get("approximate", "none") == "tanh" else "gelu"] += 1
        elif is_op(n, aten.silu.default):
            c["silu"] += 1
    return c


# -- small helpers ------------------------------------------------------------------------------

def _scalar(a: Any) -> float | None:
    """A Python number argument as a float (bools are not numbers here)."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return float(a)
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12)


def _val(n: Any) -> torch.Tensor | None:
    return ir.tensor_meta(n) if isinstance(n, fx.Node) else None


def _escape(interior: set, root: fx.Node) -> str | None:
    """Why not, when a node inside the pattern is read from outside it: fusing would make the
    graph compute that value twice (or lose a value the graph returns)."""
    for n in sorted(interior, key=lambda n: n.name):
        for u in n.users:
            if u.op == "output":
                return f"%{n.name} inside the pattern is a graph output"
            if u not in interior and u is not root:
                return f"%{n.name} inside the pattern is also used by %{u.name}"
    return None


def _low_precision(root: fx.Node, what: str) -> str | None:
    v = _val(root)
    if v is None or v.dtype not in _FP32:
        dt = str(v.dtype).replace("torch.", "") if v is not None else "?"
        return (f"{what} computes in {dt}: the fused op rounds once in float32, the written "
                f"form at every step (differs beyond {dt} tolerance)")
    return None


# -- rule 1: layer norm and RMS norm --------------------------------------------------------------

@dataclasses.dataclass
class NormMatch:
    kind: str                  # "layer_norm" or "rms_norm"
    x: fx.Node                 # the input of the fused op
    shape: list[int]           # normalized_shape
    eps: float
    weight: fx.Node | None
    bias: fx.Node | None
    out: fx.Node               # the last node of the pattern: its users read the fused op


def _inv_std(node: Any) -> tuple[fx.Node, list[fx.Node]] | None:
    """node = 1/sqrt(a) in one of its spellings -> (a, the nodes that spell it)."""
    if is_op(node, aten.mul.Tensor) and _scalar(node.args[1]) == 1.0:  # 1 / sqrt(a) = recip * 1
        inner = _inv_std(node.args[0])
        return (inner[0], inner[1] + [node]) if inner else None
    if is_op(node, aten.rsqrt.default):
        return node.args[0], [node]
    if is_op(node, aten.pow.Tensor_Scalar) and _scalar(node.args[1]) == -0.5:
        return node.args[0], [node]
    if is_op(node, aten.reciprocal.default) and is_op(node.args[0], aten.sqrt.default):
        return node.args[0].args[0], [node, node.args[0]]
    return None


def _split_normalize(n: fx.Node) -> tuple[fx.Node, fx.Node, list[fx.Node]] | None:
    """n = d * inv_std(a) or d / sqrt(a) -> (d, a, the inv_std nodes)."""
    if is_op(n, aten.mul.Tensor) and all(isinstance(a, fx.Node) for a in n.args[:2]):
        for d, r in (n.args[:2], n.args[1::-1]):
            got = _inv_std(r)
            if got:
                return d, got[0], got[1]
    if is_op(n, aten.div.Tensor) and is_op(n.args[1], aten.sqrt.default):
        return n.args[0], n.args[1].args[0], [n.args[1]]
    return None


def _is_reduction(n: Any) -> bool:
    return (is_op(n, aten.mean.dim, aten.var.correction)
            or (is_op(n, _getitem) and is_op(n.args[0], aten.var_mean.correction)))


def _last_dims(red: fx.Node, x: fx.Node) -> list[int] | Refuse:
    """The normalized_shape of a reduction over x's trailing dims with keepdim, or why not."""
    if is_op(red, _getitem):
        red = red.args[0]
    dims = red.args[1] if len(red.args) > 1 else red.kwargs.get("dim")
    keepdim = red.kwargs.get("keepdim", False)
    if is_op(red, aten.mean.dim) and len(red.args) > 2:
        keepdim = red.args[2]
    if is_op(red, aten.mean.dim) and red.kwargs.get("dtype") is not None:
        return Refuse(f"%{red.name} reduces in another dtype")
    xv = _val(x)
    if xv is None or dims is None:
        return Refuse(f"%{red.name} reduces over all dims")
    if not keepdim:
        return Refuse(f"%{red.name} reduces without keepdim")
    nd = xv.dim()
    norm = sorted(int(d) % nd for d in dims)
    if not norm or norm != list(range(nd - len(norm), nd)):
        return Refuse(f"%{red.name} reduces over dims {list(dims)}, not the last dim(s) of a "
                      f"{nd}-d tensor")
    return [int(s) for s in xv.shape[nd - len(norm):]]


def _same_value(a: Any, b: Any) -> bool:
    """a and b compute the same value: the same node, or twin nodes (Python's `(x - m)` written
    twice gives two sub nodes with the same inputs)."""
    if a is b:
        return True
    return (isinstance(a, fx.Node) and isinstance(b, fx.Node) and a.op == b.op == "call_function"
            and a.target == b.target and a.args == b.args and a.kwargs == b.kwargs
            and not a.is_impure())


def _centered(d: Any) -> tuple[fx.Node, fx.Node] | None:
    """d = x - mean(x, D) -> (x, the mean node)."""
    if not is_op(d, aten.sub.Tensor) or d.kwargs.get("alpha", 1) != 1:
        return None
    x, m = d.args[:2]
    if isinstance(m, fx.Node) and is_op(m, aten.mean.dim) and m.args[0] is x:
        return x, m
    if is_op(m, _getitem) and m.args[1] == 1 and is_op(m.args[0], aten.var_mean.correction) \
            and m.args[0].args[0] is x:
        return x, m
    return None


def _variance(v: fx.Node) -> tuple[fx.Node, str, list[fx.Node]] | Refuse | None:
    """v = mean(y^2) -> (y, 'square'); v = var(x, correction=0) -> (x, 'var')."""
    if is_op(v, aten.mean.dim):
        sq = v.args[0]
        if is_op(sq, aten.pow.Tensor_Scalar) and _scalar(sq.args[1]) == 2.0:
            return sq.args[0], "square", [sq]
        if is_op(sq, aten.mul.Tensor) and _same_value(sq.args[0], sq.args[1]):
            extra = [sq.args[1]] if sq.args[1] is not sq.args[0] else []
            return sq.args[0], "square", [sq] + extra
        return None
    red = v.args[0] if is_op(v, _getitem) else v
    if is_op(v, _getitem) and v.args[1] != 0:
        return None
    correction = red.kwargs.get("correction")
    if correction != 0:
        return Refuse(f"%{red.name} is the unbiased variance (correction="
                      f"{1 if correction is None else correction}); layer_norm divides by n")
    return red.args[0], "var", ([red] if red is not v else [])


def match_norm(n: fx.Node, ctx: PassContext):
    parts = _split_normalize(n)
    if parts is None:
        return None
    d, a, inv_nodes = parts
    # a = v + eps (eps a Python scalar), or v alone (eps = 0)
    if is_op(a, aten.add.Tensor, aten.add.Scalar) and a.kwargs.get("alpha", 1) == 1:
        red = next((x for x in a.args[:2] if _is_reduction(x)), None)
        if red is None:
            return None
        other = a.args[1] if a.args[0] is red else a.args[0]
        eps = _scalar(other)
        if eps is None:
            what = ir.op_name(other) if isinstance(other, fx.Node) else repr(other)
            return Refuse(f"eps of %{a.name} is {what}, not a Python scalar")
        add_nodes = [a]
    elif _is_reduction(a):
        red, eps, add_nodes = a, 0.0, []
    else:
        return None
    var = _variance(red)
    if not var:
        return var  # None (no norm here) or Refuse
    y, how, var_nodes = var
    shape = _last_dims(red, y)
    if isinstance(shape, Refuse):
        return shape
    interior = set(inv_nodes + add_nodes + var_nodes + [red])
    if how == "var":  # var(x) pairs only with d = x - mean(x)
        c = _centered(d)
        if c is None or c[0] is not y:
            return Refuse(f"%{n.name} divides by std(%{y.name}) but does not center it")
        x, m = c
        kind, interior = "layer_norm", interior | {d, m}
    else:
        if not _same_value(y, d):
            return None  # the scale is not the rms of what it scales: not a norm
        c = _centered(d)
        if c is not None:
            x, m = c
            kind, interior = "layer_norm", interior | {d, y, m}
        else:
            x, kind = d, "rms_norm"
            if y is not d:
                interior.add(y)
    if kind == "layer_norm":
        mshape = _last_dims(m, x)
        if isinstance(mshape, Refuse):
            return mshape
        if mshape != shape:
            return Refuse(f"the mean %{m.name} and the variance %{red.name} reduce over "
                          f"different dims")
    if (why := _low_precision(n, kind)):
        return Refuse(why)
    if (why := _escape(interior, n)):
        return Refuse(why)
    return _extend(NormMatch(kind, x, shape, eps, None, None, n))


def _extend(m: NormMatch) -> NormMatch:
    """Grow the match down the graph: Llama's float32 round trip, then * weight (+ bias)."""
    out, start = m.out, m.out
    if m.kind == "rms_norm" and _is_cast(m.x):
        src, users = m.x.args[0], list(out.users)
        down = users[0] if len(users) == 1 else None
        if (_val(src).dtype in (torch.float16, torch.bfloat16) and _val(m.x).dtype == torch.float32
                and _is_cast(down) and _val(down).dtype == _val(src).dtype and not _is_out(out)):
            m.x, out = src, down  # rms_norm(src) upcasts to float32 internally, as Llama does
    m.weight = _affine(out, aten.mul.Tensor, m.shape, start)
    if m.weight is not None:
        out = next(iter(out.users))
    if m.kind == "layer_norm":
        m.bias = _affine(out, aten.add.Tensor, m.shape, start)
        if m.bias is not None:
            out = next(iter(out.users))
    m.out = out
    return m


def _affine(out: fx.Node, target, shape: list[int], start: fx.Node) -> fx.Node | None:
    """The weight (mul) or bias (add) that `out`'s only user applies, when the fused op can
    take it: a tensor of exactly normalized_shape and out's dtype, defined before the norm."""
    users = list(out.users)
    if len(users) != 1 or _is_out(out) or not is_op(users[0], target) \
            or users[0].kwargs.get("alpha", 1) != 1:
        return None
    u = users[0]
    p = u.args[1] if u.args[0] is out else u.args[0]
    pv, ov, uv = _val(p), _val(out), _val(u)
    if p is out or pv is None or list(pv.shape) != shape or pv.dtype != ov.dtype \
            or uv.dtype != ov.dtype:
        return None
    if p.op not in ("get_attr", "placeholder") and not _precedes(p, start):
        return None  # computed after the norm (maybe from it): it cannot be the op's argument
    return p


def _is_cast(n: Any) -> bool:
    """A pure dtype conversion: _to_copy with a dtype and nothing else that matters."""
    if not is_op(n, aten._to_copy.default) or "dtype" not in n.kwargs:
        return False
    extra = {k: v for k, v in n.kwargs.items() if k not in ("dtype", "layout", "device")}
    src = _val(n.args[0])
    return (not extra and src is not None and n.kwargs.get("device", src.device) == src.device
            and n.kwargs.get("layout", torch.strided) == torch.strided)


def _precedes(p: fx.Node, n: fx.Node) -> bool:
    """p comes before n in the graph's order (so it cannot depend on n)."""
    cur = n.prev
    while cur.op != "root":
        if cur is p:
            return True
        cur = cur.prev
    return False


def _is_out(n: fx.Node) -> bool:
    return any(u.op == "output" for u in n.users)


def apply_norm(gm: fx.GraphModule, m: NormMatch, ctx: PassContext) -> int:
    with gm.graph.inserting_before(m.out):
        if m.kind == "layer_norm":
            new = ir.new_call(gm.graph, aten.layer_norm.default,
                              (m.x, m.shape, m.weight, m.bias, m.eps), like=m.out)
        else:
            new = ir.new_call(gm.graph, aten.rms_norm.default, (m.x, m.shape, m.weight, m.eps),
                              like=m.out)
    m.out.replace_all_uses_with(new)
    return 1


# -- rule 2: GELU -----------------------------------------------------------------------------

def _factors(n: Any, interior: set, root: bool = True) -> tuple[float, list]:
    """A product of single-use mul / div-by-scalar nodes as (constant, tensor factors)."""
    if isinstance(n, fx.Node) and (root or len(n.users) == 1):
        if is_op(n, aten.mul.Tensor):
            interior.add(n)
            c1, f1 = _factors(n.args[0], interior, False)
            c2, f2 = _factors(n.args[1], interior, False)
            return c1 * c2, f1 + f2
        if is_op(n, aten.div.Tensor) and _scalar(n.args[1]) not in (None, 0.0):
            interior.add(n)
            c, f = _factors(n.args[0], interior, False)
            return c / _scalar(n.args[1]), f
    s = _scalar(n)
    return (s, []) if s is not None else (1.0, [n])


def _poly(n: Any, x: fx.Node, interior: set, depth: int = 0) -> dict[int, float] | None:
    """n as a polynomial in x ({degree: coefficient}), through add/sub/mul/div-by-scalar/
    pow-by-small-int/neg nodes; None when it is not one."""
    if n is x:
        return {1: 1.0}
    s = _scalar(n)
    if s is not None:
        return {0: s}
    if not isinstance(n, fx.Node) or n.op != "call_function" or depth > 12:
        return None
    args, r = n.args, None
    if is_op(n, aten.mul.Tensor):
        a, b = (_poly(v, x, interior, depth + 1) for v in args[:2])
        r = _pmul(a, b) if a is not None and b is not None else None
    elif is_op(n, aten.add.Tensor, aten.sub.Tensor):
        a, b = (_poly(v, x, interior, depth + 1) for v in args[:2])
        sign = (1.0 if n.target is aten.add.Tensor else -1.0) * float(n.kwargs.get("alpha", 1))
        if a is not None and b is not None:
            r = dict(a)
            for k, c in b.items():
                r[k] = r.get(k, 0.0) + sign * c
    elif is_op(n, aten.div.Tensor) and _scalar(args[1]) not in (None, 0.0):
        a = _poly(args[0], x, interior, depth + 1)
        r = {k: c / _scalar(args[1]) for k, c in a.items()} if a is not None else None
    elif is_op(n, aten.pow.Tensor_Scalar) and _scalar(args[1]) in (1.0, 2.0, 3.0, 4.0):
        a = _poly(args[0], x, interior, depth + 1)
        r = {0: 1.0} if a is not None else None
        for _ in range(int(args[1]) if a is not None else 0):
            r = _pmul(r, a)
    elif is_op(n, aten.neg.default):
        a = _poly(args[0], x, interior, depth + 1)
        r = {k: -c for k, c in a.items()} if a is not None else None
    if r is not None:
        interior.add(n)
    return r


def _pmul(a: dict, b: dict) -> dict:
    out: dict[int, float] = {}
    for i, ca in a.items():
        for j, cb in b.items():
            out[i + j] = out.get(i + j, 0.0) + ca * cb
    return out


def _poly_is(p: dict, want: dict) -> bool:
    keys = {k for k, c in p.items() if c != 0.0} | set(want)
    return all(_close(p.get(k, 0.0), want.get(k, 0.0)) for k in keys)


def _one_plus(f: Any) -> fx.Node | None:
    """f = 1 + erf(.) or 1 + tanh(.) -> the erf/tanh node."""
    if not is_op(f, aten.add.Tensor) or f.kwargs.get("alpha", 1) != 1:
        return None
    a, b = f.args[:2]
    t, one = (a, b) if isinstance(a, fx.Node) else (b, a)
    if _scalar(one) == 1.0 and is_op(t, aten.erf.default, aten.tanh.default):
        return t
    return None


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def match_gelu(n: fx.Node, ctx: PassContext):
    if not is_op(n, aten.mul.Tensor, aten.div.Tensor):  # x * (1 + t) / 2 ends in a div
        return None
    m = _match_gelu(n)
    # A factor of a larger product (0.5 * x of 0.5 * x * (1 + t)) is no near miss: only the
    # outermost product may refuse. An inner product that is GELU on its own (gelu(x) * z
    # written out, as GEGLU does) matches first: the sweep visits it before its user.
    return None if isinstance(m, Refuse) and _inside_product(n) else m


def _match_gelu(n: fx.Node):
    interior: set = set()
    const, factors = _factors(n, interior)
    ones = [f for f in factors if _one_plus(f) is not None]
    if len(ones) != 1:
        return None
    rest = [f for f in factors if f is not ones[0]]
    t = _one_plus(ones[0])
    if len(rest) != 1:
        return Refuse(f"%{n.name} multiplies (1 + {t.target._opname}) by {len(rest)} tensors, "
                      f"not by x alone")
    x = rest[0]
    if not _close(const, 0.5):
        return Refuse(f"%{n.name}: constant factor {const:g}, GELU's is 0.5")
    p = _poly(t.args[0], x, interior)
    if t.target is aten.erf.default:
        approx, want = "none", {1: 1.0 / math.sqrt(2.0)}
    else:
        approx, want = "tanh", {1: _SQRT_2_OVER_PI, 3: _SQRT_2_OVER_PI * 0.044715}
    if p is None or not _poly_is(p, want):
        got = {k: round(c, 7) for k, c in sorted(p.items())} if p else "not a polynomial in x"
        return Refuse(f"the {t.target._opname} argument of %{n.name} is {got}, GELU's is {want}")
    interior |= {ones[0], t}
    interior -= {x, n}  # x is the input; n, the root, may have any users
    if (why := _low_precision(n, "gelu")):
        return Refuse(why)
    if (why := _escape(interior, n)):
        return Refuse(why)
    return n, aten.gelu.default, (x,), ({"approximate": "tanh"} if approx == "tanh" else {})


def _inside_product(n: fx.Node) -> bool:
    """n is a factor of a larger product (its only user multiplies it further)."""
    if len(n.users) != 1:
        return False
    u = next(iter(n.users))
    return is_op(u, aten.mul.Tensor) or (is_op(u, aten.div.Tensor) and u.args[0] is n
                                         and _scalar(u.args[1]) is not None)


# -- rule 3: SiLU -------------------------------------------------------------------------------

def match_silu(n: fx.Node, ctx: PassContext):
    if not is_op(n, aten.mul.Tensor):
        return None
    a, b = n.args[:2]
    for x, s in ((a, b), (b, a)):
        if is_op(s, aten.sigmoid.default) and s.args[0] is x:
            if (why := _low_precision(n, "silu")):
                return Refuse(why)
            if (why := _escape({s}, n)):
                return Refuse(why)
            return n, aten.silu.default, (x,), {}
    return None


def apply_act(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    root, target, args, kwargs = m
    with gm.graph.inserting_before(root):
        new = ir.new_call(gm.graph, target, args, kwargs, like=root)
    root.replace_all_uses_with(new)
    return 1


# -- rule 4: layer scale ------------------------------------------------------------------------

@dataclasses.dataclass
class LayerScale:
    mul: fx.Node          # the product: its users read the linear (or the permute) instead
    linear: fx.Node
    out: fx.Node          # what the mul multiplied: the linear, or a permute of it
    gamma: torch.Tensor   # (out_features,)


def match_layer_scale(n: fx.Node, ctx: PassContext):
    if not is_op(n, aten.mul.Tensor) or not all(isinstance(a, fx.Node) for a in n.args[:2]):
        return None
    for y, g in (n.args[:2], n.args[1::-1]):
        out, lin, perm = y, y, None
        for _ in range(2):  # through a permute back to channels first, an eval dropout's clone
            if is_op(lin, aten.permute.default) and len(lin.users) == 1 and perm is None:
                perm, lin = lin, lin.args[0]
            elif is_op(lin, aten.clone.default) and len(lin.users) == 1:
                lin = lin.args[0]
        if not is_op(lin, aten.linear.default) or g.op != "get_attr":
            continue
        gamma = _gamma(ir.fetch_attr(g.graph.owning_module, g.target), out, lin, perm)
        if gamma is None:
            continue
        w, b = lin.args[1], (lin.args[2] if len(lin.args) > 2 else None)
        if len(lin.users) != 1 or _is_out(lin) or _is_out(out):
            return Refuse(f"%{lin.name}'s output is also read elsewhere")
        for p in (w, b):
            if p is not None and (not isinstance(p, fx.Node) or p.op != "get_attr"):
                return Refuse(f"%{lin.name}'s weight or bias is not a constant")
        if len(w.users) != 1:  # a shared bias (cse merges equal ones) is copied, a weight not
            return Refuse(f"%{w.name} is also read elsewhere (tied)")
        if (why := _low_precision(n, "layer scale")):
            return Refuse(why)
        return LayerScale(n, lin, out, gamma)
    return None


def _gamma(g: torch.Tensor, out: fx.Node, lin: fx.Node,
           perm: fx.Node | None) -> torch.Tensor | None:
    """g as a vector over the linear's output features, if that is how it broadcasts."""
    ov, lv = _val(out), _val(lin)
    if not isinstance(g, torch.Tensor) or ov is None or lv is None or g.dtype != ov.dtype \
            or g.dim() > ov.dim() or ov.dim() != lv.dim():
        return None
    feat = lv.dim() - 1  # where the features land in `out`
    if perm is not None:
        feat = [int(p) % lv.dim() for p in perm.args[1]].index(lv.dim() - 1)
    shape = [1] * (ov.dim() - g.dim()) + list(g.shape)
    if any(s != 1 for d, s in enumerate(shape) if d != feat) or shape[feat] != ov.shape[feat]:
        return None
    return g.reshape(-1)


def apply_layer_scale(gm: fx.GraphModule, m: LayerScale, ctx: PassContext) -> int:
    lin = m.linear
    w_node, b_node = lin.args[1], (lin.args[2] if len(lin.args) > 2 else None)
    w = ir.fetch_attr(gm, w_node.target)
    with torch.no_grad():
        new_w = (w * m.gamma.to(w.device)[:, None]).detach()
        new_b = (ir.fetch_attr(gm, b_node.target) * m.gamma.to(w.device)).detach() \
            if b_node is not None else None
    w2 = ir.add_constant(gm, new_w, f"{w_node.target}_scaled", after=w_node, like=w_node)
    args = [lin.args[0], w2]
    if b_node is not None:
        args.append(ir.add_constant(gm, new_b, f"{b_node.target}_scaled", after=b_node,
                                    like=b_node))
    lin.args = tuple(args) + tuple(lin.args[3:])
    m.mul.replace_all_uses_with(m.out)
    gm.graph.erase_node(m.mul)
    for old in (w_node, b_node):
        if old is not None and not old.users:
            gm.graph.erase_node(old)
    return 1
