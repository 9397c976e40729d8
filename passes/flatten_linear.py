"""Run every linear over more than two dimensions as a 2-D GEMM, so its bias stays in the epilogue.

    linear(x[..., K], W, b) -> view(linear(view(x, [M, K]), W, b), [..., N])     M = prod(...)

Why: the torch runtime plans a linear's output in its arena through `aten.linear.out`, and
ATen's linear_out has no flattening path: for an N-D input it runs matmul and then the bias as
a separate broadcast add kernel (measured on an H200: HF BertModel's 37 linears became 37
bias-free GEMMs plus 35 strided add kernels, 0.088 of 0.539 ms of kernel time). With a 2-D
input, linear_out is addmm_out, one cuBLASLt GEMM with the bias in its epilogue. The views are
free (no kernel, no copy).

Invariant: the same values (one GEMM with the bias added to the fp32 accumulator instead of a
GEMM and a rounded add: rounding differs, numerics "reassoc"); every node keeps true meta.
Runs for fxc's torch runtime only (ONNX Runtime and TensorRT fuse MatMul + Add themselves).
Refuses, with the reason: an input that is not contiguous (the view would need a copy), a
linear without bias (nothing to gain), a symbolic shape.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from fxc import ir

from .fuse_conv import normalized
from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    from fxc.backends import engine_is_torch
    if not engine_is_torch(ctx.options):
        return PassResult(notes=["the engine is not fxc's torch runtime: it fuses bias adds itself"])
    return run_rules(gm, [Rule("flatten_linear", match, apply)], ctx)


def match(linear: fx.Node, ctx: PassContext):
    if not is_op(linear, aten.linear.default):
        return None
    a = normalized(linear)
    x = ir.tensor_meta(a["input"]) if isinstance(a["input"], fx.Node) else None
    if x is None or x.dim() <= 2:
        return None
    if a["bias"] is None:
        return Refuse("no bias: the plain GEMM is already one kernel")
    if not all(isinstance(d, int) for d in x.shape):
        return Refuse("symbolic input shape")
    if not x.is_contiguous():
        return Refuse("the input is not contiguous: a 2-D view of it would need a copy")
    return linear, a


def apply(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    linear, a = m
    shape = list(ir.tensor_meta(a["input"]).shape)
    out_shape = list(ir.tensor_meta(linear).shape)
    rows = math.prod(shape[:-1])
    with gm.graph.inserting_before(linear):
        x2d = ir.new_call(gm.graph, aten.view.default, (a["input"], [rows, shape[-1]]), like=linear)
        y2d = ir.new_call(gm.graph, aten.linear.default, (x2d, a["weight"], a["bias"]), like=linear)
        y = ir.new_call(gm.graph, aten.view.default, (y2d, out_shape), like=linear)
    linear.replace_all_uses_with(y)
    gm.graph.erase_node(linear)
    return 1
