"""The op table of the graph generator: each row says what an op accepts and how to emit it.

A row (`OpSpec`) is data: the call target, the operand dtypes it accepts, a *rule* that picks
operands from the values built so far and draws the static arguments (the shape rule), an
optional *prepare* step that adds domain guards (`b.abs() + 1` under a division) or creates
the op's parameters (conv weights, running stats), and the numeric checks that keep a graph
safe to compare across backends:

- `check`: refuses a result whose value is decided by a rounding error (a comparison of
  nearly equal floats, a float -> int cast next to an integer, a layer norm of a flat row);
- `cancel`: the magnitude the result is computed from (sum of |terms|); a result much
  smaller than that lost its digits to cancellation and is refused;
- `exact_int`: an integer result is recomputed in float64; a difference means it wrapped.

The generic checks (finite, magnitude per dtype, size) live in `program.Builder.add`.
"""
from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from . import shape as S

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)
NUMS = FLOATS + INTS
ALL = NUMS + (torch.bool,)

# Python scalars mixed into graphs; 30000 and 70000 push fp32 values past fp16's 65504.
SCALARS = (1, 2.5, -1, 0.5, 2, -1.5, 3, 1e-3, 1000.0, 30000.0, 70000.0)


class OpRejected(Exception):
    """The op cannot be added here: no operand fits, it raised, or its result is unsafe."""


def _positional(t, s):
    return tuple(t), dict(s)


@dataclass(frozen=True, repr=False)
class OpSpec:
    name: str
    dtypes: tuple                  # operand dtypes the rule picks from
    rule: Callable                 # (builder, spec) -> (operand ids, static args)
    fn: Any                        # a callable, or the name of a Tensor method
    args: Callable = _positional   # (operands, static) -> (args, kwargs) of the call
    prepare: Callable | None = None  # (builder, ids, static) -> (ids, static): guards, params
    check: Callable | None = None    # (tensors, out, static) -> reason or None
    cancel: Callable | None = None   # (tensors, static, builder) -> float64 magnitude
    view: bool = False             # the result may share storage with operand 0
    inplace: bool = False          # mutates operand 0 and returns it
    exact_int: bool = False        # integer result rechecked in float64 (overflow)
    weight: int = 1                # how often the generator draws it, relative to others

    def __repr__(self):
        return f"OPS[{self.name!r}]"


def call(spec: OpSpec, operands, static, modules):
    """Run the op on tensors; `static["module"]` names a module of `modules` to call instead.
    (Program.to_graph_module emits the same call through spec.args, as fx nodes.)"""
    if "module" in static:
        return modules[static["module"]](*operands)
    args, kwargs = spec.args(list(operands), static)
    if isinstance(spec.fn, str):
        return getattr(args[0], spec.fn)(*args[1:], **kwargs)
    return spec.fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# Shape rules: pick operands (b.operand / b.pick_value) and draw static arguments.

def _d(b, strategy):
    return b.draw(strategy)


def r_unary(b, spec):
    return [b.operand(spec.dtypes)], {}


# The dtype a mixed-dtype operand pair is made of: the promotions compilers get wrong.
PARTNER = {torch.int32: torch.int64, torch.int64: torch.int32, torch.float16: torch.float32,
           torch.float32: torch.float16, torch.bfloat16: torch.float16, torch.bool: torch.int32}


def _second_dtypes(b, spec, first):
    """Operand dtypes for a second operand: a third of the time, first's promotion partner."""
    partner = PARTNER.get(b.value(first).dtype)
    if partner in spec.dtypes and partner in b.dtypes and _d(b, st.integers(0, 2)) == 0:
        return (partner,)
    return spec.dtypes


def r_binary(b, spec):
    a = b.operand(spec.dtypes)
    shape = b.value(a).shape
    other = b.operand(_second_dtypes(b, spec, a), primary=False,
                      fresh_shape=S.shapes_broadcast_compatible(shape),
                      where=lambda v: _broadcasts(v.shape, shape))
    return ([other, a] if _d(b, st.booleans()) else [a, other]), {}


def r_scalar(constants, reversible=False):
    """x op c with a Python scalar c; `reversible`: sometimes written c op x."""
    def rule(b, spec):
        x = b.operand(spec.dtypes)
        s = {"c": _d(b, st.sampled_from(constants))}
        if reversible and _d(b, st.booleans()):
            s["reverse"] = True
        return [x], s
    return rule


def r_clamp(b, spec):
    x = b.operand(spec.dtypes)
    lo, hi = _d(b, st.sampled_from([(-1.0, 1.0), (0, None), (None, 6), (-0.5, None), (-2, 2)]))
    return [x], {"min": lo, "max": hi}


def r_where(b, spec):
    try:
        cond = b.operand((torch.bool,))
    except OpRejected:  # no bool value and bool not a leaf dtype: make a mask
        cond = b.add("gt_scalar", b.operand(NUMS), c=0)
    shape = b.value(cond).shape
    x = b.operand(spec.dtypes, primary=False, fresh_shape=S.shapes_broadcast_compatible(shape),
                  where=lambda v: _broadcasts(v.shape, shape))
    y = b.operand(spec.dtypes, primary=False, fresh_shape=S.shapes_broadcast_compatible(shape),
                  where=lambda v: _broadcasts(v.shape, shape, b.value(x).shape))
    return [cond, x, y], {}


def r_reduce(b, spec):
    x = b.operand(spec.dtypes)
    rank = len(b.value(x).shape)
    if rank == 0 or _d(b, st.integers(0, 3)) == 0:
        return [x], {}
    dims = sorted(_d(b, st.sets(st.integers(0, rank - 1), min_size=1, max_size=rank)))
    dims = tuple(d - rank if _d(b, st.booleans()) else d for d in dims)
    return [x], {"dim": dims, "keepdim": _d(b, st.booleans())}


def r_dim(b, spec):
    x = b.operand(spec.dtypes)
    rank = len(b.value(x).shape)
    return [x], {"dim": _d(b, st.integers(-max(rank, 1), max(rank, 1) - 1))}


def r_cast(targets):
    def rule(b, spec):
        options = [d for d in targets if d in b.dtypes]
        if not options:
            raise OpRejected(f"{spec.name}: no target dtype among {b.dtypes}")
        return [b.operand(spec.dtypes)], {"dtype": _d(b, st.sampled_from(options))}
    return rule


def r_cast_method(dtype):
    def rule(b, spec):
        if dtype not in b.dtypes:
            raise OpRejected(f"{spec.name}: {dtype} not among {b.dtypes}")
        return [b.operand(spec.dtypes)], {}
    return rule


def r_matmul(b, spec):
    """vec @ vec, vec @ mat, mat @ vec, mat @ mat, batched with broadcast batch dims."""
    x = b.operand(spec.dtypes, min_rank=1)
    xs, dt = b.value(x).shape, b.value(x).dtype
    x_right = _d(b, st.booleans())
    n = _d(b, st.integers(1, 4))
    form = _d(b, st.sampled_from(["vec", "mat", "batch"]))
    k = xs[0] if len(xs) == 1 else (xs[-2] if x_right else xs[-1])
    if form == "vec":
        other = (k,)
    elif form == "mat":
        other = (n, k) if x_right else (k, n)
    else:
        batch = _d(b, S.shapes_broadcast_compatible(xs[:-2], max_rank=2, max_numel=8))
        batch = batch or ((xs[-3],) if len(xs) >= 3 else (_d(b, st.integers(1, 3)),))
        other = batch + ((n, k) if x_right else (k, n))
    y = b.pick_value(dtypes=(dt,), where=lambda v: v.shape == other,
                     fresh_shape=st.just(other), primary=False)
    return ([y, x] if x_right else [x, y]), {}


def r_linear(b, spec):
    x = b.operand(spec.dtypes, min_rank=1)
    return [x], {"out_features": _d(b, st.integers(1, 6)), "bias": _d(b, st.booleans()),
                 "module": _d(b, st.booleans())}


def r_conv2d(b, spec):
    x = b.operand(spec.dtypes, min_rank=3, max_rank=4, fresh_shape=_conv_input_shapes())
    c, h, w = b.value(x).shape[-3:]
    groups = _d(b, st.sampled_from([g for g in (1, 2, 3, 4) if c % g == 0]))
    padding = _d(b, st.integers(0, 1))
    k = _d(b, st.integers(1, max(1, min(3, h + 2 * padding, w + 2 * padding))))
    return [x], {"out_channels": groups * _d(b, st.integers(1, 3)), "kernel_size": k,
                 "stride": _d(b, st.integers(1, 2)), "padding": padding, "groups": groups,
                 "bias": _d(b, st.booleans()), "module": _d(b, st.booleans())}


def _conv_input_shapes():
    return st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))


def r_batch_norm(b, spec):
    x = b.operand(spec.dtypes, min_rank=2, max_rank=4)
    return [x], {"affine": _d(b, st.booleans()), "module": _d(b, st.booleans())}


def r_layer_norm(b, spec):
    x = b.operand(spec.dtypes, min_rank=1)
    rank = len(b.value(x).shape)
    return [x], {"k": _d(b, st.integers(1, min(rank, 2))), "affine": _d(b, st.booleans()),
                 "module": _d(b, st.booleans())}


def r_reshape(b, spec):
    x = b.operand(spec.dtypes)
    return [x], {"shape": _d(b, S.factorizations(S.numel(b.value(x).shape)))}


def r_permute(b, spec):
    x = b.operand(spec.dtypes, min_rank=1)
    return [x], {"dims": tuple(_d(b, st.permutations(range(len(b.value(x).shape)))))}


def r_transpose(b, spec):
    x = b.operand(spec.dtypes, min_rank=1)
    r = len(b.value(x).shape)
    return [x], {"dim0": _d(b, st.integers(-r, r - 1)), "dim1": _d(b, st.integers(-r, r - 1))}


def r_unsqueeze(b, spec):
    x = b.operand(spec.dtypes, max_rank=3)
    r = len(b.value(x).shape)
    return [x], {"dim": _d(b, st.integers(-r - 1, r))}


def r_squeeze(b, spec):
    x = b.operand(spec.dtypes)
    shape = b.value(x).shape
    ones = [i for i, d in enumerate(shape) if d == 1]
    if not shape or _d(b, st.integers(0, 3)) == 0:
        return [x], {}
    return [x], {"dim": _d(b, st.sampled_from(ones or list(range(len(shape)))))}


def r_flatten(b, spec):
    x = b.operand(spec.dtypes, min_rank=1)
    r = len(b.value(x).shape)
    start = _d(b, st.integers(0, r - 1))
    return [x], {"start_dim": start, "end_dim": _d(b, st.integers(start, r - 1))}


def r_expand(b, spec):
    x = b.operand(spec.dtypes, max_rank=3)
    shape = b.value(x).shape
    sizes = [_d(b, st.integers(1, 3)) if d == 1 else (-1 if _d(b, st.booleans()) else d)
             for d in shape]
    lead = [_d(b, st.integers(1, 3)) for _ in range(_d(b, st.integers(0, 1)))]
    return [x], {"sizes": tuple(lead + sizes)}


def r_slice(b, spec):
    x = b.operand(spec.dtypes, min_rank=1)
    index = []
    for n in b.value(x).shape[:_d(b, st.integers(1, len(b.value(x).shape)))]:
        if n == 0 or _d(b, st.booleans()):
            index.append(slice(None))
            continue
        start = _d(b, st.integers(0, n - 1))
        stop = start if _d(b, st.integers(0, 15)) == 15 else _d(b, st.integers(start + 1, n))
        if _d(b, st.booleans()):  # the same slice written from the end
            start, stop = start - n, (stop - n) or None
        index.append(slice(start, stop, _d(b, st.sampled_from([None, 2]))))
    return [x], {"index": tuple(index)}


def r_select(b, spec):
    x = b.operand(spec.dtypes, min_rank=1, where=lambda v: 0 not in v.shape)
    shape = b.value(x).shape
    d = _d(b, st.integers(0, len(shape) - 1))
    i = _d(b, st.integers(-shape[d], shape[d] - 1))
    return [x], {"index": (slice(None),) * d + (i,)}


def r_cat(b, spec):
    x = b.operand(spec.dtypes, min_rank=1)
    shape = b.value(x).shape
    d = _d(b, st.integers(0, len(shape) - 1))

    def fits(v):
        return len(v.shape) == len(shape) and all(
            u == w for i, (u, w) in enumerate(zip(v.shape, shape)) if i != d)

    fresh = st.integers(0, 3).map(lambda m: shape[:d] + (m,) + shape[d + 1:])
    rest = [b.operand(_second_dtypes(b, spec, x), primary=False, where=fits, fresh_shape=fresh)
            for _ in range(_d(b, st.integers(1, 2)))]
    return [x] + rest, {"dim": d - len(shape) if _d(b, st.booleans()) else d}


def _inplace_target(b, dtypes):
    """An op result whose storage no input or parameter shares, and that is not expanded;
    failing that, a clone of an operand (the `y = x.clone(); y.add_(...)` idiom)."""
    def ok(v):
        return b.value(v.root).kind == "op" and b.writable(v.id)
    try:
        return b.pick_value(dtypes=dtypes, where=ok, primary=True, strict=True, fresh=False)
    except OpRejected:
        return b.add("clone", b.operand(dtypes))


def r_add_(b, spec):
    x = _inplace_target(b, spec.dtypes)
    xv = b.value(x)
    if _d(b, st.booleans()):
        constants = (1, -1, 2.5) if xv.dtype.is_floating_point else (1, -1)
        return [x], {"c": _d(b, st.sampled_from(constants))}
    same = FLOATS if xv.dtype.is_floating_point else INTS
    y = b.operand(same, primary=False, fresh_shape=S.shapes_broadcastable_to(xv.shape),
                  where=lambda v: v.root != xv.root and _broadcasts_to(v.shape, xv.shape))
    return [x, y], {}


def r_mul_(b, spec):
    x = _inplace_target(b, spec.dtypes)
    return [x], {"c": _d(b, st.sampled_from((2, -1) if not b.value(x).dtype.is_floating_point
                                             else (2, 0.5, -1.5)))}


def r_relu_(b, spec):
    return [_inplace_target(b, spec.dtypes)], {}


def _broadcast_shape(*shapes):
    """torch.broadcast_shapes in plain Python (no exception on failure): the shape or None."""
    out = []
    for i in range(1, max(map(len, shapes), default=0) + 1):
        sizes = {s[-i] for s in shapes if i <= len(s)} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out[::-1])


def _broadcasts(*shapes):
    return _broadcast_shape(*shapes) is not None


def _broadcasts_to(shape, target):
    return _broadcast_shape(shape, target) == tuple(target)


# ---------------------------------------------------------------------------------------
# Prepare: domain guards and parameters, as instructions of their own (they read as code).

def g_safe_denominator(b, ins, s):  # a / (b.abs() + 1)
    return [ins[0], b.add("add_scalar", b.add("abs", ins[1]), c=1)], s


def g_abs_plus_one(b, ins, s):  # log, sqrt, rsqrt on x.abs() + 1
    return [b.add("add_scalar", b.add("abs", ins[0]), c=1)], s


def g_clamp8(b, ins, s):  # exp on x.clamp(-8, 8): exp(8) ~ 2981, fine in fp16
    return [b.add("clamp", ins[0], min=-8, max=8)], s


def _module_or_params(b, prefix, module_cls, ins, s, call, params, ctor):
    """Make the op's parameters: as an nn.Module (call_module) or as module attributes."""
    if s.get("module"):
        with warnings.catch_warnings():  # skip_init still calls init on 0-element weights
            warnings.simplefilter("ignore")
            m = nn.utils.skip_init(module_cls, *ctor, dtype=b.value(ins[0]).dtype)
        with torch.no_grad():
            for name, t in params.items():
                if t is not None:
                    getattr(m, name).copy_(t)
            if getattr(m, "num_batches_tracked", None) is not None:
                m.num_batches_tracked.zero_()
        # the call's static args stay in the instruction, for the checks and for reading
        return [ins[0]], {"module": b.add_module(prefix, m.eval()), **call}
    ids = [b.new_param(t, buffer=name.startswith("running")) for name, t in params.items()
           if t is not None]
    return [ins[0]] + ids, call


def p_linear(b, ins, s):
    x = b.value(ins[0])
    fin, fout = x.shape[-1], s["out_features"]
    w = b.data((fout, fin), x.dtype, scale=1 / math.sqrt(max(fin, 1)))
    bias = b.data((fout,), x.dtype, scale=0.1) if s["bias"] else None
    return _module_or_params(b, "linear", nn.Linear, ins, s, {}, {"weight": w, "bias": bias},
                             (fin, fout, s["bias"]))


def p_conv2d(b, ins, s):
    x = b.value(ins[0])
    cin, cout, k, g = x.shape[-3], s["out_channels"], s["kernel_size"], s["groups"]
    w = b.data((cout, cin // g, k, k), x.dtype, scale=1 / math.sqrt(max(1, cin // g * k * k)))
    bias = b.data((cout,), x.dtype, scale=0.1) if s["bias"] else None
    call = {"stride": s["stride"], "padding": s["padding"], "groups": g}
    return _module_or_params(b, "conv", nn.Conv2d, ins, s, call, {"weight": w, "bias": bias},
                             (cin, cout, k, s["stride"], s["padding"], 1, g, s["bias"]))


def p_batch_norm(b, ins, s):
    x = b.value(ins[0])
    c, dt = x.shape[1], x.dtype
    params = {"running_mean": b.data((c,), dt, scale=0.5),
              "running_var": b.data((c,), dt, low=0.5, high=2.0),
              "weight": b.data((c,), dt, low=0.5, high=1.5) if s["affine"] else None,
              "bias": b.data((c,), dt, scale=0.1) if s["affine"] else None}
    cls = nn.BatchNorm2d if len(x.shape) == 4 else nn.BatchNorm1d
    return _module_or_params(b, "bn", cls, ins, s, {"eps": 1e-5}, params,
                             (c, 1e-5, 0.1, s["affine"]))


def p_layer_norm(b, ins, s):
    x = b.value(ins[0])
    ns = tuple(x.shape[-s["k"]:])
    params = {"weight": b.data(ns, x.dtype, scale=0.1, shift=1.0) if s["affine"] else None,
              "bias": b.data(ns, x.dtype, scale=0.1) if s["affine"] else None}
    return _module_or_params(b, "ln", nn.LayerNorm, ins, s,
                             {"normalized_shape": ns, "eps": 1e-5}, params, (ns, 1e-5, s["affine"]))


# ---------------------------------------------------------------------------------------
# Numeric checks.

def _eps(*ts):
    return max([torch.finfo(t.dtype).eps for t in ts
                if isinstance(t, torch.Tensor) and t.dtype.is_floating_point] or [0.0])


def c_compare(t, out, s):
    """Refuse float comparisons that a last-bit difference could flip."""
    a, other = t[0], (t[1] if len(t) > 1 else s["c"])
    eps = _eps(*t) or (torch.finfo(torch.float32).eps if isinstance(other, float) else 0.0)
    if eps == 0.0:
        return None
    a64 = a.double()
    o64 = (other.double() if isinstance(other, torch.Tensor)
           else torch.tensor(float(other), dtype=torch.float64))
    diff = (a64 - o64).abs()
    scale = torch.maximum(a64.abs(), o64.abs()).clamp(min=1.0)
    if ((diff > 0) & (diff <= 16 * eps * scale)).any():
        return "operands too close to compare stably"
    return None


def c_cast(t, out, s):
    """Refuse float -> int casts near an integer or out of range, float -> bool near 0."""
    x = t[0]
    if not x.dtype.is_floating_point or out.dtype.is_floating_point:
        return None
    x64, eps = x.double(), _eps(x)
    if out.dtype == torch.bool:
        return "too close to 0" if ((x64 != 0) & (x64.abs() <= 16 * eps)).any() else None
    if x64.numel() and x64.abs().max() >= 2 ** 31:
        return f"out of range for {out.dtype}"
    r = (x64 - x64.round()).abs()
    if ((r > 0) & (r <= 16 * eps * x64.abs().clamp(min=1.0))).any():
        return "too close to an integer to truncate stably"
    return None


def c_layer_norm(t, out, s):
    """Refuse rows that are flat (up to rounding): their normalized values are noise."""
    x, n = t[0].double(), math.prod(s["normalized_shape"])
    if x.numel() == 0 or n <= 1:
        return None
    rows = x.reshape(-1, n)
    spread = rows.amax(1) - rows.amin(1)
    scale = rows.abs().amax(1)
    return "a normalized row is flat" if ((spread <= 1e-2 * scale) & (scale > 0)).any() else None


def _abs_same(t, s, b, spec_fn, args=_positional):
    """The op itself on |operands| in float64: the magnitude its result is summed from."""
    a = [x.double().abs() if isinstance(x, torch.Tensor) else abs(x) for x in t]
    cargs, kwargs = args(a, s)
    return spec_fn(*cargs, **kwargs)


def k_abs_sum(t, s, b):  # a - b, c - x: computed from |a| + |b|
    a = [x.double().abs() if isinstance(x, torch.Tensor) else abs(x) for x in t]
    c = abs(s["c"]) if "c" in s else 0
    total = a[0] + (a[1] if len(a) > 1 else c)
    return total


def k_same(fn, args=_positional):
    return lambda t, s, b: _abs_same(t, s, b, fn, args)


def _layer_weights(t, s, b):
    """(x, weight, bias) of a linear or conv op, whether emitted as a module or functional."""
    if "module" in s:
        m = b.modules[s["module"]]
        return t[0], m.weight, m.bias
    return tuple((list(t) + [None])[:3])


def _abs64(ts):
    return [v.double().abs() if v is not None else None for v in ts]


def k_linear(t, s, b):
    return F.linear(*_abs64(_layer_weights(t, s, b)))


def k_conv2d(t, s, b):
    return F.conv2d(*_abs64(_layer_weights(t, s, b)), **{k: v for k, v in s.items() if k != "module"})


# ---------------------------------------------------------------------------------------
# Argument layouts of the calls.

def a_scalar(t, s):
    return ((s["c"], t[0]) if s.get("reverse") else (t[0], s["c"])), {}


def a_kw(*names):
    return lambda t, s: (tuple(t), {k: s[k] for k in names if k in s and s[k] is not None})


def a_fields(*names):
    return lambda t, s: (tuple(t) + tuple(s[k] for k in names if k in s), {})


def a_cast(t, s):
    return (t[0], s["dtype"]), {}


def a_index(t, s):
    return (t[0], s["index"]), {}


def a_cat(t, s):
    return (list(t),), {"dim": s["dim"]}


def a_optional(nparams):
    """(x, p1, p2, ...) with absent parameters passed as None, static args as keywords."""
    def args(t, s):
        rest = list(t[1:]) + [None] * (nparams - len(t) + 1)
        return (t[0], *rest), dict(s)
    return args


def a_layer_norm(t, s):
    w, bias = (list(t[1:]) + [None, None])[:2]
    return (t[0], s["normalized_shape"], w, bias), {"eps": s["eps"]}


def a_batch_norm(t, s):
    w, bias = (list(t[3:]) + [None, None])[:2]
    return (t[0], t[1], t[2], w, bias), {"training": False, "eps": s["eps"]}


def a_inplace_scalar(t, s):
    return ((t[0], s["c"]) if "c" in s else tuple(t)), {}


def _row(name, dtypes, rule, fn, **kw):
    return OpSpec(name, dtypes, rule, fn, **kw)


# The table. Order matters only for shrinking: hypothesis shrinks toward the first rows.
OPS: dict[str, OpSpec] = {s.name: s for s in [
    # elementwise with broadcasting
    _row("add", ALL, r_binary, operator.add, cancel=k_same(operator.add), exact_int=True),
    _row("sub", NUMS, r_binary, operator.sub, cancel=k_abs_sum, exact_int=True),
    _row("mul", ALL, r_binary, operator.mul, exact_int=True),
    _row("div", NUMS, r_binary, torch.div, prepare=g_safe_denominator),
    _row("floor_divide", INTS, r_binary, torch.floor_divide, prepare=g_safe_denominator,
         exact_int=True),
    _row("remainder", INTS, r_binary, torch.remainder, prepare=g_safe_denominator, exact_int=True),
    _row("maximum", ALL, r_binary, torch.maximum),
    _row("minimum", ALL, r_binary, torch.minimum),
    # Python scalars on either side
    _row("add_scalar", NUMS + (torch.bool,), r_scalar(SCALARS, True), operator.add, args=a_scalar,
         cancel=k_abs_sum, exact_int=True),
    _row("mul_scalar", NUMS, r_scalar(SCALARS, True), operator.mul, args=a_scalar, exact_int=True),
    _row("rsub_scalar", NUMS, r_scalar(SCALARS), operator.sub, cancel=k_abs_sum, exact_int=True,
         args=lambda t, s: ((s["c"], t[0]), {})),
    _row("div_scalar", NUMS, r_scalar((2, 0.5, -4, 3.0, 1e-3, 1000.0)), operator.truediv,
         args=lambda t, s: ((t[0], s["c"]), {})),
    _row("pow_scalar", NUMS, r_scalar((2, 3, 2.0)), operator.pow, exact_int=True,
         args=lambda t, s: ((t[0], s["c"]), {})),
    # comparisons and logic: results are bool
    _row("gt", NUMS, r_binary, operator.gt, check=c_compare),
    _row("lt", NUMS, r_binary, operator.lt, check=c_compare),
    _row("ge", NUMS, r_binary, torch.ge, check=c_compare),
    _row("le", NUMS, r_binary, torch.le, check=c_compare),
    _row("eq", NUMS + (torch.bool,), r_binary, operator.eq, check=c_compare),
    _row("ne", NUMS + (torch.bool,), r_binary, torch.ne, check=c_compare),
    _row("gt_scalar", NUMS, r_scalar((0, 0.5, -1)), operator.gt, check=c_compare,
         args=lambda t, s: ((t[0], s["c"]), {})),
    _row("logical_and", INTS + (torch.bool,), r_binary, torch.logical_and),
    _row("logical_or", INTS + (torch.bool,), r_binary, torch.logical_or),
    _row("logical_not", INTS + (torch.bool,), r_unary, torch.logical_not),
    _row("where", ALL, r_where, torch.where, weight=2),
    # unary
    _row("neg", NUMS, r_unary, operator.neg, exact_int=True),
    _row("abs", NUMS, r_unary, torch.abs, exact_int=True),
    _row("relu", NUMS, r_unary, torch.relu),
    _row("sigmoid", FLOATS, r_unary, torch.sigmoid),
    _row("tanh", FLOATS, r_unary, torch.tanh),
    _row("gelu", FLOATS, lambda b, spec: ([b.operand(spec.dtypes)],
                                          {"approximate": b.draw(st.sampled_from(["none", "tanh"]))}),
         F.gelu),
    _row("silu", FLOATS, r_unary, F.silu),
    _row("exp", NUMS, r_unary, torch.exp, prepare=g_clamp8),
    _row("log", NUMS, r_unary, torch.log, prepare=g_abs_plus_one),
    _row("sqrt", NUMS, r_unary, torch.sqrt, prepare=g_abs_plus_one),
    _row("rsqrt", NUMS, r_unary, torch.rsqrt, prepare=g_abs_plus_one),
    _row("clamp", NUMS, r_clamp, torch.clamp, args=a_kw("min", "max")),
    # casts: .to(dtype) and the method chains
    _row("to_dtype", ALL, r_cast(ALL), "to", args=a_cast, check=c_cast, view=True, weight=2),
    _row("float", ALL, r_cast_method(torch.float32), "float", check=c_cast, view=True),
    _row("half", ALL, r_cast_method(torch.float16), "half", check=c_cast, view=True),
    # reductions
    _row("sum", ALL, r_reduce, torch.sum, args=a_kw("dim", "keepdim"),
         cancel=k_same(torch.sum, a_kw("dim", "keepdim")), exact_int=True),
    _row("mean", FLOATS, r_reduce, torch.mean, args=a_kw("dim", "keepdim"),
         cancel=k_same(torch.mean, a_kw("dim", "keepdim"))),
    _row("amax", NUMS, r_reduce, torch.amax, args=a_kw("dim", "keepdim")),
    _row("amin", NUMS, r_reduce, torch.amin, args=a_kw("dim", "keepdim")),
    _row("softmax", FLOATS, r_dim, F.softmax, args=a_kw("dim")),
    _row("log_softmax", FLOATS, r_dim, F.log_softmax, args=a_kw("dim")),
    # linear algebra and layers with generated parameters
    _row("matmul", FLOATS, r_matmul, operator.matmul, cancel=k_same(operator.matmul), weight=3),
    _row("linear", FLOATS, r_linear, F.linear, prepare=p_linear, args=a_optional(2), cancel=k_linear),
    _row("conv2d", FLOATS, r_conv2d, F.conv2d, prepare=p_conv2d, args=a_optional(2), cancel=k_conv2d),
    _row("batch_norm", FLOATS, r_batch_norm, F.batch_norm, prepare=p_batch_norm, args=a_batch_norm),
    _row("layer_norm", FLOATS, r_layer_norm, F.layer_norm, prepare=p_layer_norm, args=a_layer_norm,
         check=c_layer_norm),
    # shapes and views
    _row("reshape", ALL, r_reshape, "reshape", args=a_fields("shape"), view=True),
    _row("permute", ALL, r_permute, "permute", args=a_fields("dims"), view=True),
    _row("transpose", ALL, r_transpose, torch.transpose, args=a_fields("dim0", "dim1"), view=True),
    _row("unsqueeze", ALL, r_unsqueeze, torch.unsqueeze, args=a_fields("dim"), view=True),
    _row("squeeze", ALL, r_squeeze, torch.squeeze, args=a_fields("dim"), view=True),
    _row("flatten", ALL, r_flatten, torch.flatten, args=a_fields("start_dim", "end_dim"), view=True),
    _row("expand", ALL, r_expand, "expand", args=a_fields("sizes"), view=True),
    _row("contiguous", ALL, r_unary, "contiguous", view=True),
    _row("clone", ALL, r_unary, torch.clone),
    _row("slice", ALL, r_slice, operator.getitem, args=a_index, view=True),
    _row("select", ALL, r_select, operator.getitem, args=a_index, view=True),
    _row("cat", ALL, r_cat, torch.cat, args=a_cat),
    # in place, on intermediates only (never on an input's or a parameter's storage)
    _row("add_", NUMS, r_add_, "add_", args=a_inplace_scalar, inplace=True),
    _row("mul_", NUMS, r_mul_, "mul_", args=a_inplace_scalar, inplace=True),
    _row("relu_", FLOATS, r_relu_, "relu_", inplace=True),
]}
