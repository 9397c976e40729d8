"""Convolution epilogues as generated kernels: where no single library kernel computes a conv
with its bias (residual, activation), the conv runs without its bias and the epilogue becomes
graph ops, which fuse_regions then fuses with the pointwise work around them.

    fxc::conv2d_act(x, W, b, act)         -> act(convolution(x, W, None) + b[:, None, None])
    fxc::conv2d_add_act(x, W, b, r, act)  -> act(convolution(x, W, None) + b[:, None, None] + r)
    convolution(x, W, b) read by one fusible op u
                                          -> u(convolution(x, W, None) + b[:, None, None])

Why: on CUDA aten.convolution adds its bias with a kernel of its own after cuDNN's, and an
activation other than relu is one more (fxc/ops/conv.py): EfficientNet's conv + BN + SiLU ran
as three kernels, the SE block's gate as two more, where Inductor runs the conv and one
generated kernel. After this pass the bias add, the activation and what follows (the residual
add, a layer scale, the SE mean) are one region.

Kept as they are: the one-kernel paths of fxc/ops/conv.py, decided by that file's own tests
(fused_relu_fits, gemm_fits) on the graph's metas: cuDNN's fused conv + bias (+ add) + relu/relu6 (one group,
fp16/fp32, one dtype), and the 1x1 conv run as a GEMM with the bias in its epilogue
(channels_last half input, stride 1, unpadded, one group, identity or relu); a conv whose
shapes are symbolic (fuse_regions refuses those regions, the fused op stays better); a bias-only
epilogue whose result nothing fusible reads (the add would be a kernel either way).

Where: after layout (the strides are final), just before fuse_regions and wherever it runs.

Invariant: numerics "lowp": the same ATen ops in the same order as the fused op's reference
(conv, + bias, + residual, act), with the conv rounded to its dtype before the bias add, which
cuDNN's bias kernel does too; fuse_regions then computes the epilogue in fp32 opmath.
"""
from __future__ import annotations

import torch
import torch.fx as fx

import fxc.ops  # noqa: F401  (torch.ops.fxc.*)
from fxc import ir
from fxc.ops import conv as conv_ops

from . import fuse_regions, noops
from .manager import PassContext, PassResult
from .rewrite import is_graph_output, is_op

aten = torch.ops.aten
CONV_ACT = torch.ops.fxc.conv2d_act.default
CONV_ADD_ACT = torch.ops.fxc.conv2d_add_act.default


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    off = fuse_regions.not_here(ctx.options)
    if off:
        return PassResult(notes=[off])
    done: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        kind = _rewrite(gm, node)
        if kind:
            done[kind] = done.get(kind, 0) + 1
    if done:
        gm.graph.eliminate_dead_code()
        ir.drop_unused_constants(gm)
        noops.repair_views(gm)  # the fused ops' metas were contiguous; a conv's may be channels_last
    notes = [f"{k} x{v}" for k, v in sorted(done.items())]
    return PassResult(rewrites=sum(done.values()), notes=notes, stats=done)


def _rewrite(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Split `node`'s epilogue out if it is a conv this pass takes; the rewrite's name or None."""
    if is_op(node, CONV_ACT, CONV_ADD_ACT):
        a = _fused_args(node)
        if not _static(node) or _empty(a) or _one_kernel(a):
            return None
        _split(gm, node, a)
        return f"{a['act']}{' + residual' if a['residual'] is not None else ''}"
    if is_op(node, aten.convolution.default) and _plain_takes(node):
        a = dict(zip(("x", "w", "b", "stride", "padding", "dilation", "transposed",
                      "output_padding", "groups"), node.args))
        a.update(residual=None, act="identity", act_args=[])
        _split(gm, node, a)
        return "bias"
    return None


def _fused_args(node: fx.Node) -> dict:
    names = ("x", "w", "b", "stride", "padding", "dilation", "groups", "act", "act_args")
    if node.target is CONV_ADD_ACT:
        names = names[:3] + ("residual",) + names[3:]
    a = dict(zip(names, node.args))
    a.setdefault("residual", None)
    return a


def _static(node: fx.Node) -> bool:
    v = ir.tensor_meta(node)
    return v is not None and all(isinstance(s, int) for s in (*v.shape, *v.stride()))


def _empty(a: dict) -> bool:
    """An empty input or weight: the fused op's kernels take none either (fxc/ops/conv.py)."""
    return any(_meta(a[k]) is None or _meta(a[k]).numel() == 0 for k in ("x", "w"))


def _meta(n) -> torch.Tensor | None:
    """A node's meta value (a tensor stands for itself: _one_kernel is tested on metas alone)."""
    return n if isinstance(n, torch.Tensor) else ir.tensor_meta(n) if isinstance(n, fx.Node) else None


def _one_kernel(a: dict) -> bool:
    """Does fxc/ops/conv.py run this fused op as one library kernel? Its own tests, on metas."""
    x, w, b, r = (_meta(a[k]) for k in ("x", "w", "b", "residual"))
    if x is None or w is None or x.dim() != 4 or w.dim() != 4:
        return True  # not the 2-D case this pass splits
    if conv_ops.fused_relu_fits(x, w, b, a["act"], a["act_args"], *([r] if r is not None else [])):
        return True  # cuDNN's fused conv + bias (+ add) + relu
    return r is None and conv_ops.gemm_fits(x, w, b, a["stride"], a["padding"], int(a["groups"]),
                                            a["act"], a["act_args"])


def _plain_takes(conv: fx.Node) -> bool:
    """A biased, 2-D, non-transposed aten.convolution whose one reader fuse_regions can take."""
    args = conv.args
    if len(args) < 9 or args[2] is None or args[6] or not _static(conv):
        return False
    if _empty({"x": args[0], "w": args[1]}) or _meta(args[0]).dim() != 4:
        return False
    if is_graph_output(conv) or len(conv.users) != 1:
        return False
    user = next(iter(conv.users))
    return user.op == "call_function" and fuse_regions.fusible(user) is None


_ACT_OPS = {"relu": aten.relu.default, "hardtanh": aten.hardtanh.default,
            "silu": aten.silu.default, "sigmoid": aten.sigmoid.default,
            "hardswish": aten.hardswish.default, "gelu": aten.gelu.default,
            "gelu_tanh": aten.gelu.default}


def _split(gm: fx.GraphModule, node: fx.Node, a: dict) -> None:
    g = gm.graph
    with g.inserting_before(node):
        y = ir.new_call(g, aten.convolution.default,
                        (a["x"], a["w"], None, list(a["stride"]), list(a["padding"]),
                         list(a["dilation"]), False, [0, 0], int(a["groups"])), like=node)
        if a["b"] is not None:
            b = ir.new_call(g, aten.view.default, (a["b"], [-1, 1, 1]), like=node)
            y = ir.new_call(g, aten.add.Tensor, (y, b), like=node)
        if a["residual"] is not None:
            y = ir.new_call(g, aten.add.Tensor, (y, a["residual"]), like=node)
        act = a["act"]
        if act != "identity":
            kwargs = {"approximate": "tanh" if act == "gelu_tanh" else "none"} \
                if act.startswith("gelu") else {}
            y = ir.new_call(g, _ACT_OPS[act], (y, *a["act_args"]), kwargs, like=node)
    old, new = ir.tensor_meta(node), ir.tensor_meta(y)
    assert old.shape == new.shape and old.dtype == new.dtype, (node.name, old.shape, new.shape)
    node.replace_all_uses_with(y)
    g.erase_node(node)
