"""Fuse a 2-D convolution with the activation after it, or with a residual add and activation.

    1. act(conv(x, W, b))              -> fxc::conv2d_act(x, W, b, ..., act, act_args)
    2. act(conv(x, W, b) + residual)   -> fxc::conv2d_add_act(x, W, b, residual, ..., act, act_args)
    3. conv(x, W, b), 1x1, stride 1, unpadded, one group, not fused by 1 or 2, when compiling for
       CUDA in fp16/bf16                 -> fxc::conv2d_act(x, W, b, ..., "identity", [])

act: relu, hardtanh (relu6; its bounds travel in act_args), silu, gelu, gelu_tanh, sigmoid,
hardswish (fxc/ops/conv.py). Rule 2 is ResNet's `relu(bn(conv(x)) + identity)` once fuse_bn has
folded the batch norm; on CUDA both rules' relu cases run cuDNN's fused kernels. Rule 3 exists
for CUDA's half GEMMs: there a channels_last 1x1 conv runs as one GEMM with the bias in its
epilogue, where aten.convolution adds the bias with a kernel of its own (fxc/ops/conv.py); it
runs after rules 1 and 2, on the convs they left, and nowhere else (the CPU graph is unchanged).

Invariant: outputs equal the stage before: bitwise on CPU, where the fused ops run the same ATen
ops (the tests check that); on CUDA cuDNN's fused kernel is another algorithm, which in fp32
with TF32 (cuDNN's default) differs at TF32's rounding, and in fp16 rounds once where the
graph before rounded the conv output too. The pipeline therefore checks this pass with the
relative-norm contract (numerics="lowp"). Refuses, with the reason: a conv (or add) output
read by anyone else or returned by the graph, a transposed or non-2-D conv (no fused kernel),
an activation the ops do not have, an add that broadcasts, scales (alpha) or mixes dtypes.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

import fxc.ops  # noqa: F401  (registers torch.ops.fxc.*)
from fxc import ir

from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_graph_output, is_op, run_rules

aten = torch.ops.aten

# Elementwise activations the fused ops do not have: a refusal names them (rather than staying
# silent) so the report says why such a conv was not fused.
UNSUPPORTED_ACTS = (aten.leaky_relu.default, aten.elu.default, aten.tanh.default,
                    aten.hardsigmoid.default, aten.mish.default, aten.softplus.default,
                    aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default,
                    aten.prelu.default)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    first = run_rules(gm, [Rule("conv_act", match_conv_act, apply_conv_act),
                           Rule("conv_add_act", match_conv_add_act, apply_conv_add_act)], ctx)
    if not _gemm_target(ctx):
        return first
    then = run_rules(gm, [Rule("conv1x1_bias", match_conv1x1_bias, apply_conv1x1_bias)], ctx)
    return PassResult(rewrites=first.rewrites + then.rewrites, notes=first.notes + then.notes)


# -- shared with fuse_bn / fuse_linear ---------------------------------------------------------

def normalized(node: fx.Node) -> dict:
    """An ATen call's arguments by schema name, defaults filled in, in schema order."""
    pair = normalize_function(node.target, node.args, node.kwargs,
                              normalize_to_only_use_kwargs=True)
    return dict(pair.kwargs)


def activation_of(node) -> tuple[str, list[float]] | Refuse | None:
    """(act, act_args) of the fused ops for an activation node; Refuse for an activation they
    lack; None for a node that is not an activation at all."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    t = node.target
    if t is aten.relu.default:
        return "relu", []
    if t is aten.hardtanh.default:
        a = normalized(node)  # defaults -1, 1 are filled in: the bounds are never dropped
        return "hardtanh", [float(a["min_val"]), float(a["max_val"])]
    if t in (aten.silu.default, aten.sigmoid.default, aten.hardswish.default):
        return t._opname, []
    if t is aten.gelu.default:
        approx = normalized(node)["approximate"]
        if approx not in ("none", "tanh"):
            return Refuse(f"unsupported gelu approximate={approx!r}")
        return ("gelu" if approx == "none" else "gelu_tanh"), []
    if t in UNSUPPORTED_ACTS:
        return Refuse(f"unsupported activation {ir.op_name(node)}")
    return None


def single_user_problem(node: fx.Node, what: str) -> str | None:
    """Why `node`'s value cannot disappear into a fused op (None when it can)."""
    if is_graph_output(node):
        return f"the {what} output is also a graph output"
    if len(node.users) != 1:
        return f"the {what} output has another user"
    return None


# -- rule 1: conv -> act ---------------------------------------------------------------------

def match_conv_act(conv: fx.Node, ctx: PassContext):
    if not is_op(conv, aten.convolution.default):
        return None
    acts = [u for u in conv.users if activation_of(u) is not None]
    if not acts:
        return None
    why = _conv_problem(conv) or single_user_problem(conv, "conv")
    if why:
        return Refuse(why)
    act = activation_of(acts[0])
    if isinstance(act, Refuse):
        return act
    return conv, acts[0], act


def apply_conv_act(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    conv, act_node, (act, act_args) = m
    c = normalized(conv)
    with gm.graph.inserting_before(act_node):
        new = ir.new_call(gm.graph, torch.ops.fxc.conv2d_act.default,
                          (c["input"], c["weight"], c["bias"], *_geometry(c), act, act_args),
                          like=conv)
    act_node.replace_all_uses_with(new)
    return 1


# -- rule 2: conv -> add(residual) -> act ----------------------------------------------------

def match_conv_add_act(conv: fx.Node, ctx: PassContext):
    if not is_op(conv, aten.convolution.default):
        return None
    adds = [u for u in conv.users if is_op(u, aten.add.Tensor)]
    if not adds:
        return None
    why = _conv_problem(conv) or single_user_problem(conv, "conv")
    if why:
        return Refuse(why)
    add = adds[0]
    residual = _residual(conv, add)
    if isinstance(residual, Refuse):
        return residual
    why = single_user_problem(add, "residual add")
    if why:
        return Refuse(why)
    act_node = next(iter(add.users))
    act = activation_of(act_node)
    if act is None:
        return Refuse("no activation after the residual add")
    if isinstance(act, Refuse):
        return act
    return conv, residual, act_node, act


def apply_conv_add_act(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    conv, residual, act_node, (act, act_args) = m
    c = normalized(conv)
    with gm.graph.inserting_before(act_node):
        new = ir.new_call(gm.graph, torch.ops.fxc.conv2d_add_act.default,
                          (c["input"], c["weight"], c["bias"], residual, *_geometry(c), act,
                           act_args), like=conv)
    act_node.replace_all_uses_with(new)
    return 1


def _residual(conv: fx.Node, add: fx.Node) -> fx.Node | Refuse:
    """The add's other operand, if the fused kernel can read it element for element."""
    a = normalized(add)
    if a["alpha"] != 1:
        return Refuse("the residual add scales its operand (alpha != 1)")
    if a["input"] is conv and a["other"] is conv:
        return Refuse("the add adds the conv output to itself")
    other = a["other"] if a["input"] is conv else a["input"]
    out, res = ir.tensor_meta(conv), ir.tensor_meta(other) if isinstance(other, fx.Node) else None
    if res is None:
        return Refuse("the residual is a scalar (broadcast)")
    if res.shape != out.shape:
        return Refuse(f"the residual add broadcasts {list(res.shape)} to {list(out.shape)}")
    if res.dtype != out.dtype:
        return Refuse(f"the residual is {res.dtype}, the conv {out.dtype}")
    return other


# -- rule 3: a biased 1x1 conv on CUDA in half -> the GEMM-with-bias-epilogue kernel -----------

def _gemm_target(ctx: PassContext) -> bool:
    return ctx.options.device.type == "cuda" and ctx.options.precision in ("fp16", "bf16")


def match_conv1x1_bias(conv: fx.Node, ctx: PassContext):
    if not is_op(conv, aten.convolution.default):
        return None
    why = _conv_problem(conv)
    if why:
        return Refuse(why)
    c = normalized(conv)
    if c["bias"] is None:
        return Refuse("1x1 conv without bias: nothing for an epilogue to add")
    if tuple(ir.tensor_meta(c["weight"]).shape[2:]) != (1, 1):
        return None  # not a GEMM: left to cuDNN, no refusal to report
    if any(int(s) != 1 for s in c["stride"]) or any(int(p) != 0 for p in c["padding"]) \
            or int(c["groups"]) != 1:
        return Refuse("1x1 conv with stride, padding or groups is not a plain GEMM")
    return conv


def apply_conv1x1_bias(gm: fx.GraphModule, conv: fx.Node, ctx: PassContext) -> int:
    c = normalized(conv)
    with gm.graph.inserting_before(conv):
        new = ir.new_call(gm.graph, torch.ops.fxc.conv2d_act.default,
                          (c["input"], c["weight"], c["bias"], *_geometry(c), "identity", []),
                          like=conv)
    conv.replace_all_uses_with(new)
    return 1


# -- helpers ---------------------------------------------------------------------------------

def _conv_problem(conv: fx.Node) -> str | None:
    c = normalized(conv)
    if c["transposed"]:
        return "transposed conv: no fused op"
    w, out = ir.tensor_meta(c["weight"]), ir.tensor_meta(conv)
    if w is None or out is None:
        return "the conv has no shape metadata"
    if w.dim() != 4:
        return f"conv{w.dim() - 2}d: the fused ops are 2-D (cuDNN's)"
    if out.dim() != 4:
        return "unbatched conv: the fused ops take (N, C, H, W)"
    if not out.is_floating_point():
        return f"non-floating conv ({out.dtype})"
    return None


def _geometry(c: dict) -> tuple:
    """(stride, padding, dilation, groups) as plain ints for the fused op's schema."""
    ints = lambda xs: [int(x) for x in xs]  # noqa: E731
    return ints(c["stride"]), ints(c["padding"]), ints(c["dilation"]), int(c["groups"])
