"""Fuse a residual add with the layer norm that reads it: the seam between transformer sublayers.

    s = add(x, r); y = layer_norm(s, shape, w, b, eps)
        ->  (s, y) = fxc::add_layer_norm(x, r, shape, w, b, eps)     (getitem 0 and 1)

Post-LN blocks (BERT: LN(x + sublayer(x))) read only y; pre-LN blocks (GPT-2, ViT) also carry
s on as the next residual, so the sum stays a value of the graph either way and other readers
of the add keep reading it.

Invariant: the values are the graph's before: the op's reference is the same two ATen ops, and
its CUDA kernel (fxc/ops/norm.py) normalizes the same rounded sum in fp32 (numerics "lowp": its
statistics sum in another order than ATen's Welford). Runs where the engine is fxc's torch
runtime on CUDA (ONNX Runtime and TensorRT fuse Add + LayerNormalization themselves), after
cast_precision, so it sees the dtypes the kernels will get. Refuses, with the reason: an add
that broadcasts, scales (alpha) or mixes dtypes, a layer norm over more than the last
dimension or without weight and bias, a sum of an integer or fp64 dtype.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

import fxc.ops  # noqa: F401  (torch.ops.fxc.*)
from fxc import ir

from .manager import PassContext, PassResult
from .fuse_conv import normalized
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    from fxc.backends import engine_is_torch
    if not engine_is_torch(ctx.options):
        return PassResult(notes=["the engine is not fxc's torch runtime: its own fusions apply"])
    return run_rules(gm, [Rule("add_layer_norm", match, apply)], ctx)


def match(ln: fx.Node, ctx: PassContext):
    if not is_op(ln, aten.layer_norm.default):
        return None
    add = ln.args[0]
    if not is_op(add, aten.add.Tensor):
        return None
    a = normalized(ln)
    shape, weight, bias, eps = a["normalized_shape"], a["weight"], a["bias"], a["eps"]
    if len(shape) != 1:
        return Refuse(f"layer norm over {len(shape)} dimensions (the kernel does the last one)")
    if weight is None or bias is None:
        return Refuse("layer norm without weight or bias")
    if add.kwargs.get("alpha", 1) != 1 or len(add.args) > 2:
        return Refuse("the add scales its operand (alpha != 1)")
    a, b = add.args
    ta, tb = (ir.tensor_meta(v) if isinstance(v, fx.Node) else None for v in (a, b))
    if ta is None or tb is None:
        return Refuse("the add has a scalar operand")
    if ta.shape != tb.shape or ta.dtype != tb.dtype:
        return Refuse(f"the add broadcasts or mixes dtypes: {ta.dtype}{list(ta.shape)} + "
                      f"{tb.dtype}{list(tb.shape)}")
    if ta.dtype not in _DTYPES:
        return Refuse(f"the sum is {ta.dtype}")
    first = _first_reader(add)
    if any(isinstance(p, fx.Node) and not _before(p, first) for p in (weight, bias)):
        return Refuse("the norm's weight or bias is defined after a reader of the sum")
    return ln, add, first, (a, b, list(shape), weight, bias, float(eps))


def _first_reader(add: fx.Node) -> fx.Node:
    """The add's earliest user in graph order: the fused op must come before all of them."""
    users = set(add.users)
    return next(n for n in add.graph.nodes if n in users)


def _before(p: fx.Node, q: fx.Node) -> bool:
    for n in p.graph.nodes:
        if n is p:
            return True
        if n is q:
            return False
    return False


def apply(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    ln, add, first, args = m
    with gm.graph.inserting_before(first):
        fused = ir.new_call(gm.graph, torch.ops.fxc.add_layer_norm.default, args, like=ln)
        s = ir.new_call(gm.graph, operator.getitem, (fused, 0), like=add)
        y = ir.new_call(gm.graph, operator.getitem, (fused, 1), like=ln)
    ln.replace_all_uses_with(y)
    add.replace_all_uses_with(s)
    gm.graph.erase_node(ln)
    gm.graph.erase_node(add)
    return 1
