"""Op coverage: one row per ATen (or fxc) op our ONNX converters support, each with sample
inputs (0-d, size-1 and empty shapes where the op allows them, several dtypes), lowered
alone to ONNX, run through ONNX Runtime and compared with PyTorch.

Per-dtype tolerances (one op, so tighter than whole models): float32 rtol 1e-5 / atol 1e-5
(ORT's exp/erf/tanh differ from torch's in the last bits), float16 rtol 2e-3 / atol 1e-3
(ORT's CPU provider computes fp16 ops in fp32 and rounds once), integers and bools exact.

`CASES` is also read by tests/test_trt_backend.py, which checks every ONNX op type these
samples emit against TensorRT's ONNX support matrix.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

import pytest
import torch
import torch.fx as fx

import fxc.ops  # (torch.ops.fxc.*)
from fxc.lowering import supported_targets, to_onnx
from fxc.runtime.ort_engine import OrtEngine

aten = torch.ops.aten
F32, F16, I64, I32, B = torch.float32, torch.float16, torch.int64, torch.int32, torch.bool
TOL = {F32: dict(rtol=1e-5, atol=1e-5), F16: dict(rtol=2e-3, atol=1e-3),
       torch.float64: dict(rtol=1e-7, atol=1e-7)}
_gen = torch.Generator().manual_seed(0)


def t(*shape, dtype=F32, low=-3.0, high=3.0):
    """A deterministic sample tensor: uniform in [low, high) for floats, integers in range,
    random bools."""
    if dtype == B:
        return torch.rand(shape, generator=_gen) > 0.5
    x = torch.rand(shape, generator=_gen, dtype=torch.float64) * (high - low) + low
    return x.round().to(dtype) if not dtype.is_floating_point else x.to(dtype)


def pos(*shape, dtype=F32):
    return t(*shape, dtype=dtype, low=0.5, high=4.0)


@dataclasses.dataclass
class Case:
    op: Any
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    outputs: tuple | None = None   # which outputs of a multi-output op to compare
    label: str = ""
    values: bool = True            # False: uninitialized (empty*): compare shape and dtype

    @property
    def id(self) -> str:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else
                  ("[..]" if isinstance(a, (list, tuple)) else a) for a in self.args]
        dts = sorted({str(a.dtype).replace("torch.", "") for a in _tensors(self.args)})
        return f"{_opname(self.op)}-{self.label or ''}{shapes}-{'/'.join(dts)}".replace(" ", "")


def _opname(op) -> str:
    return f"{op.namespace}.{op._opname}.{op._overloadname}"


def _tensors(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (x for x in a if isinstance(x, torch.Tensor))


SHAPES = [(), (1,), (2, 3), (0, 3)]   # 0-d, size-1, plain, empty


def unary(op, dtypes=(F32, F16), domain=t, shapes=SHAPES, **kw):
    return [Case(op, (domain(*s, dtype=d),), kw) for d in dtypes for s in shapes]


def binary(op, dtypes=(F32, F16, I64), scalar=None, rhs=t):
    cases = []
    for d in dtypes:
        cases += [Case(op, (t(2, 3, dtype=d), rhs(2, 3, dtype=d))),
                  Case(op, (t(2, 1, 3, dtype=d), rhs(4, 1, dtype=d)), label="bcast"),
                  Case(op, (t(dtype=d), rhs(1, 3, dtype=d)), label="0d"),
                  Case(op, (t(0, 3, dtype=d), rhs(3, dtype=d)), label="empty")]
    if scalar is not None:
        cases += [Case(op, (t(2, 3, dtype=I64), rhs(2, 3, dtype=F32)), label="promote")]
    return cases


def scalar_op(op, values=(2, 0.5, -1.5), dtypes=(F32, F16, I64), tensor=t):
    return [Case(op, (tensor(2, 3, dtype=d), v)) for d in dtypes for v in values] + \
        [Case(op, (tensor(dtype=F32), 3))]


def nonzero(*shape, dtype=F32):
    x = t(*shape, dtype=dtype, low=0.5, high=3.0)
    sign = t(*shape, dtype=B)
    return torch.where(sign, x, -x)


def _rows() -> dict[Any, list[Case]]:
    r: dict[Any, list[Case]] = {}
    for op in (aten.relu.default, aten.neg.default, aten.abs.default, aten.sign.default,
               aten.clone.default, aten.alias.default, aten.detach.default,
               aten.lift_fresh_copy.default):
        r[op] = unary(op, dtypes=(F32, F16, I64))
    for op in (aten.sigmoid.default, aten.tanh.default, aten.exp.default, aten.sin.default,
               aten.cos.default, aten.atan.default, aten.sinh.default, aten.cosh.default,
               aten.asinh.default, aten.floor.default, aten.ceil.default, aten.round.default,
               aten.erf.default, aten.trunc.default, aten.hardswish.default,
               aten.hardsigmoid.default, aten.silu.default, aten.mish.default,
               aten.expm1.default, aten.leaky_relu.default, aten.elu.default):
        r[op] = unary(op)
    r[aten.tan.default] = unary(aten.tan.default, domain=lambda *s, dtype: t(*s, dtype=dtype, low=-1, high=1))
    for op in (aten.asin.default, aten.acos.default, aten.atanh.default):
        r[op] = unary(op, domain=lambda *s, dtype: t(*s, dtype=dtype, low=-0.9, high=0.9))
    r[aten.acosh.default] = unary(aten.acosh.default, domain=lambda *s, dtype: pos(*s, dtype=dtype) + 1)
    for op in (aten.log.default, aten.sqrt.default, aten.rsqrt.default, aten.reciprocal.default,
               aten.log2.default, aten.log10.default, aten.log1p.default):
        r[op] = unary(op, domain=pos)
    r[aten.sqrt.default] += [Case(aten.sqrt.default, (pos(2, 3, dtype=F32).round().to(I64),),
                                  label="int")]
    r[aten.gelu.default] = unary(aten.gelu.default) + unary(aten.gelu.default, approximate="tanh")
    r[aten.softplus.default] = unary(aten.softplus.default) + [
        Case(aten.softplus.default, (t(2, 3, low=-8, high=8), 2.0, 5.0), label="beta")]
    r[aten.logical_not.default] = unary(aten.logical_not.default, dtypes=(B, F32))
    r[aten.bitwise_not.default] = unary(aten.bitwise_not.default, dtypes=(B,))
    r[aten.isnan.default] = [Case(aten.isnan.default, (torch.tensor([1.0, float("nan"), 0.0]),))]
    r[aten.isinf.default] = [Case(aten.isinf.default, (torch.tensor([1.0, float("inf"), -float("inf")]),))]
    r[aten.to.dtype] = [Case(aten.to.dtype, (t(2, 3), F16))]
    r[aten.to.dtype_layout] = [Case(aten.to.dtype_layout, (t(2, 3),), {"dtype": I64})]
    r[aten.to.device] = [Case(aten.to.device, (t(2, 3), torch.device("cpu"), F16))]
    r[aten._to_copy.default] = [Case(aten._to_copy.default, (t(2, 3, dtype=a),), {"dtype": b})
                                for a, b in [(F32, F16), (F16, F32), (F32, I64), (I64, F32),
                                             (F32, B), (B, F32), (I64, I32), (F32, F32)]] + [
        Case(aten._to_copy.default, (t(dtype=F32),), {"dtype": F16})]

    r[aten.add.Tensor] = binary(aten.add.Tensor, scalar=True) + [
        Case(aten.add.Tensor, (t(2, 3), t(2, 3)), {"alpha": 2}, label="alpha"),
        Case(aten.add.Tensor, (t(2, 3, dtype=B), t(2, 3, dtype=B)), label="bool"),
        Case(aten.add.Tensor, (t(2, 3, dtype=I64), 2.5), label="int+float")]
    r[aten.sub.Tensor] = binary(aten.sub.Tensor, scalar=True) + [
        Case(aten.sub.Tensor, (t(2, 3), t(3)), {"alpha": 0.5}, label="alpha")]
    r[aten.mul.Tensor] = binary(aten.mul.Tensor, scalar=True) + [
        Case(aten.mul.Tensor, (t(2, 3, dtype=B), t(2, 3, dtype=B)), label="bool"),
        Case(aten.mul.Tensor, (t(2, 3, dtype=F16), torch.tensor(3.0)), label="0d-f32")]
    r[aten.div.Tensor] = binary(aten.div.Tensor, dtypes=(F32, F16), rhs=nonzero) + [
        Case(aten.div.Tensor, (t(2, 3, dtype=I64), nonzero(2, 3).round().clamp(1, 3).to(I64)),
             label="int/int")]
    r[aten.maximum.default] = binary(aten.maximum.default)
    r[aten.minimum.default] = binary(aten.minimum.default)
    r[aten.pow.Tensor_Tensor] = [Case(aten.pow.Tensor_Tensor, (pos(2, 3), t(2, 3))),
                                 Case(aten.pow.Tensor_Tensor, (pos(2, 3), t(3)), label="bcast")]
    r[aten.pow.Scalar] = [Case(aten.pow.Scalar, (2.0, t(2, 3)))]
    r[aten.pow.Tensor_Scalar] = scalar_op(aten.pow.Tensor_Scalar, values=(2, 3, 0.5, 1, -1),
                                          dtypes=(F32, F16), tensor=pos) + [
        Case(aten.pow.Tensor_Scalar, (t(2, 3, dtype=I64), 2), label="int")]
    for op in (aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar):
        r[op] = scalar_op(op)
    r[aten.div.Scalar] = scalar_op(aten.div.Scalar, dtypes=(F32, F16))
    r[aten.rsub.Scalar] = scalar_op(aten.rsub.Scalar)
    r[aten.rsub.Tensor] = [Case(aten.rsub.Tensor, (t(2, 3), t(3)), {"alpha": 2})]
    for op in COMPARE_OPS:
        r[op] = binary(op, dtypes=(F32, I64, B) if "eq" in str(op) or "ne" in str(op)
                       else (F32, I64)) + [Case(op, (t(2, 3, dtype=I64), t(2, 3)), label="mixed")]
    for op in COMPARE_SCALAR_OPS:
        r[op] = [Case(op, (t(2, 3, dtype=d), v)) for d in (F32, I64) for v in (0, 1.5)] + [
            Case(op, (t(dtype=F32), 0)), Case(op, (t(0, 2), 0))]
    for op in (aten.logical_and.default, aten.logical_or.default, aten.logical_xor.default):
        r[op] = binary(op, dtypes=(B, F32))
    for op in (aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, aten.bitwise_xor.Tensor):
        r[op] = binary(op, dtypes=(B,))
    for op in (aten.bitwise_and.Scalar, aten.bitwise_or.Scalar, aten.bitwise_xor.Scalar):
        r[op] = [Case(op, (t(2, 3, dtype=B), True)), Case(op, (t(dtype=B), False))]
    r[aten.fmod.Tensor] = [Case(aten.fmod.Tensor, (t(2, 3, dtype=d), nonzero(2, 3).to(d) if d != I64
                                                   else torch.tensor([[2, -3, 1]] * 2)))
                           for d in (F32, I64)]
    r[aten.fmod.Scalar] = [Case(aten.fmod.Scalar, (t(2, 3, dtype=d, low=-7, high=7), 3)) for d in (F32, I64)]
    r[aten.remainder.Tensor] = [
        Case(aten.remainder.Tensor, (t(2, 3, low=-7, high=7), nonzero(2, 3))),
        Case(aten.remainder.Tensor, (t(2, 3, dtype=I64, low=-7, high=7), torch.tensor([[2, -3, 4]] * 2)))]
    r[aten.remainder.Scalar] = [Case(aten.remainder.Scalar, (t(2, 3, dtype=d, low=-7, high=7), -3))
                                for d in (F32, I64)]
    int_num = t(2, 4, dtype=I64, low=-9, high=9)
    int_den = torch.tensor([[2, -3, 4, -1], [-2, 3, 5, 7]])
    r[aten.div.Tensor_mode] = [
        Case(aten.div.Tensor_mode, (t(2, 4, low=-9, high=9), nonzero(2, 4)), {"rounding_mode": m})
        for m in ("floor", "trunc", None)] + [
        Case(aten.div.Tensor_mode, (int_num, int_den), {"rounding_mode": m}, label="int")
        for m in ("floor", "trunc")]
    r[aten.div.Scalar_mode] = [Case(aten.div.Scalar_mode, (int_num, -3), {"rounding_mode": "floor"})]
    r[aten.floor_divide.default] = [Case(aten.floor_divide.default, (int_num, int_den)),
                                    Case(aten.floor_divide.default, (t(2, 4), nonzero(2, 4)))]
    r[aten.floor_divide.Scalar] = [Case(aten.floor_divide.Scalar, (int_num, 4))]
    r[aten.where.self] = [Case(aten.where.self, (t(2, 3, dtype=B), t(2, 3, dtype=d), t(1, 3, dtype=d)))
                          for d in (F32, F16, I64, B)] + [
        Case(aten.where.self, (t(2, 3, dtype=B), t(2, 3), torch.tensor(0.0, dtype=torch.float64)),
             label="0d"),
        Case(aten.where.self, (t(0, 3, dtype=B), t(0, 3), t(3)), label="empty")]
    r[aten.where.ScalarSelf] = [Case(aten.where.ScalarSelf, (t(2, 3, dtype=B), 1.5, t(2, 3)))]
    r[aten.where.ScalarOther] = [Case(aten.where.ScalarOther, (t(2, 3, dtype=B), t(2, 3, dtype=I64), 0))]
    r[aten.masked_fill.Scalar] = [Case(aten.masked_fill.Scalar, (t(2, 3, dtype=d), t(2, 3, dtype=B), 7))
                                  for d in (F32, I64)]
    r[aten.masked_fill.Tensor] = [Case(aten.masked_fill.Tensor, (t(2, 3), t(1, 3, dtype=B), torch.tensor(-1.0)))]
    r[aten.clamp.default] = [Case(aten.clamp.default, (t(2, 3, dtype=d), lo, hi))
                             for d in (F32, F16, I64) for lo, hi in [(-1, 1), (None, 0), (0, None)]] + [
        Case(aten.clamp.default, (t(), -0.5, 0.5), label="0d")]
    r[aten.clamp_min.default] = [Case(aten.clamp_min.default, (t(2, 3), 0.5))]
    r[aten.clamp_max.default] = [Case(aten.clamp_max.default, (t(2, 3, dtype=I64), 1))]
    r[aten.clamp.Tensor] = [Case(aten.clamp.Tensor, (t(2, 3), t(3, low=-3, high=0), t(2, 3, low=0, high=3)))]
    r[aten.hardtanh.default] = [Case(aten.hardtanh.default, (t(2, 3, dtype=d), 0.0, 6.0)) for d in (F32, F16)] + \
        unary(aten.hardtanh.default)

    # -- nn ----------------------------------------------------------------------------------
    conv = aten.convolution.default
    r[conv] = [
        Case(conv, (t(1, 3, 8, 8), t(4, 3, 3, 3), t(4), [1, 1], [1, 1], [1, 1], False, [0, 0], 1)),
        Case(conv, (t(2, 4, 7, 9), t(4, 2, 3, 3), None, [2, 1], [0, 2], [2, 1], False, [0, 0], 2),
             label="groups-dil"),
        Case(conv, (t(1, 4, 6, 6), t(4, 1, 3, 3), t(4), [1, 1], [1, 1], [1, 1], False, [0, 0], 4),
             label="depthwise"),
        Case(conv, (t(1, 3, 10), t(5, 3, 3), t(5), [2], [1], [1], False, [0], 1), label="1d"),
        Case(conv, (t(1, 4, 5, 5), t(4, 2, 3, 3), t(2), [2, 2], [1, 1], [1, 1], True, [1, 1], 1),
             label="transposed"),
        Case(conv, (t(1, 3, 8, 8, dtype=F16), t(4, 3, 3, 3, dtype=F16), t(4, dtype=F16), [1, 1],
                    [1, 1], [1, 1], False, [0, 0], 1), label="fp16")]
    bn = aten._native_batch_norm_legit_no_training.default
    r[bn] = [Case(bn, (t(2, 3, 4, 4), t(3), t(3), t(3), pos(3), 0.1, 1e-5), outputs=(0,)),
             Case(bn, (t(4, 3), None, None, t(3), pos(3), 0.1, 1e-3), outputs=(0,), label="2d")]
    r[aten.layer_norm.default] = [
        Case(aten.layer_norm.default, (t(2, 5, 8), [8], t(8), t(8), 1e-5)),
        Case(aten.layer_norm.default, (t(2, 5, 8), [5, 8], None, None, 1e-5), label="2dims"),
        Case(aten.layer_norm.default, (t(3, 8, dtype=F16), [8], t(8, dtype=F16), t(8, dtype=F16), 1e-5),
             label="fp16")]
    for op in (aten.native_batch_norm.default, aten._native_batch_norm_legit.default):
        r[op] = [Case(op, (t(2, 3, 4), t(3), t(3), t(3), pos(3), False, 0.1, 1e-5), outputs=(0,))]
    r[aten.rms_norm.default] = [
        Case(aten.rms_norm.default, (t(2, 5, 8), [8], t(8), 1e-6)),
        Case(aten.rms_norm.default, (t(2, 5, 8), [5, 8]), label="noweight"),
        Case(aten.rms_norm.default, (t(3, 8, dtype=F16), [8], t(8, dtype=F16)), label="fp16")]
    r[aten.native_layer_norm.default] = [
        Case(aten.native_layer_norm.default, (t(2, 8), [8], t(8), t(8), 1e-5), outputs=(0,))]
    for op in (aten.softmax.int, aten.log_softmax.int):
        r[op] = [Case(op, (t(2, 5), -1)), Case(op, (t(2, 5, 3), 1)), Case(op, (t(4), 0), label="1d"),
                 Case(op, (t(2, 5, dtype=F16), -1), label="fp16"), Case(op, (t(0, 5), -1))]
    r[aten._softmax.default] = [Case(aten._softmax.default, (t(2, 5), -1, False))]
    r[aten._log_softmax.default] = [Case(aten._log_softmax.default, (t(2, 5), 1, False))]
    sdpa = aten.scaled_dot_product_attention.default
    r[sdpa] = [
        Case(sdpa, (t(2, 3, 5, 8), t(2, 3, 6, 8), t(2, 3, 6, 4))),
        Case(sdpa, (t(1, 2, 5, 8), t(1, 2, 5, 8), t(1, 2, 5, 8)), {"is_causal": True}, label="causal"),
        Case(sdpa, (t(1, 2, 4, 8), t(1, 2, 6, 8), t(1, 2, 6, 8), t(4, 6, dtype=B) | torch.eye(4, 6, dtype=B)),
             label="boolmask"),
        Case(sdpa, (t(1, 2, 4, 8), t(1, 2, 6, 8), t(1, 2, 6, 8), t(1, 1, 4, 6)), {"scale": 0.3},
             label="floatmask"),
        Case(sdpa, (t(5, 8), t(6, 8), t(6, 8)), label="2d")]
    r[aten.linear.default] = [
        Case(aten.linear.default, (t(4, 8), t(5, 8), t(5))),
        Case(aten.linear.default, (t(2, 3, 8), t(5, 8), t(5)), label="3d"),
        Case(aten.linear.default, (t(8), t(5, 8)), label="1d-nobias"),
        Case(aten.linear.default, (t(0, 8), t(5, 8), t(5)), label="empty"),
        Case(aten.linear.default, (t(4, 8, dtype=F16), t(5, 8, dtype=F16), t(5, dtype=F16)), label="fp16")]
    r[aten.matmul.default] = [
        Case(aten.matmul.default, (t(4, 8), t(8, 3))),
        Case(aten.matmul.default, (t(8), t(8, 3)), label="1d@2d"),
        Case(aten.matmul.default, (t(2, 4, 8), t(8)), label="3d@1d"),
        Case(aten.matmul.default, (t(8), t(8)), label="1d@1d"),
        Case(aten.matmul.default, (t(2, 1, 4, 8), t(3, 8, 2)), label="bcast")]
    r[aten.mm.default] = [Case(aten.mm.default, (t(4, 8), t(8, 3)))]
    r[aten.bmm.default] = [Case(aten.bmm.default, (t(2, 4, 8), t(2, 8, 3)))]
    r[aten.addmm.default] = [Case(aten.addmm.default, (t(3), t(4, 8), t(8, 3))),
                             Case(aten.addmm.default, (t(4, 3), t(4, 8), t(8, 3)), {"beta": 0.5, "alpha": 2})]
    r[aten.baddbmm.default] = [Case(aten.baddbmm.default, (t(2, 4, 3), t(2, 4, 8), t(2, 8, 3)),
                                    {"beta": 0.5, "alpha": 2})]
    r[aten.embedding.default] = [
        Case(aten.embedding.default, (t(10, 4), t(2, 3, dtype=I64, low=0, high=9))),
        Case(aten.embedding.default, (t(10, 4), torch.tensor(3)), label="0d")]
    mp = aten.max_pool2d_with_indices.default
    r[mp] = [Case(mp, (t(1, 2, 8, 8), [3, 3], [2, 2], [1, 1]), outputs=(0,)),
             Case(mp, (t(1, 2, 7, 7), [2, 2], [2, 2], [0, 0], [1, 1], True), outputs=(0,), label="ceil"),
             Case(mp, (t(1, 2, 9, 9), [3, 3], [1, 1], [0, 0], [2, 2]), outputs=(0,), label="dilated")]
    r[aten.max_pool1d_with_indices.default] = [
        Case(aten.max_pool1d_with_indices.default, (t(1, 2, 9), [3], [2]), outputs=(0,))]
    r[aten.max_pool3d_with_indices.default] = [
        Case(aten.max_pool3d_with_indices.default, (t(1, 2, 4, 4, 4), [2, 2, 2], [2, 2, 2]), outputs=(0,))]
    r[aten.max_pool2d.default] = [Case(aten.max_pool2d.default, (t(1, 2, 8, 8), [2, 2]))]
    r[aten.avg_pool2d.default] = [
        Case(aten.avg_pool2d.default, (t(1, 2, 8, 8), [3, 3], [2, 2], [1, 1])),
        Case(aten.avg_pool2d.default, (t(1, 2, 8, 8), [3, 3], [2, 2], [1, 1], False, False), label="nopad")]
    r[aten.avg_pool1d.default] = [Case(aten.avg_pool1d.default, (t(1, 2, 9), [3], [2]))]
    r[aten.avg_pool3d.default] = [Case(aten.avg_pool3d.default, (t(1, 2, 4, 4, 4), [2, 2, 2]))]
    for op in (aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default):
        r[op] = [Case(op, (t(1, 3, 6, 6), [1, 1])), Case(op, (t(2, 3, 6, 4), [3, 2]), label="even")]
    r[aten.adaptive_avg_pool1d.default] = [Case(aten.adaptive_avg_pool1d.default, (t(1, 3, 6), [2]))]
    r[aten.upsample_nearest2d.vec] = [Case(aten.upsample_nearest2d.vec, (t(1, 2, 3, 4), [6, 8], None)),
                                      Case(aten.upsample_nearest2d.vec, (t(1, 2, 3, 4), None, [2.0, 3.0]))]
    r[aten.upsample_nearest2d.default] = [Case(aten.upsample_nearest2d.default, (t(1, 2, 3, 4), [6, 12]))]
    r[aten.upsample_bilinear2d.vec] = [
        Case(aten.upsample_bilinear2d.vec, (t(1, 2, 3, 4), [6, 8], ac, None)) for ac in (False, True)]
    r[aten.upsample_bilinear2d.default] = [
        Case(aten.upsample_bilinear2d.default, (t(1, 2, 3, 4), [5, 7], False))]

    # -- shapes --------------------------------------------------------------------------------
    for op in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
        r[op] = [Case(op, (t(2, 6), [3, 4])), Case(op, (t(2, 6), [-1])), Case(op, (t(1), [])),
                 Case(op, (t(), [1, 1])), Case(op, (t(0, 3), [3, 0])),
                 Case(op, (t(2, 6, dtype=I64), [12, 1]))]
    r[aten.flatten.using_ints] = [Case(aten.flatten.using_ints, (t(2, 3, 4), 1, 2))]
    r[aten.unflatten.int] = [Case(aten.unflatten.int, (t(2, 12), 1, [3, 4]))]
    r[aten.permute.default] = [Case(aten.permute.default, (t(2, 3, 4), [2, 0, 1])),
                               Case(aten.permute.default, (t(2, 3), [-1, 0])),
                               Case(aten.permute.default, (t(), []))]
    r[aten.transpose.int] = [Case(aten.transpose.int, (t(2, 3, 4), 0, -1)),
                             Case(aten.transpose.int, (t(3), 0, 0))]
    r[aten.t.default] = [Case(aten.t.default, (t(2, 3),)), Case(aten.t.default, (t(3),))]
    r[aten.expand.default] = [Case(aten.expand.default, (t(3, 1), [2, 3, 4])),
                              Case(aten.expand.default, (t(), [2, 2])),
                              Case(aten.expand.default, (t(1, 4, dtype=B), [0, 4]))]
    r[aten.repeat.default] = [Case(aten.repeat.default, (t(2, 3), [2, 1])),
                              Case(aten.repeat.default, (t(3), [2, 2]))]
    r[aten.slice.Tensor] = [Case(aten.slice.Tensor, (t(5, 4), 0, 1, 4)),
                            Case(aten.slice.Tensor, (t(5, 4), 1, -3, 2**63 - 1, 2)),
                            Case(aten.slice.Tensor, (t(5, 4), 0, 3, 1), label="empty"),
                            Case(aten.slice.Tensor, (t(5, 4, dtype=I64), 1, None, None))]
    r[aten.select.int] = [Case(aten.select.int, (t(5, 4), 0, 2)), Case(aten.select.int, (t(5, 4), 1, -1)),
                          Case(aten.select.int, (t(3), 0, 1))]
    r[aten.narrow.default] = [Case(aten.narrow.default, (t(5, 4), 1, 1, 2))]
    r[aten.cat.default] = [Case(aten.cat.default, ([t(2, 3), t(1, 3)], 0)),
                           Case(aten.cat.default, ([t(2, 3), t(2, 1, dtype=F16)], -1), label="promote"),
                           Case(aten.cat.default, ([t(2, 3), t(0)], 0), label="legacy-empty"),
                           Case(aten.cat.default, ([t(2, 3, dtype=B), t(2, 3, dtype=B)], 1))]
    r[aten.stack.default] = [Case(aten.stack.default, ([t(2, 3), t(2, 3)], 1)),
                             Case(aten.stack.default, ([t(), t()],))]
    r[aten.split_with_sizes.default] = [Case(aten.split_with_sizes.default, (t(6, 4), [1, 2, 3])),
                                        Case(aten.split_with_sizes.default, (t(6, 4), [4], 1))]
    r[aten.split.Tensor] = [Case(aten.split.Tensor, (t(7, 4), 3)), Case(aten.split.Tensor, (t(7, 4), 2, 1))]
    r[aten.unbind.int] = [Case(aten.unbind.int, (t(3, 4), 0)), Case(aten.unbind.int, (t(3, 1), 1))]
    r[aten.squeeze.default] = [Case(aten.squeeze.default, (t(1, 3, 1),)), Case(aten.squeeze.default, (t(),))]
    r[aten.squeeze.dim] = [Case(aten.squeeze.dim, (t(1, 3, 1), -1)), Case(aten.squeeze.dim, (t(2, 3), 0))]
    r[aten.squeeze.dims] = [Case(aten.squeeze.dims, (t(1, 3, 1), [0, 2])), Case(aten.squeeze.dims, (t(2, 1), [0]))]
    r[aten.unsqueeze.default] = [Case(aten.unsqueeze.default, (t(2, 3), 0)),
                                 Case(aten.unsqueeze.default, (t(2, 3), -1)),
                                 Case(aten.unsqueeze.default, (t(), 0))]
    r[aten.flip.default] = [Case(aten.flip.default, (t(3, 4), [0, 1])), Case(aten.flip.default, (t(3, 4), [-1]))]
    r[aten.roll.default] = [Case(aten.roll.default, (t(3, 4), [1, -2], [0, 1])),
                            Case(aten.roll.default, (t(3, 4), [5]))]
    r[aten.tril.default] = [Case(aten.tril.default, (t(4, 5),)), Case(aten.tril.default, (t(2, 4, 5), -1))]
    r[aten.triu.default] = [Case(aten.triu.default, (t(4, 5), 1)),
                            Case(aten.triu.default, (t(4, 4, dtype=B),))]
    r[aten.constant_pad_nd.default] = [Case(aten.constant_pad_nd.default, (t(2, 3), [1, 2], 0.5)),
                                       Case(aten.constant_pad_nd.default, (t(1, 2, 3), [1, 1, 0, 2])),
                                       Case(aten.constant_pad_nd.default, (t(2, 5), [-1, 1]), label="crop")]
    for op, x in ((aten.reflection_pad1d.default, t(1, 2, 5)), (aten.replication_pad1d.default, t(1, 2, 5))):
        r[op] = [Case(op, (x, [2, 1]))]
    for op in (aten.reflection_pad2d.default, aten.replication_pad2d.default):
        r[op] = [Case(op, (t(1, 2, 4, 5), [1, 2, 2, 1]))]
    for op in (aten.reflection_pad3d.default, aten.replication_pad3d.default):
        r[op] = [Case(op, (t(1, 1, 3, 4, 5), [1, 1, 1, 1, 1, 1]))]
    r[aten.index_select.default] = [Case(aten.index_select.default, (t(5, 4), 0, torch.tensor([4, 0, 0]))),
                                    Case(aten.index_select.default, (t(5, 4), 1, torch.tensor(2)))]
    r[aten.gather.default] = [Case(aten.gather.default, (t(3, 4), 1, torch.tensor([[0, 3], [1, 1], [2, 0]])))]
    ix = torch.tensor([[0, 2], [1, -1]])
    r[aten.index.Tensor] = [Case(aten.index.Tensor, (t(3, 4, 5), [ix])),
                            Case(aten.index.Tensor, (t(3, 4, 5), [None, ix]), label="dim1"),
                            Case(aten.index.Tensor, (t(3, 4, 5), [ix, torch.tensor([1, 0])]), label="2idx"),
                            Case(aten.index.Tensor, (t(3, 4, 5), [None, ix, torch.tensor([3])]), label="adjacent"),
                            Case(aten.index.Tensor, (t(3, 4, 5), [ix, None, torch.tensor([1, 0])]),
                                 label="split")]
    r[aten.as_strided.default] = [Case(aten.as_strided.default, (t(4, 6), [3, 3], [6, 2], 1)),
                                  Case(aten.as_strided.default, (t(12), [2, 2, 3], [6, 3, 1]))]
    r[aten.copy.default] = [Case(aten.copy.default, (t(2, 3), t(3, dtype=I64)))]

    # -- constants -----------------------------------------------------------------------------
    r[aten.full.default] = [Case(aten.full.default, ([2, 3], 1.5)), Case(aten.full.default, ([], 2), {"dtype": I64})]
    r[aten.zeros.default] = [Case(aten.zeros.default, ([2, 3],))]
    r[aten.ones.default] = [Case(aten.ones.default, ([0, 3],), {"dtype": B})]
    r[aten.empty.memory_format] = [Case(aten.empty.memory_format, ([2, 3],), values=False)]
    r[aten.empty_strided.default] = [Case(aten.empty_strided.default, ([2, 3], [3, 1]), values=False)]
    r[aten.arange.default] = [Case(aten.arange.default, (5,))]
    r[aten.arange.start] = [Case(aten.arange.start, (2, 7))]
    r[aten.arange.start_step] = [Case(aten.arange.start_step, (0.0, 1.0, 0.25)),
                                 Case(aten.arange.start_step, (10, 0, -3))]
    r[aten.scalar_tensor.default] = [Case(aten.scalar_tensor.default, (-2.5,))]
    r[aten.eye.default] = [Case(aten.eye.default, (3,))]
    r[aten.linspace.default] = [Case(aten.linspace.default, (0.0, 1.0, 5))]
    for op in (aten.zeros_like.default, aten.ones_like.default):
        r[op] = [Case(op, (t(2, 3, dtype=I64),))]
    r[aten.empty_like.default] = [Case(aten.empty_like.default, (t(2, 3, dtype=I64),), values=False)]
    r[aten.full_like.default] = [Case(aten.full_like.default, (t(2, 3), 7.0))]
    r[aten.fill.Scalar] = [Case(aten.fill.Scalar, (t(2, 3), 4))]
    r[aten.new_zeros.default] = [Case(aten.new_zeros.default, (t(2, 3), [4]))]
    r[aten.new_ones.default] = [Case(aten.new_ones.default, (t(2, 3), [4]))]
    r[aten.new_full.default] = [Case(aten.new_full.default, (t(2, 3), [4], 2.0))]
    r[aten.new_empty.default] = [Case(aten.new_empty.default, (t(2, 3), [4]), values=False)]

    # -- reductions ----------------------------------------------------------------------------
    for op in (aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default):
        dts = (F32, F16, I64) if op != aten.mean.dim else (F32, F16)
        r[op] = [Case(op, (t(2, 3, 4, dtype=d), [1])) for d in dts] + [
            Case(op, (t(2, 3, 4), [0, -1], True), label="keepdim"),
            Case(op, (t(), [0]), label="0d"),
            Case(op, (t(1, 3, 5, 5), [-1, -2], True), label="gap")]
    r[aten.sum.dim_IntList] += [Case(aten.sum.dim_IntList, (t(2, 3, dtype=B), [1]), label="bool"),
                                Case(aten.sum.dim_IntList, (t(0, 3), [0]), label="empty"),
                                Case(aten.sum.dim_IntList, (t(2, 3), None), label="all")]
    r[aten.prod.dim_int] = [Case(aten.prod.dim_int, (t(2, 3), 1))]
    r[aten.logsumexp.default] = [Case(aten.logsumexp.default, (t(2, 3), [1]))]
    for op in (aten.sum.default, aten.mean.default, aten.max.default, aten.min.default, aten.prod.default):
        r[op] = [Case(op, (t(2, 3),)), Case(op, (t(),))]
    r[aten.sum.default] += [Case(aten.sum.default, (t(2, 3, dtype=I32),), label="int32")]
    for op in (aten.max.dim, aten.min.dim):
        r[op] = [Case(op, (t(2, 5), 1)), Case(op, (t(2, 5), 0, True), label="keepdim")]
    for op in (aten.argmax.default, aten.argmin.default):
        r[op] = [Case(op, (t(2, 5), 1)), Case(op, (t(2, 5),), label="flat"), Case(op, (t(2, 5), 0, True))]
    r[aten.var_mean.correction] = [Case(aten.var_mean.correction, (t(3, 5), [1])),
                                   Case(aten.var_mean.correction, (t(3, 5), None), {"keepdim": True})]
    for op in (aten.var.correction, aten.std.correction):
        r[op] = [Case(op, (t(3, 5), [1])), Case(op, (t(3, 5), None), {"correction": 0}),
                 Case(op, (t(3, 5), [0]), {"keepdim": True})]
    for op in (aten.any.dim, aten.all.dim):
        r[op] = [Case(op, (t(3, 4, dtype=B), 1)), Case(op, (t(3, 4), 0, True))]
    for op in (aten.any.dims, aten.all.dims):
        r[op] = [Case(op, (t(3, 4, dtype=B), [0, 1]))]
    for op in (aten.any.default, aten.all.default):
        r[op] = [Case(op, (t(3, 4, dtype=B),)), Case(op, (t(dtype=B),))]
    r[aten.cumsum.default] = [Case(aten.cumsum.default, (t(3, 4, dtype=d), 1)) for d in (F32, I64)] + [
        Case(aten.cumsum.default, (t(3, 4, dtype=B), 0), label="bool"), Case(aten.cumsum.default, (t(), 0))]
    r[aten.linalg_vector_norm.default] = [Case(aten.linalg_vector_norm.default, (t(3, 4), o, [1]))
                                          for o in (2, 1, float("inf"))]

    # -- fxc's fused ops -----------------------------------------------------------------------
    fx_ops = torch.ops.fxc
    r[fx_ops.conv2d_act.default] = [
        Case(fx_ops.conv2d_act.default, (t(1, 3, 6, 6), t(4, 3, 3, 3), t(4), [1, 1], [1, 1], [1, 1], 1,
                                         act, args), label=act)
        for act, args in (("relu", []), ("hardtanh", [0.0, 6.0]), ("silu", []), ("gelu", []),
                          ("gelu_tanh", []), ("sigmoid", []), ("hardswish", []))] + [
        Case(fx_ops.conv2d_act.default, (t(2, 3, 5, 5), t(4, 3, 1, 1), t(4), [1, 1], [0, 0], [1, 1], 1,
                                         "identity", []), label="identity_1x1")]
    r[fx_ops.add_layer_norm.default] = [
        Case(fx_ops.add_layer_norm.default, (t(2, 5, 8), t(2, 5, 8), [8], t(8), t(8), 1e-5)),
        Case(fx_ops.add_layer_norm.default, (t(3, 7), t(3, 7), [7], None, None, 1e-6),
             label="no_affine")]
    r[fx_ops.dwconv2d_ln.default] = [
        Case(fx_ops.dwconv2d_ln.default, (t(1, 6, 5, 7), t(6, 1, 3, 3), t(6), [1, 1], t(6), t(6), 1e-6)),
        Case(fx_ops.dwconv2d_ln.default, (t(2, 4, 6, 6), t(4, 1, 7, 7), t(4), [3, 3], None, None, 1e-6),
             label="no_affine_7x7")]
    r[fx_ops.conv2d_add_act.default] = [
        Case(fx_ops.conv2d_add_act.default, (t(1, 3, 6, 6), t(4, 3, 3, 3), None, t(1, 4, 3, 3),
                                             [2, 2], [1, 1], [1, 1], 1, "relu", []))]
    r[fx_ops.linear_act.default] = [
        Case(fx_ops.linear_act.default, (t(4, 8), t(5, 8), t(5), act)) for act in ("relu", "gelu")] + [
        Case(fx_ops.linear_act.default, (t(2, 4, 8), t(5, 8), None, "gelu_tanh"), label="3d")]
    from fxc.codegen.region import In, Region, Val
    rms = Region([(aten.pow.Tensor_Scalar, (In(0), 2), {}), (aten.mean.dim, (Val(0), [-1], True), {}),
                  (aten.add.Tensor, (Val(1), 1e-6), {}), (aten.rsqrt.default, (Val(2),), {}),
                  (aten.mul.Tensor, (In(0), Val(3)), {}), (aten.mul.Tensor, (Val(4), In(1)), {})],
                 2, [5], [[0, 1, 2]], reduce=1)
    scale_add = Region([(aten.mul.Tensor, (In(0), In(1)), {}), (aten.add.Tensor, (Val(0), In(2)), {}),
                        (aten.gelu.default, (Val(1),), {})], 3, [1, 2], [[0, 1], [0, 1]])
    r[fx_ops.fused_region.default] = [
        Case(fx_ops.fused_region.default, ([t(2, 3, 8), t(8)], rms.key), label="rms_row"),
        Case(fx_ops.fused_region.default, ([t(4, 6), t(6), t(4, 6)], scale_add.key),
             label="pointwise_two_outputs")]
    return r


COMPARE_OPS = (aten.eq.Tensor, aten.ne.Tensor, aten.lt.Tensor, aten.le.Tensor, aten.gt.Tensor,
               aten.ge.Tensor)
COMPARE_SCALAR_OPS = (aten.eq.Scalar, aten.ne.Scalar, aten.lt.Scalar, aten.le.Scalar,
                      aten.gt.Scalar, aten.ge.Scalar)
ROWS = _rows()
CASES = [c for cases in ROWS.values() for c in cases]


def one_op_graph(case: Case) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """A graph calling `case.op` once, tensor arguments as inputs, with true metadata."""
    g, inputs = fx.Graph(), []

    def lift(a):
        if isinstance(a, torch.Tensor):
            p = g.placeholder(f"x{len(inputs)}")
            p.meta["val"] = a
            inputs.append(a)
            return p
        if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            return [lift(x) for x in a]
        return a

    args = tuple(lift(a) for a in case.args)
    kwargs = {k: lift(v) for k, v in case.kwargs.items()}
    node = g.call_function(case.op, args, kwargs)
    # Metadata from the real run (what fake propagation would give, and cheaper: one
    # FakeTensorMode per graph costs more than the rest of the test).
    node.meta["val"] = out = case.op(*case.args, **case.kwargs)
    if isinstance(out, (tuple, list)):
        picks = case.outputs if case.outputs is not None else range(len(out))
        items = []
        for i in picks:
            items.append(g.call_function(operator.getitem, (node, i)))
            items[-1].meta["val"] = out[i]
        g.output(tuple(items))
    else:
        g.output((node,))
    return fx.GraphModule(torch.nn.Module(), g), inputs


def eager(case: Case) -> list[torch.Tensor]:
    out = case.op(*case.args, **case.kwargs)
    if isinstance(out, (tuple, list)):
        return [out[i] for i in (case.outputs if case.outputs is not None else range(len(out)))]
    return [out]


def assert_matches(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.dtype.is_floating_point:
        torch.testing.assert_close(actual, expected, **TOL[expected.dtype], equal_nan=True)
    else:
        assert torch.equal(actual, expected), (actual, expected)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_lowers_and_matches_pytorch(case):
    gm, inputs = one_op_graph(case)
    lowered = to_onnx(gm)  # runs onnx.checker (full_check) too
    got = OrtEngine(lowered, torch.device("cpu"), threads=1).run(inputs)
    for a, e in zip(got, eager(case)):
        if case.values:
            assert_matches(a, e)
        else:
            assert (a.dtype, a.shape) == (e.dtype, e.shape)


def test_every_converter_has_a_row():
    """A converter without a coverage row is an untested converter."""
    missing = [_opname(op) for op in supported_targets() if op not in ROWS]
    assert not missing, f"converters without op-coverage rows: {missing}"


def test_every_fused_fxc_op_has_a_converter():
    """A fused op a pass emits (fxc/ops/*.py) without a converter would make the ONNX
    backends refuse every graph that pass touched."""
    import glob
    import os
    import re
    ops_dir = os.path.dirname(fxc.ops.__file__)
    declared = set()
    for path in glob.glob(os.path.join(ops_dir, "*.py")):
        declared |= set(re.findall(r'^@torch\.library\.custom_op\(\s*"fxc::(\w+)"',
                                   open(path).read(), re.MULTILINE))
    assert declared, "no fxc ops found: has fxc/ops moved?"
    converted = {op._opname for op in supported_targets() if op.namespace == "fxc"}
    assert declared <= converted, f"fxc ops without an ONNX converter: {sorted(declared - converted)}"
