"""Converters for fxc's fused ops (fxc/ops/): the fused op is written back out as the ONNX ops
it stands for (Conv + Add + Relu, Gemm + Gelu...); ONNX Runtime and TensorRT fuse those
patterns again themselves.

An op that a pass emits but that has no converter here is reported as unsupported, like any
other op, so a new fused op cannot silently miss its converter.
"""
from __future__ import annotations

import torch

from . import batch as batch_rules
from .builder import Builder, out_meta, rank_of
from .ops_elementwise import gelu_expr
from .registry import Refuse, converter

fxc_ops = torch.ops.fxc


def activation(b: Builder, y: str, act: str, act_args, dt) -> str | Refuse:
    """The activations of fxc/ops/conv.py's ACTIVATIONS, as ONNX ops."""
    if act == "identity":
        return y
    if act == "relu":
        return b.op("Relu", [y])
    if act == "hardtanh":
        lo, hi = act_args
        return b.op("Clip", [y, b.scalar(lo, dt), b.scalar(hi, dt)])
    if act == "silu":
        return b.op("Mul", [y, b.op("Sigmoid", [y])])
    if act in ("gelu", "gelu_tanh"):
        return gelu_expr(b, y, dt, "tanh" if act == "gelu_tanh" else "none")
    if act == "sigmoid":
        return b.op("Sigmoid", [y])
    if act == "hardswish":
        return b.op("HardSwish", [y])
    return Refuse(f"activation {act!r} has no ONNX form here")


def _conv(b: Builder, x, w, bias, stride, padding, dilation, groups, dt) -> str:
    n = len(stride)
    inputs = [b.tensor(x, dt), b.tensor(w, dt)] + ([b.tensor(bias, dt)] if bias is not None else [])
    return b.op("Conv", inputs, strides=list(stride), pads=list(padding) * 2,
                dilations=list(dilation), group=int(groups),
                kernel_shape=list(w.meta["val"].shape[2:2 + n]))


def _register():
    if not hasattr(fxc_ops, "conv2d_act"):
        return  # fxc.ops not imported: nothing emits these

    @converter(fxc_ops.conv2d_act.default)
    def conv2d_act(b: Builder, node):
        """fxc::conv2d_act(Tensor x, Tensor w, Tensor? b, int[] stride, int[] padding, int[] dilation, int groups, str act, float[] act_args) -> Tensor"""
        x, w, bias, stride, padding, dilation, groups, act, act_args = node.args
        dt = out_meta(node).dtype
        return activation(b, _conv(b, x, w, bias, stride, padding, dilation, groups, dt),
                          act, act_args, dt)

    @converter(fxc_ops.conv2d_add_act.default)
    def conv2d_add_act(b: Builder, node):
        """fxc::conv2d_add_act(Tensor x, Tensor w, Tensor? b, Tensor residual, int[] stride, int[] padding, int[] dilation, int groups, str act, float[] act_args) -> Tensor"""
        x, w, bias, residual, stride, padding, dilation, groups, act, act_args = node.args
        dt = out_meta(node).dtype
        y = _conv(b, x, w, bias, stride, padding, dilation, groups, dt)
        return activation(b, b.op("Add", [y, b.tensor(residual, dt)]), act, act_args, dt)

    @converter(fxc_ops.linear_act.default)
    def linear_act(b: Builder, node):
        """fxc::linear_act(Tensor x, Tensor w, Tensor? b, str act) -> Tensor"""
        x, w, bias, act = node.args
        dt = out_meta(node).dtype
        xv, wv = b.tensor(x, dt), b.tensor(w, dt)
        bv = b.tensor(bias, dt) if bias is not None else None
        if rank_of(x) == 2:
            y = b.op("Gemm", [xv, wv, bv], transB=1)
        else:
            y = b.op("MatMul", [xv, b.op("Transpose", [wv], perm=[1, 0])])
            if bv is not None:
                y = b.op("Add", [y, bv])
        return activation(b, y, act, (), dt)

    @converter(fxc_ops.add_layer_norm.default)
    def add_layer_norm(b: Builder, node):
        """fxc::add_layer_norm(Tensor x, Tensor residual, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)"""
        x, residual, shape, w, bias, eps = node.args
        dt = out_meta(node)[0].dtype
        n = len(shape)
        if n == 0 or n > rank_of(x):
            return Refuse("layer norm over no dims")
        s = b.op("Add", [b.tensor(x, dt), b.tensor(residual, dt)])
        scale = b.tensor(w, dt) if w is not None else b.const(torch.ones(tuple(shape), dtype=dt))
        inputs = [s, scale] + ([b.tensor(bias, dt)] if bias is not None else [])
        return [s, b.op("LayerNormalization", inputs, axis=-n, epsilon=float(eps))]

    @converter(fxc_ops.dwconv2d_ln.default)
    def dwconv2d_ln(b: Builder, node):
        """fxc::dwconv2d_ln(Tensor x, Tensor weight, Tensor? bias, int[] padding, Tensor? ln_weight, Tensor? ln_bias, float eps) -> Tensor"""
        x, w, bias, padding, lw, lb, eps = node.args
        dt = out_meta(node).dtype
        groups = w.meta["val"].shape[0]
        y = _conv(b, x, w, bias, [1, 1], padding, [1, 1], groups, dt)
        y = b.op("Transpose", [y], perm=[0, 2, 3, 1])
        scale = b.tensor(lw, dt) if lw is not None else b.const(torch.ones(groups, dtype=dt))
        inputs = [y, scale] + ([b.tensor(lb, dt)] if lb is not None else [])
        return b.op("LayerNormalization", inputs, axis=-1, epsilon=float(eps))

    @converter(fxc_ops.fused_region.default)
    def fused_region(b: Builder, node):
        """fxc::fused_region(Tensor[] inputs, str key) -> Tensor[]: the region's ATen ops,
        inlined, each through its own converter (nodes named `<this node>__<k>`)."""
        return _inline_region(b, node)

    for op in (fxc_ops.conv2d_act.default, fxc_ops.linear_act.default, fxc_ops.dwconv2d_ln.default):
        batch_rules.register(op, batch_rules.first_arg)
    batch_rules.register(fxc_ops.conv2d_add_act.default, _conv_add_batch)


def _inline_region(b: Builder, node):
    import torch.fx as fx

    from fxc import ir
    from fxc.codegen.region import In, Val, get

    from .registry import lookup
    inputs, key = node.args
    region = get(key)
    g = fx.Graph()
    env: list = []
    ins = []
    for i, a in enumerate(inputs):
        p = g.placeholder(f"{node.name}__in{i}")
        p.meta["val"] = a.meta["val"]
        ins.append(p)

    def sub(a):
        if isinstance(a, In):
            return ins[a.i]
        if isinstance(a, Val):
            return env[a.j]
        if isinstance(a, list):
            return [sub(x) for x in a]
        return a

    for k, (target, args, kwargs) in enumerate(region.ops):
        n = g.call_function(target, tuple(sub(a) for a in args),
                            {k2: sub(v) for k2, v in kwargs.items()})
        n.name = f"{node.name}__{k}"
        if "stack_trace" in node.meta:
            n.meta["stack_trace"] = node.meta["stack_trace"]
        ir.infer_node_meta(n)
        env.append(n)
    for p, a in zip(ins, inputs):
        b.env[p] = b.env[a]
    for n in env:
        fn = lookup(n.target)
        if fn is None:
            return Refuse(f"{ir.op_name(n)} in the region has no converter")
        b.begin(n)
        out = fn(b, n)
        if isinstance(out, Refuse):
            return Refuse(f"{ir.op_name(n)} in the region: {out.reason}")
        b.env[n] = out
    b.begin(node)
    return [b.env[env[j]] for j in region.outputs]


def _conv_add_batch(n, batch):
    """The residual has the conv's output shape, so it carries the batch exactly when x does."""
    if not batch.get(n.args[0]) or not batch.get(n.args[3]):
        return "the batch enters through the weights or only one of input/residual"
    return None


try:
    import fxc.ops  # noqa: F401  (registers torch.ops.fxc.*)
except ImportError:  # pragma: no cover - fxc.ops is part of fxc
    pass
_register()
