"""Turn a run-time bool attention mask into an additive one, once, for every SDPA reading it.

    keep = <bool mask computed at run time>          (HF: padding mask [B, 1, L, S], causal too)
    o_i  = SDPA(q_i, k_i, v_i, attn_mask=keep)       for every layer i
        ->  bias = where(keep, zero, -inf)           (zero: a 0-d constant of q's dtype)
            o_i  = SDPA(q_i, k_i, v_i, attn_mask=bias)

Why: ATen's SDPA converts a bool mask on every call, before it picks a kernel
(`convert_boolean_attn_mask`: `where(mask, 0, scalar_tensor(-inf, q.dtype))`, two kernels),
so a transformer with L layers sharing one padding mask pays 2L kernels a call for one value.
Done once in the graph, the conversion is one op (and fuse_regions folds it into the kernel
that builds the mask).

Invariant: exact. The additive mask is the very tensor SDPA would have made from the bool one
(same values, same dtype), so every backend kernel gets the same input as before, fully
masked rows included. Runs where the engine is fxc's torch runtime (ONNX lowering converts
masks itself), after cast_precision so q's dtype is final. Leaves alone: constant masks
(fuse_attention already made them float or is_causal), float masks, q in a dtype other than
float16/bfloat16/float32.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from fxc import ir

from .manager import PassContext, PassResult

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    from fxc.backends import engine_is_torch
    if not engine_is_torch(ctx.options):
        return PassResult(notes=["the engine is not fxc's torch runtime: the lowering "
                                 "converts masks itself"])
    made: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}
    notes, rewrites = [], 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not SDPA:
            continue
        mask, why = _bool_mask(node)
        if mask is None:
            if why:
                notes.append(f"refused {node.name}: {why}")
            continue
        dtype = ir.tensor_meta(node.args[0]).dtype
        if (mask, dtype) not in made:
            made[(mask, dtype)] = _additive(gm, mask, dtype)
        _set_mask(node, made[(mask, dtype)])
        rewrites += 1
    notes += [f"{m.name} -> {bias.name} ({str(dt).replace('torch.', '')}), read by "
              f"{len(bias.users)} SDPA" for (m, dt), bias in made.items()]
    return PassResult(rewrites=rewrites, notes=notes)


def _mask_arg(node: fx.Node):
    return node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")


def _bool_mask(node: fx.Node) -> tuple[fx.Node | None, str | None]:
    """(the run-time bool mask this SDPA reads, None) or (None, why not, or None: nothing)."""
    mask = _mask_arg(node)
    if not isinstance(mask, fx.Node):
        return None, None
    mv, qv = ir.tensor_meta(mask), ir.tensor_meta(node.args[0])
    if mv is None or mv.dtype != torch.bool:
        return None, None
    if mask.op == "get_attr":
        return None, "the mask is a constant (fuse_attention's to convert)"
    if qv is None or qv.dtype not in _DTYPES:
        return None, f"q is {None if qv is None else qv.dtype}"
    return mask, None


def _additive(gm: fx.GraphModule, mask: fx.Node, dtype: torch.dtype) -> fx.Node:
    """where(mask, zero, -inf) right after the mask: the one conversion every reader shares."""
    zero = ir.add_constant(gm, torch.zeros((), dtype=dtype, device=ir.tensor_meta(mask).device),
                           "attn_mask_zero", after=mask)
    with gm.graph.inserting_after(zero):
        return ir.new_call(gm.graph, aten.where.ScalarOther, (mask, zero, float("-inf")),
                           like=mask)


def _set_mask(node: fx.Node, bias: fx.Node) -> None:
    if len(node.args) > 3:
        node.args = node.args[:3] + (bias,) + node.args[4:]
    else:
        node.kwargs = {**node.kwargs, "attn_mask": bias}
