"""Local rewrite rules: a pattern anchored at one node, a check that returns a match or the
reason it refuses, and a replacement.

Rules are data (tinygrad's (pattern, fn) pairs; onnxscript's check() that says why). A rule
set runs to a fixed point; the pass's notes count every refusal by reason, so a user who
expected a fusion can read in the report why it did not happen.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import torch.fx as fx

from .manager import PassContext, PassResult


@dataclasses.dataclass(frozen=True)
class Rule:
    """`match(node, ctx)` returns a match object (anything truthy) or a `Refuse` with the
    reason; `apply(gm, match, ctx)` rewrites and returns the number of rewrites (>= 1)."""

    name: str
    match: Callable[[fx.Node, PassContext], Any]
    apply: Callable[[fx.GraphModule, Any, PassContext], int]


@dataclasses.dataclass(frozen=True)
class Refuse:
    """A rule's anchor matched but the rewrite would change what the graph computes.

    Falsy on purpose (a refusal is not a match); so test for it with isinstance, not `if`."""

    reason: str

    def __bool__(self) -> bool:
        return False


def run_rules(gm: fx.GraphModule, rules: list[Rule], ctx: PassContext,
              max_rounds: int = 10) -> PassResult:
    """Apply `rules` over the graph until none fires (or max_rounds sweeps)."""
    total, fired = 0, collections.Counter()
    refused: collections.Counter = collections.Counter()
    for _ in range(max_rounds):
        changed = 0
        refused.clear()
        for node in list(gm.graph.nodes):
            if getattr(node, "_erased", False) or node.op != "call_function":
                continue  # erased by an earlier rewrite of this sweep (fx keeps node.graph)
            for rule in rules:
                m = rule.match(node, ctx)
                if isinstance(m, Refuse):
                    refused[(rule.name, m.reason)] += 1
                    continue
                if m:
                    n = rule.apply(gm, m, ctx)
                    changed += n
                    fired[rule.name] += n
                    break
        if changed:
            gm.graph.eliminate_dead_code()
        total += changed
        if not changed:
            break
    notes = [f"{name} x{n}" for name, n in sorted(fired.items())]
    notes += [f"refused {name}: {why} (x{n})" for (name, why), n in sorted(refused.items())]
    return PassResult(rewrites=total, notes=notes)


def is_op(node: Any, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def only_user(node: fx.Node) -> fx.Node | None:
    """The single user of `node`, or None when it has zero or several (fusing would then
    recompute or lose a value someone else reads)."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def is_graph_output(node: fx.Node) -> bool:
    return any(u.op == "output" for u in node.users)
