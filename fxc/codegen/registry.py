"""The op table of generated kernels: one row per ATen overload.

A pointwise row is a Triton expression over its operands `{0}, {1}, ...` (already converted
to the op's compute dtype) and how that compute dtype is chosen (`math`):

    op    ATen's opmath: fp32 for fp16/bf16 results, else the result dtype; the result is
          rounded to the graph's dtype after every op, as ATen rounds every op's output
    cmp   comparisons: operands in the opmath of their promoted dtype; the result is bool
    sel   selects (where, masked_fill): the values in the result dtype, the condition bool
    cast  the operand as it is; the result converted to the graph's dtype

A reduction row names its kind; triton_gen.py writes each kind over a row tile (one program,
ROWS rows of the trailing reduced dims). `check(args, kwargs)` returns why a call cannot be
generated (an argument the template does not cover), or None. Supporting an op is one row.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch

aten = torch.ops.aten
prims = torch.ops.prims

# dtypes a generated kernel loads, computes and stores (float64 left to ATen: Triton rounds
# Python float literals to fp32, which would cost fp64 code its digits).
DTYPES = {
    torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16", torch.float32: "tl.float32",
    torch.int64: "tl.int64", torch.int32: "tl.int32", torch.int16: "tl.int16",
    torch.int8: "tl.int8", torch.uint8: "tl.uint8", torch.bool: "tl.int1",
}


def opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype ATen computes a `dtype` op in (its kernels' opmath_t); bool arithmetic in
    int32, so True + True is True (as torch gives), not an i1 that wraps to 0."""
    if dtype == torch.bool:
        return torch.int32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclasses.dataclass(frozen=True)
class Pointwise:
    expr: str | Callable[[tuple, dict], str]   # template, or (args, kwargs) -> template
    nargs: int = 1                             # leading positional operands (tensor or scalar)
    math: str = "op"
    check: Callable[[tuple, dict], str | None] | None = None
    floats_only: bool = False                  # ATen refuses (or promotes) integer inputs
    cond: int = 0                              # math "sel": the operand that is the condition
    bool_only: bool = False                    # bitwise ops: booleans only (else ~x is not 1 - x)


@dataclasses.dataclass(frozen=True)
class Reduction:
    kind: str          # sum mean amax amin var softmax log_softmax layer_norm rms_norm
    check: Callable[[tuple, dict], str | None] | None = None


def _alpha(args, kwargs):
    return None if kwargs.get("alpha", 1) == 1 and len(args) <= 2 else "alpha != 1"


# A copy to one of these layouts is the identity on values: the region's output is written in
# the layout the graph recorded for it (region.py `orders`), whatever the copy asked for.
MEMORY_FORMATS = {None: None, torch.preserve_format: "preserve_format",
                  torch.contiguous_format: "contiguous_format", torch.channels_last: "channels_last"}


def _cast_only(args, kwargs):
    extra = {k: v for k, v in kwargs.items() if k not in ("dtype", "memory_format")
             and not (k in ("layout", "device", "pin_memory") and v in (None, torch.strided, False))}
    if extra or kwargs.get("memory_format") not in MEMORY_FORMATS:
        return f"a copy that changes more than the dtype and layout ({sorted(extra) or 'memory_format'})"
    return None


def _scalar_exponent(args, kwargs):
    p = args[1]
    return None if isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) \
        else "the exponent is not a finite Python scalar"


def _pow(args, kwargs) -> str:
    """x ** p as ATen computes it: x*x for 2, sqrt for 0.5, rsqrt for -0.5, exp2/log2 else."""
    p = float(args[1])
    if p == int(p) and abs(p) <= 4:
        n = int(abs(p))
        prod = " * ".join(["{0}"] * n) if n else "tl.where({0} == {0}, 1.0, 1.0)"
        return prod if p >= 0 else f"1.0 / ({prod})"
    if p == 0.5:
        return "tl.sqrt({0})"
    if p == -0.5:
        return "tl.rsqrt({0})"
    if p == int(p):  # an odd integer exponent keeps the base's sign
        mag = f"tl.exp2({p!r} * tl.log2(tl.abs({{0}})))"
        return f"tl.where({{0}} < 0, -1.0, 1.0) * {mag}" if int(p) % 2 else mag
    return f"tl.exp2({p!r} * tl.log2({{0}}))"  # NaN for a negative base, as torch.pow gives


def _gelu(args, kwargs) -> str:
    if kwargs.get("approximate", "none") == "tanh":
        return "0.5 * {0} * (1.0 + _tanh(0.7978845608028654 * ({0} + 0.044715 * {0} * {0} * {0})))"
    return "0.5 * {0} * (1.0 + tl.erf({0} * 0.7071067811865476))"


def _gelu_check(args, kwargs):
    return None if kwargs.get("approximate", "none") in ("none", "tanh") and len(args) == 1 \
        else "an approximate= the template does not know"


def _clamp(args, kwargs) -> str:
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    e = "{0}"
    if lo is not None:
        e = f"tl.maximum({e}, {{1}}, propagate_nan=tl.PropagateNan.ALL)"
    if hi is not None:
        e = f"tl.minimum({e}, {{{2 if lo is not None else 1}}}, propagate_nan=tl.PropagateNan.ALL)"
    return e


def _clamp_check(args, kwargs):
    bounds = list(args[1:3]) + [kwargs.get("min"), kwargs.get("max")]
    return None if all(b is None or (isinstance(b, (int, float)) and not isinstance(b, bool))
                       for b in bounds) else "clamp bounds that are not Python scalars"


def _masked_fill_check(args, kwargs):
    return None if isinstance(args[2], (int, float, bool)) else "a tensor fill value"


def _softmax_check(args, kwargs):
    return None if kwargs.get("dtype") is None and (len(args) < 3 or args[2] in (False, None)) \
        else "softmax that changes the dtype"


def _dtype_none(args, kwargs):
    return None if kwargs.get("dtype") is None else "a reduction with dtype="


def _scalars_from(i):
    def check(args, kwargs):
        return None if all(isinstance(a, (int, float)) and not isinstance(a, bool)
                           for a in list(args[i:]) + list(kwargs.values())) else \
            "a parameter that is not a Python scalar"
    return check


def _hardtanh(args, kwargs) -> str:
    lo, hi = (list(args[1:3]) + [-1.0, 1.0][len(args) - 1:])[:2]
    return (f"tl.minimum(tl.maximum({{0}}, {float(lo)!r}, {MAXMIN}), {float(hi)!r}, {MAXMIN})")


def _leaky_relu(args, kwargs) -> str:
    slope = float(args[1]) if len(args) > 1 else float(kwargs.get("negative_slope", 0.01))
    return f"tl.where({{0}} > 0, {{0}}, {{0}} * {slope!r})"


P = Pointwise
MAXMIN = "propagate_nan=tl.PropagateNan.ALL"
RELU6 = f"tl.minimum(tl.maximum({{0}}, 0.0, {MAXMIN}), 6.0, {MAXMIN})"
POINTWISE: dict[Any, Pointwise] = {
    aten.add.Tensor: P("{0} + {1}", 2, check=_alpha),
    aten.add.Scalar: P("{0} + {1}", 2, check=_alpha),
    aten.sub.Tensor: P("{0} - {1}", 2, check=_alpha),
    aten.sub.Scalar: P("{0} - {1}", 2, check=_alpha),
    aten.rsub.Scalar: P("{1} - {0}", 2, check=_alpha),
    aten.mul.Tensor: P("{0} * {1}", 2),
    aten.mul.Scalar: P("{0} * {1}", 2),
    aten.div.Tensor: P("{0} / {1}", 2),
    aten.div.Scalar: P("{0} / {1}", 2),
    aten.neg.default: P("-{0}"),
    aten.reciprocal.default: P("1.0 / {0}", floats_only=True),
    aten.exp.default: P("tl.exp({0})", floats_only=True),
    aten.log.default: P("tl.log({0})", floats_only=True),
    aten.sqrt.default: P("tl.sqrt({0})", floats_only=True),
    aten.rsqrt.default: P("tl.rsqrt({0})", floats_only=True),
    aten.sigmoid.default: P("1.0 / (1.0 + tl.exp(-{0}))", floats_only=True),
    aten.tanh.default: P("_tanh({0})", floats_only=True),
    aten.erf.default: P("tl.erf({0})", floats_only=True),
    aten.abs.default: P("tl.abs({0})"),
    aten.relu.default: P("tl.where({0} < 0, 0, {0})"),
    aten.gelu.default: P(_gelu, check=_gelu_check, floats_only=True),
    aten.silu.default: P("{0} / (1.0 + tl.exp(-{0}))", floats_only=True),
    aten.pow.Tensor_Scalar: P(_pow, 1, check=_scalar_exponent, floats_only=True),
    aten.clamp.default: P(_clamp, 3, check=_clamp_check),
    aten.relu6.default: P(RELU6, floats_only=True),
    aten.hardtanh.default: P(_hardtanh, check=_scalars_from(1), floats_only=True),
    aten.hardsigmoid.default: P(RELU6.replace("{0}", "({0} + 3.0)") + " / 6.0", floats_only=True),
    aten.hardswish.default: P("{0} * " + RELU6.replace("{0}", "({0} + 3.0)") + " / 6.0",
                              floats_only=True),
    aten.leaky_relu.default: P(_leaky_relu, check=_scalars_from(1), floats_only=True),
    aten.sin.default: P("tl.sin({0})", floats_only=True),
    aten.cos.default: P("tl.cos({0})", floats_only=True),
    aten.floor.default: P("tl.floor({0})", floats_only=True),
    aten.maximum.default: P(f"tl.maximum({{0}}, {{1}}, {MAXMIN})", 2),
    aten.minimum.default: P(f"tl.minimum({{0}}, {{1}}, {MAXMIN})", 2),
    aten.where.self: P("tl.where({0}, {1}, {2})", 3, math="sel"),
    aten.where.ScalarOther: P("tl.where({0}, {1}, {2})", 3, math="sel"),
    aten.where.ScalarSelf: P("tl.where({0}, {1}, {2})", 3, math="sel"),
    aten.logical_and.default: P("({0} != 0) & ({1} != 0)", 2, math="cmp"),
    aten.logical_or.default: P("({0} != 0) | ({1} != 0)", 2, math="cmp"),
    aten.bitwise_and.Tensor: P("{0} & {1}", 2, bool_only=True),
    aten.bitwise_or.Tensor: P("{0} | {1}", 2, bool_only=True),
    aten.bitwise_not.default: P("1 - {0}", bool_only=True),
    aten.masked_fill.Scalar: P("tl.where({1}, {2}, {0})", 3, math="sel", check=_masked_fill_check,
                                 cond=1),
    aten.eq.Tensor: P("{0} == {1}", 2, math="cmp"), aten.eq.Scalar: P("{0} == {1}", 2, math="cmp"),
    aten.ne.Tensor: P("{0} != {1}", 2, math="cmp"), aten.ne.Scalar: P("{0} != {1}", 2, math="cmp"),
    aten.lt.Tensor: P("{0} < {1}", 2, math="cmp"), aten.lt.Scalar: P("{0} < {1}", 2, math="cmp"),
    aten.le.Tensor: P("{0} <= {1}", 2, math="cmp"), aten.le.Scalar: P("{0} <= {1}", 2, math="cmp"),
    aten.gt.Tensor: P("{0} > {1}", 2, math="cmp"), aten.gt.Scalar: P("{0} > {1}", 2, math="cmp"),
    aten.ge.Tensor: P("{0} >= {1}", 2, math="cmp"), aten.ge.Scalar: P("{0} >= {1}", 2, math="cmp"),
    aten.logical_not.default: P("{0} == 0", math="cmp"),
    aten._to_copy.default: P("{0}", math="cast", check=_cast_only),
    prims.convert_element_type.default: P("{0}", math="cast"),
    aten.clone.default: P("{0}", math="cast", check=_cast_only),
}

REDUCTIONS: dict[Any, Reduction] = {
    aten.sum.dim_IntList: Reduction("sum", _dtype_none),
    aten.mean.dim: Reduction("mean", _dtype_none),
    aten.amax.default: Reduction("amax"),
    aten.amin.default: Reduction("amin"),
    aten.var.correction: Reduction("var"),
    aten._softmax.default: Reduction("softmax", _softmax_check),
    aten.softmax.int: Reduction("softmax", _softmax_check),
    aten._log_softmax.default: Reduction("log_softmax", _softmax_check),
    aten.log_softmax.int: Reduction("log_softmax", _softmax_check),
    aten.layer_norm.default: Reduction("layer_norm"),
    aten.rms_norm.default: Reduction("rms_norm"),
}

# Reductions that ATen already runs as one whole kernel: alone they are not worth a region.
WHOLE = {"softmax", "log_softmax", "layer_norm", "rms_norm"}


def lookup(target) -> Pointwise | Reduction | None:
    return POINTWISE.get(target) or REDUCTIONS.get(target)


def reduce_spec(target, args: tuple, kwargs: dict, rank: int) -> tuple[list[int], bool]:
    """(the reduced dims, normalized and sorted; keepdim) of a reduction call on a rank-`rank`
    input. Whole-row ops (softmax, norms) 'keep' their shape."""
    kind = REDUCTIONS[target].kind
    norm = lambda ds: sorted({d % max(rank, 1) for d in ds})  # noqa: E731
    if kind in ("softmax", "log_softmax"):
        return norm([args[1]]), True
    if kind in ("layer_norm", "rms_norm"):
        return list(range(rank - len(args[1]), rank)), True
    if kind == "var":
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = kwargs.get("keepdim", False)
    else:
        dims = args[1] if len(args) > 1 else kwargs.get("dim", [])
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dims = list(range(rank)) if dims is None or list(dims) == [] else list(dims)
    return norm(dims), bool(keep)
