"""Dead code elimination: drop every pure node whose value nothing uses.

Invariant: the graph's outputs are unchanged bit for bit; nodes with side effects
(fx's `is_impure`: in-place and random ops, asserts) are never removed. Parameters that no
node reads any more are deleted from the module too, so their memory goes with them.
"""
from __future__ import annotations

import torch.fx as fx

from .manager import PassContext, PassResult


def run(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    removed = 0
    # Reverse order: removing a user can make its inputs dead in the same sweep.
    for node in reversed(list(gm.graph.nodes)):
        if node.op in ("call_function", "get_attr") and not node.users and not node.is_impure():
            gm.graph.erase_node(node)
            removed += 1
    freed = drop_unused_attributes(gm)
    return PassResult(rewrites=removed, notes=[f"freed {freed} unused constant(s)"] if freed else [])


def drop_unused_attributes(gm: fx.GraphModule) -> int:
    """Delete buffers/parameters of `gm` that no get_attr node names."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    dead = [name for name, _ in list(gm.named_buffers()) + list(gm.named_parameters())
            if name not in used and "." not in name]
    for name in dead:
        delattr(gm, name)
    return len(dead)
