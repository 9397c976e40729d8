"""Elementwise ops: unary and binary tables, comparisons, casts, activations.

Type promotion follows torch: arithmetic computes in the node's result dtype (an int tensor
plus a float scalar computes in float; a Python scalar is cast to the tensor's dtype), and a
comparison computes in `torch.result_type` of its operands. Operands are cast only where
their dtype differs, so FP16 graphs stay FP16.

Special values follow torch (issue 16.3; tests/test_special_values.py checks NaN, +-inf,
-0.0, denormals and empty tensors for every converter): sign(NaN) is 0, clamp keeps +-inf past a missing bound, and floor division and
remainder of floats are written as torch computes them (through fmod), not as floor(x / y).
"""
from __future__ import annotations

import math

import torch

from .builder import Builder, dtype_of, onnx_dtype, out_meta
from .registry import Refuse, converter

aten = torch.ops.aten

# op -> ONNX op type; the operand is cast to the result dtype first (sqrt of an int is float).
UNARY = {
    aten.relu.default: "Relu", aten.sigmoid.default: "Sigmoid", aten.tanh.default: "Tanh",
    aten.exp.default: "Exp", aten.log.default: "Log", aten.sqrt.default: "Sqrt",
    aten.reciprocal.default: "Reciprocal", aten.neg.default: "Neg", aten.abs.default: "Abs",
    aten.sin.default: "Sin", aten.cos.default: "Cos", aten.tan.default: "Tan",
    aten.asin.default: "Asin", aten.acos.default: "Acos", aten.atan.default: "Atan",
    aten.sinh.default: "Sinh", aten.cosh.default: "Cosh", aten.asinh.default: "Asinh",
    aten.acosh.default: "Acosh", aten.atanh.default: "Atanh",
    aten.floor.default: "Floor", aten.ceil.default: "Ceil", aten.round.default: "Round",
    aten.erf.default: "Erf", aten.hardswish.default: "HardSwish",
    aten.clone.default: "Identity", aten.alias.default: "Identity",
    aten.detach.default: "Identity", aten.lift_fresh_copy.default: "Identity",
}
# op -> ONNX op type; both operands computed in the result dtype. `alpha` (add/sub) scales
# the second operand first.
BINARY = {
    aten.add.Tensor: "Add", aten.add.Scalar: "Add", aten.sub.Tensor: "Sub",
    aten.sub.Scalar: "Sub", aten.mul.Tensor: "Mul", aten.mul.Scalar: "Mul",
    aten.div.Tensor: "Div", aten.div.Scalar: "Div", aten.maximum.default: "Max",
    aten.minimum.default: "Min", aten.pow.Tensor_Tensor: "Pow", aten.pow.Scalar: "Pow",
    aten.rsub.Scalar: "Sub", aten.rsub.Tensor: "Sub",
}
# op -> (ONNX op type, negate): computed in torch.result_type of the operands, result bool.
COMPARE = {
    aten.eq.Tensor: ("Equal", False), aten.eq.Scalar: ("Equal", False),
    aten.ne.Tensor: ("Equal", True), aten.ne.Scalar: ("Equal", True),
    aten.lt.Tensor: ("Less", False), aten.lt.Scalar: ("Less", False),
    aten.le.Tensor: ("LessOrEqual", False), aten.le.Scalar: ("LessOrEqual", False),
    aten.gt.Tensor: ("Greater", False), aten.gt.Scalar: ("Greater", False),
    aten.ge.Tensor: ("GreaterOrEqual", False), aten.ge.Scalar: ("GreaterOrEqual", False),
}
# op -> ONNX op type over bools (logical_* treat nonzero as true).
LOGICAL = {
    aten.logical_and.default: "And", aten.logical_or.default: "Or",
    aten.logical_xor.default: "Xor", aten.bitwise_and.Tensor: "And",
    aten.bitwise_or.Tensor: "Or", aten.bitwise_xor.Tensor: "Xor",
    aten.bitwise_and.Scalar: "And", aten.bitwise_or.Scalar: "Or", aten.bitwise_xor.Scalar: "Xor",
}
_BITWISE = {aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, aten.bitwise_xor.Tensor,
            aten.bitwise_and.Scalar, aten.bitwise_or.Scalar, aten.bitwise_xor.Scalar,
            aten.bitwise_not.default}


_BOOL_ARITH = {"Add": "Or", "Max": "Or", "Mul": "And", "Min": "And"}


def _unary(op_type):
    def convert(b: Builder, node):
        dt = out_meta(node).dtype
        x = b.tensor(node.args[0], dt)
        if op_type == "Relu" and not out_meta(node).is_floating_point():
            return b.op("Max", [x, b.scalar(0, dt)])  # ONNX Runtime has no integer Relu
        return b.op(op_type, [x])
    convert.__doc__ = f"unary elementwise -> ONNX {op_type}"
    return convert


def _binary(op_type):
    def convert(b: Builder, node):
        dt = out_meta(node).dtype
        if dt == torch.bool:  # torch: bool + bool is or, bool * bool is and
            if op_type not in _BOOL_ARITH:
                return Refuse(f"{op_type} of bool tensors (ONNX arithmetic has no bool)")
            return b.op(_BOOL_ARITH[op_type], [b.tensor(a, dt) for a in node.args[:2]])
        x, y = node.args[0], node.args[1]
        if node.target in (aten.rsub.Scalar, aten.rsub.Tensor):
            x, y = y, x  # rsub(self, other, alpha) = other - alpha * self
        alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1)
        xv, yv = b.tensor(x, dt), b.tensor(y, dt)
        if alpha != 1:  # sub: x - alpha * y; rsub (swapped above): other - alpha * self
            yv = b.op("Mul", [yv, b.scalar(alpha, dt)])
        return b.op(op_type, [xv, yv])
    convert.__doc__ = f"binary elementwise (broadcasting, alpha) -> ONNX {op_type}"
    return convert


def _compare(op_type, negate):
    def convert(b: Builder, node):
        dt = _promote(node.args[0], node.args[1])
        if dt == torch.bool and op_type == "Equal":  # TensorRT has no bool Equal: a == b is !(a ^ b)
            y = b.op("Xor", [b.tensor(node.args[0], dt), b.tensor(node.args[1], dt)])
            return y if negate else b.op("Not", [y])
        if dt == torch.bool:
            dt = torch.int32  # ONNX orders numbers, not bools
        y = b.op(op_type, [b.tensor(node.args[0], dt), b.tensor(node.args[1], dt)])
        return b.op("Not", [y]) if negate else y
    convert.__doc__ = f"comparison -> ONNX {op_type}{' + Not' if negate else ''}"
    return convert


def _logical(op_type, bitwise):
    def convert(b: Builder, node):
        if bitwise and out_meta(node).dtype != torch.bool:
            return Refuse("bitwise ops on integers need opset 18 (BitwiseAnd etc.)")
        return b.op(op_type, [b.tensor(a, torch.bool) for a in node.args[:2]])
    convert.__doc__ = f"logical op over bools -> ONNX {op_type}"
    return convert


def _promote(x, y) -> torch.dtype:
    """torch.result_type of two operands from their metadata (0-d tensors count as scalars)."""
    def proxy(a):
        if isinstance(a, torch.fx.Node):
            v = a.meta["val"]
            return torch.empty((1,) * min(v.dim(), 1), dtype=v.dtype)
        return a
    return torch.result_type(proxy(x), proxy(y))


def _row(op, fn, onnx_op):
    fn.__doc__ = f"{op._schema}   -> ONNX {onnx_op}"  # a table row's docstring: its signature
    converter(op)(fn)


for _op, _t in UNARY.items():
    _row(_op, _unary(_t), _t)
for _op, _t in BINARY.items():
    _row(_op, _binary(_t), _t)
for _op, (_t, _neg) in COMPARE.items():
    _row(_op, _compare(_t, _neg), _t)
for _op, _t in LOGICAL.items():
    _row(_op, _logical(_t, _op in _BITWISE), _t)


@converter(aten.logical_not.default, aten.bitwise_not.default)
def logical_not(b: Builder, node):
    """logical_not(Tensor self) -> Tensor;  bitwise_not(Tensor self) -> Tensor (bool only)"""
    if node.target in _BITWISE and out_meta(node).dtype != torch.bool:
        return Refuse("bitwise_not on integers needs opset 18 (BitwiseNot)")
    return b.op("Not", [b.tensor(node.args[0], torch.bool)])


@converter(aten.isnan.default)
def isnan(b: Builder, node):
    """isnan(Tensor self) -> Tensor"""
    return b.op("IsNaN", [b.tensor(node.args[0])])


@converter(aten.isinf.default)
def isinf(b: Builder, node):
    """isinf(Tensor self) -> Tensor"""
    return b.op("IsInf", [b.tensor(node.args[0])])


@converter(aten.rsqrt.default)
def rsqrt(b: Builder, node):
    """rsqrt(Tensor self) -> Tensor"""
    return b.op("Reciprocal", [b.op("Sqrt", [b.tensor(node.args[0], out_meta(node).dtype)])])


@converter(aten.trunc.default)
def trunc(b: Builder, node):
    """trunc(Tensor self) -> Tensor   (opset 17 has no Trunc: ceil below zero, floor above)"""
    x = b.tensor(node.args[0])
    if not out_meta(node).is_floating_point():
        return b.op("Identity", [x])
    return _trunc(b, x, out_meta(node).dtype)


def _trunc(b: Builder, x: str, dt) -> str:
    neg = b.op("Less", [x, b.scalar(0, dt)])
    return b.op("Where", [neg, b.op("Ceil", [x]), b.op("Floor", [x])])


@converter(aten.log2.default, aten.log10.default)
def log_base(b: Builder, node):
    """log2(Tensor self) -> Tensor;  log10(Tensor self) -> Tensor"""
    dt = out_meta(node).dtype
    base = 2.0 if node.target == aten.log2.default else 10.0
    return b.op("Div", [b.op("Log", [b.tensor(node.args[0], dt)]), b.scalar(math.log(base), dt)])


@converter(aten.log1p.default)
def log1p(b: Builder, node):
    """log1p(Tensor self) -> Tensor"""
    dt = out_meta(node).dtype
    return b.op("Log", [b.op("Add", [b.tensor(node.args[0], dt), b.scalar(1, dt)])])


@converter(aten.expm1.default)
def expm1(b: Builder, node):
    """expm1(Tensor self) -> Tensor"""
    dt = out_meta(node).dtype
    return b.op("Sub", [b.op("Exp", [b.tensor(node.args[0], dt)]), b.scalar(1, dt)])


@converter(aten.pow.Tensor_Scalar)
def pow_scalar(b: Builder, node):
    """pow.Tensor_Scalar(Tensor self, Scalar exponent) -> Tensor   (x**2 as x*x: exact, fast)"""
    dt = out_meta(node).dtype
    x, e = b.tensor(node.args[0], dt), node.args[1]
    if e == 2:
        return b.op("Mul", [x, x])
    if e == 1:
        return b.op("Identity", [x])
    if e == 0.5 and out_meta(node).is_floating_point():
        return b.op("Sqrt", [x])  # what torch's float kernel does (its CPU half kernel: pow)
    return b.op("Pow", [x, b.scalar(e, dt)])


@converter(aten.fmod.Tensor, aten.fmod.Scalar)
def fmod(b: Builder, node):
    """fmod.Tensor(Tensor self, Tensor other) -> Tensor   (C fmod: sign of the dividend)"""
    dt = out_meta(node).dtype
    return b.op("Mod", [b.tensor(node.args[0], dt), b.tensor(node.args[1], dt)], fmod=1)


@converter(aten.remainder.Tensor, aten.remainder.Scalar)
def remainder(b: Builder, node):
    """remainder.Tensor(Tensor self, Tensor other) -> Tensor   (Python %: sign of the divisor)"""
    dt = out_meta(node).dtype
    x, y = b.tensor(node.args[0], dt), b.tensor(node.args[1], dt)
    if not out_meta(node).is_floating_point():
        return b.op("Mod", [x, y], fmod=0)
    return _float_remainder(b, x, y, dt)


def _float_remainder(b: Builder, x: str, y: str, dt) -> str:
    """torch's float remainder: r = fmod(x, y), plus y where r is nonzero and its sign differs
    from y's (x - y * floor(x / y) differs at infinities: remainder(-2.5, inf) is inf)."""
    r = b.op("Mod", [x, y], fmod=1)
    zero = b.scalar(0, dt)
    differs = b.op("Xor", [b.op("Less", [r, zero]), b.op("Less", [y, zero])])
    fix = b.op("And", [b.op("Not", [b.op("Equal", [r, zero])]), differs])
    return b.op("Where", [fix, b.op("Add", [r, y]), r])


@converter(aten.div.Tensor_mode, aten.div.Scalar_mode)
def div_mode(b: Builder, node):
    """div.Tensor_mode(Tensor self, Tensor other, *, str? rounding_mode) -> Tensor"""
    mode = node.kwargs.get("rounding_mode", node.args[2] if len(node.args) > 2 else None)
    return _divide(b, node, node.args[0], node.args[1], mode)


@converter(aten.floor_divide.default, aten.floor_divide.Scalar)
def floor_divide(b: Builder, node):
    """floor_divide(Tensor self, Tensor other) -> Tensor"""
    return _divide(b, node, node.args[0], node.args[1], "floor")


def _divide(b: Builder, node, x, y, mode):
    dt = out_meta(node).dtype
    xv, yv = b.tensor(x, dt), b.tensor(y, dt)
    q = b.op("Div", [xv, yv])
    if mode is None:
        return q
    if out_meta(node).is_floating_point():
        return _float_floor_div(b, xv, yv, q, dt) if mode == "floor" else _trunc(b, q, dt)
    if mode == "trunc":
        return q  # integer Div truncates toward zero
    # floor for integers: step down where the truncated quotient is inexact and signs differ.
    zero = b.scalar(0, dt)
    inexact = b.op("Not", [b.op("Equal", [b.op("Mul", [q, yv]), xv])])
    signs = b.op("Xor", [b.op("Less", [xv, zero]), b.op("Less", [yv, zero])])
    fix = b.op("Cast", [b.op("And", [inexact, signs])], to=onnx_dtype(dt))
    return b.op("Sub", [q, fix])


def _float_floor_div(b: Builder, x: str, y: str, q: str, dt) -> str:
    """torch's float floor division (div_floor_floating), which goes through fmod so that
    infinities behave as in Python (-2.5 // inf is -1.0, inf // 3 is NaN):
    y == 0: x / y; d = (x - fmod(x, y)) / y, less 1 where fmod's sign differs from y's;
    d == 0: copysign(0, x / y); else floor(d), plus 1 where d - floor(d) > 0.5."""
    zero = b.scalar(0, dt)
    mod = b.op("Mod", [x, y], fmod=1)
    d = b.op("Div", [b.op("Sub", [x, mod]), y])
    differs = b.op("Xor", [b.op("Less", [y, zero]), b.op("Less", [mod, zero])])
    step = b.op("And", [b.op("Not", [b.op("Equal", [mod, zero])]), differs])
    d = b.op("Sub", [d, b.cast(step, dt)])
    fl = b.op("Floor", [d])
    fl = b.op("Add", [fl, b.cast(b.op("Greater", [b.op("Sub", [d, fl]), b.scalar(0.5, dt)]), dt)])
    fl = b.op("Where", [b.op("Equal", [d, zero]), b.op("Mul", [q, zero]), fl])  # copysign(0, q)
    return b.op("Where", [b.op("Equal", [y, zero]), q, fl])


@converter(aten.sign.default)
def sign(b: Builder, node):
    """sign(Tensor self) -> Tensor   (torch: sign(NaN) is 0; ONNX Sign gives NaN)"""
    dt = out_meta(node).dtype
    x = b.tensor(node.args[0], dt)
    y = b.op("Sign", [x])
    if not out_meta(node).is_floating_point():
        return y
    return b.op("Where", [b.op("IsNaN", [x]), b.scalar(0, dt), y])


@converter(aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device)
def to_copy(b: Builder, node):
    """_to_copy(Tensor self, *, ScalarType? dtype, Layout? layout, Device? device, bool? pin_memory, bool non_blocking, MemoryFormat? memory_format) -> Tensor"""
    x, dt = node.args[0], out_meta(node).dtype
    if dtype_of(x) == dt:
        return b.op("Identity", [b.tensor(x)])
    return b.cast(b.tensor(x), dt)


@converter(aten.where.self)
def where(b: Builder, node):
    """where.self(Tensor condition, Tensor self, Tensor other) -> Tensor"""
    dt = out_meta(node).dtype
    c, x, y = node.args
    return where_expr(b, b.tensor(c, torch.bool), b.tensor(x, dt), b.tensor(y, dt), dt)


def where_expr(b: Builder, c: str, x: str, y: str, dt) -> str:
    if dt == torch.bool:  # ONNX Runtime's CPU Where has no bool kernel: (c and x) or (!c and y)
        return b.op("Or", [b.op("And", [c, x]), b.op("And", [b.op("Not", [c]), y])])
    return b.op("Where", [c, x, y])


@converter(aten.where.ScalarSelf, aten.where.ScalarOther)
def where_scalar(b: Builder, node):
    """where.ScalarSelf(Tensor condition, Scalar self, Tensor other) -> Tensor;
    where.ScalarOther(Tensor condition, Tensor self, Scalar other) -> Tensor"""
    dt = out_meta(node).dtype
    c, x, y = node.args
    return where_expr(b, b.tensor(c, torch.bool), b.tensor(x, dt), b.tensor(y, dt), dt)


@converter(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(b: Builder, node):
    """masked_fill.Scalar(Tensor self, Tensor mask, Scalar value) -> Tensor"""
    dt = out_meta(node).dtype
    x, mask, value = node.args
    return where_expr(b, b.tensor(mask, torch.bool), b.tensor(value, dt), b.tensor(x, dt), dt)


@converter(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default,
           aten.hardtanh.default)
def clamp(b: Builder, node):
    """clamp(Tensor self, Scalar? min=None, Scalar? max=None) -> Tensor;
    hardtanh(Tensor self, Scalar min_val=-1, Scalar max_val=1) -> Tensor"""
    dt = out_meta(node).dtype
    args = list(node.args[1:])
    if node.target == aten.hardtanh.default:
        lo = node.kwargs.get("min_val", args[0] if args else -1)
        hi = node.kwargs.get("max_val", args[1] if len(args) > 1 else 1)
    elif node.target == aten.clamp_min.default:
        lo, hi = args[0], None
    elif node.target == aten.clamp_max.default:
        lo, hi = None, args[0]
    else:
        lo = node.kwargs.get("min", args[0] if args else None)
        hi = node.kwargs.get("max", args[1] if len(args) > 1 else None)
    if dt == torch.bool:
        return Refuse("clamp of bool tensors")
    x = b.tensor(node.args[0], dt)
    if not out_meta(node).is_floating_point():  # TensorRT clips floats only: Max/Min for ints
        y = x if lo is None else b.op("Max", [x, b.scalar(lo, dt)])
        return y if hi is None else b.op("Min", [y, b.scalar(hi, dt)])
    # A missing bound is +-inf, not Clip's default (ONNX Runtime's fp16 Clip defaults to
    # +-65504, turning inf into 65504).
    return b.op("Clip", [x, b.scalar(float("-inf") if lo is None else lo, dt),
                         b.scalar(float("inf") if hi is None else hi, dt)])


@converter(aten.clamp.Tensor)
def clamp_tensor(b: Builder, node):
    """clamp.Tensor(Tensor self, Tensor? min=None, Tensor? max=None) -> Tensor"""
    dt = out_meta(node).dtype
    lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
    hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
    y = b.tensor(node.args[0], dt)
    if lo is not None:
        y = b.op("Max", [y, b.tensor(lo, dt)])
    if hi is not None:
        y = b.op("Min", [y, b.tensor(hi, dt)])
    return y


@converter(aten.leaky_relu.default)
def leaky_relu(b: Builder, node):
    """leaky_relu(Tensor self, Scalar negative_slope=0.01) -> Tensor"""
    slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
    return b.op("LeakyRelu", [b.tensor(node.args[0])], alpha=float(slope))


@converter(aten.elu.default)
def elu(b: Builder, node):
    """elu(Tensor self, Scalar alpha=1, Scalar scale=1, Scalar input_scale=1) -> Tensor"""
    alpha, scale, in_scale = (list(node.args[1:]) + [1, 1, 1])[:3]
    if scale != 1 or in_scale != 1:
        return Refuse("elu with scale/input_scale != 1 (ONNX Elu has alpha only)")
    return b.op("Elu", [b.tensor(node.args[0])], alpha=float(alpha))


@converter(aten.gelu.default)
def gelu(b: Builder, node):
    """gelu(Tensor self, *, str approximate='none') -> Tensor

    Written out (Gelu is opset 20; TensorRT must parse it too):
    none: 0.5 * x * (1 + erf(x / sqrt(2)));
    tanh: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).
    """
    dt = out_meta(node).dtype
    approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    return gelu_expr(b, b.tensor(node.args[0], dt), dt, approx)


def gelu_expr(b: Builder, x: str, dt, approx: str) -> str:
    """GELU written out in exactly the forms ONNX Runtime's GeluFusion (erf: Div by sqrt 2)
    and FastGeluFusion (tanh: Pow 3, its "second formula") recognize, so that each becomes one
    Gelu / FastGelu kernel there instead of 5-8 elementwise passes over the activation;
    TensorRT fuses these forms as well. Any other arrangement computes the same numbers and
    silently stays unfused (bert-base on CPU: 48 extra nodes)."""
    if approx == "tanh":
        cube = b.op("Pow", [x, b.scalar(3.0, dt)])
        inner = b.op("Add", [x, b.op("Mul", [cube, b.scalar(0.044715, dt)])])
        t = b.op("Tanh", [b.op("Mul", [inner, b.scalar(math.sqrt(2 / math.pi), dt)])])
    else:
        t = b.op("Erf", [b.op("Div", [x, b.scalar(math.sqrt(2), dt)])])
    half_x = b.op("Mul", [x, b.scalar(0.5, dt)])
    return b.op("Mul", [half_x, b.op("Add", [t, b.scalar(1.0, dt)])])


@converter(aten.silu.default)
def silu(b: Builder, node):
    """silu(Tensor self) -> Tensor   = x * sigmoid(x)"""
    x = b.tensor(node.args[0])
    return b.op("Mul", [x, b.op("Sigmoid", [x])])


@converter(aten.hardsigmoid.default)
def hardsigmoid(b: Builder, node):
    """hardsigmoid(Tensor self) -> Tensor   = clip(x / 6 + 1 / 2, 0, 1)"""
    return b.op("HardSigmoid", [b.tensor(node.args[0])], alpha=1.0 / 6, beta=0.5)


@converter(aten.softplus.default)
def softplus(b: Builder, node):
    """softplus(Tensor self, Scalar beta=1, Scalar threshold=20) -> Tensor
    = x where x * beta > threshold, else log(1 + exp(beta * x)) / beta"""
    dt = out_meta(node).dtype
    beta, threshold = (list(node.args[1:]) + [1, 20])[:2]
    x = b.tensor(node.args[0], dt)
    bx = x if beta == 1 else b.op("Mul", [x, b.scalar(beta, dt)])
    sp = b.op("Softplus", [bx])
    if beta != 1:
        sp = b.op("Div", [sp, b.scalar(beta, dt)])
    return b.op("Where", [b.op("Greater", [bx, b.scalar(threshold, dt)]), x, sp])


@converter(aten.mish.default)
def mish(b: Builder, node):
    """mish(Tensor self) -> Tensor   = x * tanh(softplus(x))"""
    x = b.tensor(node.args[0])
    return b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])])
