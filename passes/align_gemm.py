"""Pad a half-precision GEMM's output features to a multiple of 8, so tensor cores can take it.

    linear(x, W[N, K], b[N])  ->  slice(linear(x, W_pad[N8, K], b_pad[N8]), -1, 0, N)
    (and the same for fxc::linear_act), N8 = N rounded up to a multiple of ALIGN

Why: cuBLAS needs the leading dimensions of fp16/bf16 operands to be multiples of 8 elements
(16 bytes) for its tensor-core kernels; GPT-2's tied LM head has N = 50257 output features,
and there cuBLAS falls back to an `align1` CUTLASS kernel: 0.129 ms of gpt2-base's 0.63 ms of
kernel time per call at batch 1 on an H100 (fp16, seq 128, measured with torch.profiler).

Invariant: the graph's values are unchanged up to the GEMM's rounding order (the padded rows
are zeros and are sliced away; another kernel may sum in another order: numerics "lowp").
Only constant weights are padded, once, at compile time; where the weight has other users
(a tied embedding), they read a view of the padded copy's first N rows, so the weight is
stored once. Runs on CUDA in fp16/bf16, after cast_precision (the weights are half by then).
Refuses, with the reason: a weight that is not a constant, an input width K that is not a
multiple of 8 (padding N alone leaves the operands misaligned).
"""
from __future__ import annotations

import torch
import torch.fx as fx

import fxc.ops  # noqa: F401  (torch.ops.fxc.*)
from fxc import ir

from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_op, run_rules

aten = torch.ops.aten
ALIGN = 8
GEMMS = (aten.linear.default, torch.ops.fxc.linear_act.default)  # (x, W, b?, ...) both


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    result = run_rules(gm, [Rule("align_gemm_n", match, apply)], ctx)
    freed = ir.drop_unused_constants(gm)  # the unpadded weights, now unread
    if result.rewrites:
        result.notes.append(f"{freed} unpadded constant(s) freed")
    return result


def match(n: fx.Node, ctx: PassContext):
    if not any(is_op(n, t) for t in GEMMS):
        return None
    w = n.args[1]
    wv = ir.tensor_meta(w) if isinstance(w, fx.Node) else None
    if wv is None or wv.dim() != 2 or wv.shape[0] % ALIGN == 0:
        return None
    if wv.dtype not in (torch.float16, torch.bfloat16):
        return None
    if w.op != "get_attr":
        return Refuse("the weight is computed, not a constant: padding it would cost every call")
    if wv.shape[1] % ALIGN:
        return Refuse(f"K = {wv.shape[1]} is not a multiple of {ALIGN}: padding N alone "
                      f"leaves the operands misaligned")
    b = n.args[2] if len(n.args) > 2 else None
    if b is not None and (not isinstance(b, fx.Node) or b.op != "get_attr"):
        return Refuse("the bias is computed, not a constant")
    return n


def apply(gm: fx.GraphModule, n: fx.Node, ctx: PassContext) -> int:
    w, b = n.args[1], n.args[2] if len(n.args) > 2 else None
    rows = ir.tensor_meta(w).shape[0]
    w_pad = _padded_constant(gm, w, rows)
    _reroute_other_users(gm, w, w_pad, rows, keep=n)
    args = list(n.args)
    args[1] = w_pad
    if b is not None:
        args[2] = _padded_constant(gm, b, rows)
    with gm.graph.inserting_before(n):
        wide = ir.new_call(gm.graph, n.target, tuple(args), dict(n.kwargs), like=n)
        narrow = ir.new_call(gm.graph, aten.slice.Tensor, (wide, -1, 0, rows), like=n)
    n.replace_all_uses_with(narrow)
    gm.graph.erase_node(n)
    return 1


def _padded_constant(gm: fx.GraphModule, c: fx.Node, rows: int) -> fx.Node:
    """A get_attr of `c`'s tensor with zero rows appended up to a multiple of ALIGN."""
    t = ir.fetch_attr(gm, c.target).detach()
    padded = torch.cat([t, t.new_zeros((-rows % ALIGN, *t.shape[1:]))])
    return ir.add_constant(gm, padded, f"{c.target}_pad{ALIGN}", after=c, like=c)


def _reroute_other_users(gm, w: fx.Node, w_pad: fx.Node, rows: int, keep: fx.Node) -> None:
    """Other readers of the weight (a tied embedding) read rows [0, N) of the padded copy."""
    others = [u for u in w.users if u is not keep]
    if not others:
        return
    with gm.graph.inserting_after(w_pad):
        view = ir.new_call(gm.graph, aten.slice.Tensor, (w_pad, 0, 0, rows), like=others[0])
    for u in others:
        u.replace_input_with(w, view)
