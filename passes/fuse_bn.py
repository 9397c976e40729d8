"""Fold eval-mode batch norm into the convolution or linear layer before it.

    y = BN(conv(x, W) + b) = conv(x, W') + b'    with s = gamma / sqrt(var + eps):
    W' = W * s   (over W's out-channel axis: 0, or 1 for transposed conv, per group)
    b' = (b - mean) * s + beta        (b = 0 where the conv had no bias)

Rules: 1. convolution (any rank, groups, transposed, with or without bias) -> batch norm;
2. linear (output (N, C)) -> batch norm (BatchNorm1d, whose axis 1 is the out features).
The batch norm is `_native_batch_norm_legit_no_training` (+ getitem 0), or `native_batch_norm` /
`_native_batch_norm_legit` / `batch_norm` with training=False.

W' and b' are computed once, here, in float64 and cast back to W's dtype; they become new
constants (get_attr nodes with meta) on the GraphModule, and the old ones are freed when no
node reads them any more.

Invariant: outputs equal the stage before up to the rounding of a reassociated product: each
folded layer is as close to the float64 result as the unfolded one. Over a whole model that
rounding noise exceeds assert_close's fp32 defaults (efficientnet tiny: 3e-5 absolute on
logits of 20, where eager fp32 itself is 6e-5 from float64), so the pipeline checks this pass
with the "reassoc" contract (relative norm error at rounding level); tests check it per
layer, tighter. Refuses,
with the reason: a conv/linear output read by anyone else (it would need the unnormalized
value too), a weight, bias or BN statistic that is not a constant, a training-mode batch norm,
non-floating dtypes, a batch norm over another axis than the out features.
"""
from __future__ import annotations

import operator
import re

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from fxc import ir

from . import dce
from .fuse_conv import normalized
from .manager import PassContext, PassResult
from .rewrite import Refuse, Rule, is_graph_output, is_op, run_rules

aten = torch.ops.aten

EVAL_BN = (aten._native_batch_norm_legit_no_training.default,)
MAYBE_TRAINING_BN = (aten._native_batch_norm_legit.default, aten.native_batch_norm.default,
                     aten.batch_norm.default)
ALWAYS_TRAINING_BN = (aten._native_batch_norm_legit.no_stats,)
TUPLE_BN = EVAL_BN + (aten._native_batch_norm_legit.default, aten.native_batch_norm.default)
PRODUCERS = (aten.convolution.default, aten.linear.default)


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    result = run_rules(gm, [Rule("fold_bn", match, apply)], ctx)
    freed = dce.drop_unused_attributes(gm)
    if freed:
        result.notes.append(f"freed {freed} folded constant(s)")
    return result


# -- match ----------------------------------------------------------------------------------

def match(bn: fx.Node, ctx: PassContext):
    """Anchored on the batch norm; returns (producer, bn, bn args, outputs to replace)."""
    if not is_op(bn, *EVAL_BN, *MAYBE_TRAINING_BN, *ALWAYS_TRAINING_BN):
        return None
    a = normalized(bn)
    prod = a["input"]
    if not is_op(prod, *PRODUCERS):
        return None
    if bn.target in ALWAYS_TRAINING_BN or a.get("training", False):
        return Refuse("batch norm in training mode (batch statistics)")
    why = _check_producer(prod, bn) or _check_constants(prod, a) or _check_dtypes(prod, bn, a)
    if why:
        return Refuse(why)
    outs = _bn_outputs(bn)
    if isinstance(outs, Refuse):
        return outs
    return prod, bn, a, outs


def _check_producer(prod: fx.Node, bn: fx.Node) -> str | None:
    kind = "conv" if prod.target is aten.convolution.default else "linear"
    if is_graph_output(prod):
        return f"the {kind} output is also a graph output"
    if len(prod.users) != 1:
        return f"the {kind} output has another user"
    out = ir.tensor_meta(prod)
    if out is None:
        return f"the {kind} has no shape metadata"
    if kind == "linear" and out.dim() != 2:
        return f"batch norm normalizes axis 1 of the {out.dim()}-D linear output, not its features"
    if kind == "conv" and out.dim() != ir.tensor_meta(normalized(prod)["weight"]).dim():
        return "unbatched conv: batch norm's axis 1 is not its channels"
    return None


def _check_constants(prod: fx.Node, a: dict) -> str | None:
    p = normalized(prod)
    w, b = p["weight"], p["bias"]
    kind = "conv" if prod.target is aten.convolution.default else "linear"
    if not _is_const(w):
        return f"the {kind} weight is not a constant"
    if b is not None and not _is_const(b):
        return f"the {kind} bias is not a constant"
    if not (_is_const(a["running_mean"]) and _is_const(a["running_var"])):
        return "the batch norm statistics are not constants"
    if not all(p is None or _is_const(p) for p in (a["weight"], a["bias"])):
        return "the batch norm affine parameters are not constants"
    return None


def _check_dtypes(prod: fx.Node, bn: fx.Node, a: dict) -> str | None:
    tensors = [prod, normalized(prod)["weight"], a["running_mean"], a["running_var"]]
    tensors += [p for p in (a["weight"], a["bias"]) if p is not None]
    if not all(ir.tensor_meta(t) is not None and ir.tensor_meta(t).is_floating_point()
               for t in tensors):
        return "non-floating dtype"
    out = bn.meta.get("val")
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out is None or out.dtype != ir.tensor_meta(prod).dtype:
        return "batch norm output dtype differs from its input's"
    return None


def _bn_outputs(bn: fx.Node) -> list[fx.Node] | Refuse:
    """The nodes that carry the normalized value: bn itself, or its getitem-0 users."""
    if bn.target not in TUPLE_BN:
        return [bn]
    outs = []
    for u in bn.users:
        if u.target is not operator.getitem or u.args[1] != 0:
            return Refuse("batch norm's saved mean/var outputs are used")
        outs.append(u)
    return outs


def _is_const(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


# -- apply ----------------------------------------------------------------------------------

def apply(gm: fx.GraphModule, m, ctx: PassContext) -> int:
    prod, bn, a, outs = m
    p = normalized(prod)
    w_node, b_node = p["weight"], p["bias"]
    w, b = _fetch(gm, w_node), _fetch(gm, b_node) if b_node is not None else None
    new_w, new_b = fold(w, b, *(None if a[k] is None else _fetch(gm, a[k])
                                 for k in ("weight", "bias", "running_mean", "running_var")),
                        eps=a["eps"], **_layout(prod))
    with gm.graph.inserting_before(prod):
        w_attr = _constant(gm, new_w, w_node, "bnfold_w")
        b_attr = _constant(gm, new_b, w_node, "bnfold_b")
        p.update(weight=w_attr, bias=b_attr)
        new = ir.new_call(gm.graph, prod.target, tuple(p.values()), {}, like=prod)
    for out in outs:
        out.replace_all_uses_with(new)
    # Erase explicitly: fx's DCE keeps `_native_batch_norm_legit` (its schema may mutate the
    # running stats, though with training=False it does not), and the old producer with it.
    for dead in [o for o in outs if o is not bn] + [bn, prod]:
        if not dead.users:
            gm.graph.erase_node(dead)
    return 1


def _layout(prod: fx.Node) -> dict:
    """Where the out channels are in the weight: axis 0, or axis 1 (per group) if transposed."""
    if prod.target is aten.linear.default:
        return dict(transposed=False, groups=1)
    a = normalized(prod)
    return dict(transposed=bool(a["transposed"]), groups=int(a["groups"]))


def fold(w: torch.Tensor, b: torch.Tensor | None, gamma: torch.Tensor | None,
         beta: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, *, eps: float,
         transposed: bool = False, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of the docstring, computed in float64 on the CPU, returned in W's dtype/device."""
    d = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
    scale = d(var).add(eps).rsqrt()                                  # (C_out,)
    if gamma is not None:
        scale = scale * d(gamma)
    shift = -d(mean) * scale if b is None else (d(b) - d(mean)) * scale
    if beta is not None:
        shift = shift + d(beta)
    w64 = d(w)
    if transposed:  # (C_in, C_out/g, *k): out channel g*(C_out/g) + j sits at [g-th block, j]
        c_in, per_group = w64.shape[0], w64.shape[1]
        k = w64.shape[2:]
        w64 = w64.reshape(groups, c_in // groups, per_group, *k)
        w64 = w64 * scale.reshape(groups, 1, per_group, *[1] * len(k))
        w64 = w64.reshape(c_in, per_group, *k)
    else:           # (C_out, C_in/g, *k) or linear's (C_out, C_in)
        w64 = w64 * scale.reshape(-1, *[1] * (w64.dim() - 1))
    return w64.to(w.device, w.dtype), shift.to(w.device, w.dtype)


def _fetch(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _constant(gm: fx.GraphModule, value: torch.Tensor, like: fx.Node, suffix: str) -> fx.Node:
    """Register `value` as a buffer and return a get_attr node for it, with true meta."""
    base = re.sub(r"\W", "_", f"{like.target}_{suffix}")
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    gm.register_buffer(name, value, persistent=False)
    node = gm.graph.get_attr(name)
    node.meta["val"] = FakeTensorMode(allow_non_fake_inputs=True).from_tensor(value)
    return node
