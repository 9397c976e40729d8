"""Views of an SDPA output that hold for every attention kernel.

SDPA's output strides depend on the kernel torch picks when it runs: flash and memory-efficient
attention (CUDA, and flash attention on CPU) write (B, S, H, D) memory behind the (B, H, S, D)
result, the math kernel writes it contiguous. Capture saw one kernel and dropped HF's `.transpose(1, 2).contiguous()` where that
kernel made it a no-op, leaving `view(transpose(sdpa), (B, S, H * D))`. A pass that changes
which kernel runs (fuse_attention's enable_gqa: flash in half, math in float32 on the same
graph; a dtype cast; a mask) then leaves a view that fails ("view size is not compatible").

`fix(gm)` turns each such view into aten.reshape, which views when the strides allow it (no
copy) and copies when they do not. Views that both layouts allow stay views.

Invariant: values exact; every view reached from an SDPA through permute/transpose can view
its input whichever kernel wrote the SDPA output (a reshape copies where it cannot).
"""
from __future__ import annotations

import contextlib

import torch
import torch.fx as fx

from . import noops
from .rewrite import is_op

aten = torch.ops.aten
_SDPA = aten.scaled_dot_product_attention.default
_LAYOUT = {aten.permute.default: lambda t, n: t.permute(n.args[1]),
           aten.transpose.int: lambda t, n: t.transpose(n.args[1], n.args[2])}


def fix(gm: fx.GraphModule) -> list[str]:
    """Rewrite the views the math kernel's layout could not view; returns their names."""
    fixed = []
    for sdpa in [n for n in gm.graph.nodes if is_op(n, _SDPA)]:
        val = sdpa.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        mode = getattr(val, "fake_mode", None)
        with mode if mode is not None else contextlib.nullcontext():
            fixed += _walk(sdpa, _layouts(val))
    return fixed


def _layouts(val: torch.Tensor) -> list[torch.Tensor]:
    """Meta tensors of the SDPA result's shape as each kernel family lays it out."""
    math = torch.empty(val.shape, dtype=val.dtype, device="meta")
    if val.dim() != 4:
        return [math]
    b, h, s, d = val.shape
    return [math, torch.empty((b, s, h, d), dtype=val.dtype, device="meta").transpose(1, 2)]


def _walk(node: fx.Node, layouts: list[torch.Tensor]) -> list[str]:
    fixed = []
    for user in list(node.users):
        if user.op != "call_function":
            continue
        if user.target in _LAYOUT:
            fixed += _walk(user, [_LAYOUT[user.target](t, user) for t in layouts])
        elif user.target in noops.VIEW_OPS:
            shape = fx.node.map_arg(user.args[1], lambda n: n.meta.get("val"))
            if not all(noops.viewable(t, shape) for t in layouts):
                user.target = aten.reshape.default
                fixed.append(user.name)
    return fixed

