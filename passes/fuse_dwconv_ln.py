"""Fuse a depthwise conv with the channel layer norm after it: ConvNeXt's block head.

    y = convolution(x, W, b, stride 1, padding p, dilation 1, groups C)   W: (C, 1, k, k)
    z = layer_norm(permute(y, [0, 2, 3, 1]), [C], w, beta, eps)
        ->  z = fxc::dwconv2d_ln(x, W, b, p, w, beta, eps)

torchvision's CNBlock and timm's ConvNeXtBlock both write it so (conv_dw, permute, LayerNorm);
on CUDA one Triton kernel (fxc/ops/dwconv.py) replaces cuDNN's depthwise kernel, the conv's
bias and the norm. Runs where the engine is fxc's torch runtime and generated kernels run
(after layout, so the conv input's memory format is settled; the kernel reads any strides).

Invariant: the values are the graph's before: the op's reference is the same ATen ops, and its
kernel sums the taps and the norm's statistics in fp32 in another order (numerics "lowp").
Refuses, with the reason: a conv that is not depthwise, strided, dilated, unpadded
asymmetrically or not square, a norm over more than C or without weight and bias, a conv or
permute read by anything else, a symbolic shape.
"""
from __future__ import annotations

import torch
import torch.fx as fx

import fxc.ops  # noqa: F401  (torch.ops.fxc.*)
from fxc import ir
from fxc.ops.dwconv import DTYPES, MAX_C, MAX_K

from .fuse_conv import normalized
from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, only_user, run_rules

aten = torch.ops.aten


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    from fxc.backends import engine_is_torch
    if not engine_is_torch(ctx.options):
        return PassResult(notes=["the engine is not fxc's torch runtime: its own fusions apply"])
    return run_rules(gm, [Rule("dwconv_ln", match, apply)], ctx)


def match(ln: fx.Node, ctx: PassContext):
    """ln = layer_norm(permute(convolution(...), [0, 2, 3, 1])) with a depthwise conv."""
    if not is_op(ln, aten.layer_norm.default):
        return None
    perm = ln.args[0]
    if not is_op(perm, aten.permute.default) or list(perm.args[1]) not in ([0, 2, 3, 1], [0, -2, -1, -3]):
        return None
    conv = perm.args[0]
    if not is_op(conv, aten.convolution.default):
        return None
    c = normalized(conv)
    w, x = c["weight"], c["input"]
    ws, xs = ir.tensor_meta(w), ir.tensor_meta(x)
    if ws is None or xs is None or xs.dim() != 4:
        return Refuse("not a 2-D convolution")
    if any(not isinstance(s, int) for s in (*xs.shape, *ws.shape)):
        return Refuse("a symbolic shape (the kernel's tiles are chosen per size)")
    ch = xs.shape[1]
    if c["transposed"] or c["groups"] != ch or tuple(ws.shape[:2]) != (ch, 1):
        return Refuse("not a depthwise convolution (groups == channels, one filter each)")
    k = ws.shape[2]
    if ws.shape[3] != k or k > MAX_K or ch > MAX_C:
        return Refuse(f"kernel {list(ws.shape[2:])} or {ch} channels past the kernel's tiles")
    if list(c["stride"]) != [1, 1] or list(c["dilation"]) != [1, 1]:
        return Refuse("a strided or dilated convolution")
    pad = list(c["padding"])
    if len(pad) != 2 or pad[0] != pad[1] or not 0 <= pad[0] < k:
        return Refuse(f"padding {pad} (the kernel pads both sides alike)")
    if c["bias"] is None or xs.dtype not in DTYPES:
        return Refuse("a conv without bias or of an integer dtype")
    a = normalized(ln)
    if list(a["normalized_shape"]) != [ch] or a["weight"] is None or a["bias"] is None:
        return Refuse("the norm is not over the channels with weight and bias")
    if only_user(conv) is not perm or only_user(perm) is not ln:
        return Refuse("the conv or its permute has other readers")
    return ln, conv, perm, (x, w, c["bias"], pad, a["weight"], a["bias"], float(a["eps"]))


def apply(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    ln, conv, perm, args = m
    with gm.graph.inserting_before(ln):
        fused = ir.new_call(gm.graph, torch.ops.fxc.dwconv2d_ln.default, args, like=ln)
    ln.replace_all_uses_with(fused)
    for n in (ln, perm, conv):
        gm.graph.erase_node(n)
    return 1
