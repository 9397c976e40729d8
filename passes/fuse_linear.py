"""Fuse a linear layer with the relu or gelu after it.

    act(linear(x, W, b)) -> fxc::linear_act(x, W, b, act)     act: relu, gelu, gelu_tanh

On CUDA relu and gelu_tanh become one cuBLASLt GEMM with a bias+activation epilogue
(fxc/ops/linear.py says why exact gelu keeps the reference); on CPU the fused op runs the same
ATen ops as before.

Invariant: outputs equal the stage before: bitwise on CPU (the tests check that); on CUDA the
epilogue GEMM is another kernel (another summation order) and applies the activation to the
fp32 accumulator before the one rounding to fp16/bf16, so the pipeline checks this pass with
the relative-norm contract (numerics="lowp"). Refuses, with the reason: a linear output read
by anyone else or returned by the graph, an activation other than relu/gelu, a non-matrix
weight, a bias that is not one value per out feature, a non-floating dtype.
"""
from __future__ import annotations

import torch
import torch.fx as fx

import fxc.ops  # noqa: F401  (registers torch.ops.fxc.*)
from fxc import ir
from fxc.ops.linear import LINEAR_ACTS

from .fuse_conv import activation_of, normalized, single_user_problem
from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    return run_rules(gm, [Rule("linear_act", match, apply)], ctx)


def match(linear: fx.Node, ctx: PassContext):
    if not is_op(linear, aten.linear.default):
        return None
    acts = [u for u in linear.users if activation_of(u) is not None]
    if not acts:
        return None
    why = single_user_problem(linear, "linear") or _linear_problem(linear)
    if why:
        return Refuse(why)
    act = activation_of(acts[0])
    if isinstance(act, Refuse):
        return act
    if act[0] not in LINEAR_ACTS:
        return Refuse(f"activation {act[0]}: linear_act has relu and gelu only")
    return linear, acts[0], act[0]


def apply(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    linear, act_node, act = m
    a = normalized(linear)
    with gm.graph.inserting_before(act_node):
        new = ir.new_call(gm.graph, torch.ops.fxc.linear_act.default,
                          (a["input"], a["weight"], a["bias"], act), like=linear)
    act_node.replace_all_uses_with(new)
    return 1


def _linear_problem(linear: fx.Node) -> str | None:
    a = normalized(linear)
    x, w, out = ir.tensor_meta(a["input"]), ir.tensor_meta(a["weight"]), ir.tensor_meta(linear)
    if x is None or w is None or out is None:
        return "the linear has no shape metadata"
    if w.dim() != 2:
        return f"the linear weight is {w.dim()}-D, not a matrix"
    b = a["bias"]
    if b is not None and (ir.tensor_meta(b) is None or ir.tensor_meta(b).shape != w.shape[:1]):
        return "the linear bias is not one value per out feature"
    if not out.is_floating_point():
        return f"non-floating linear ({out.dtype})"
    return None
