"""What a pass did to the graph: nodes added, removed, changed, and which new node took the
place of each removed one (its fusion group).

A node is the same node in two stages when its name and op are equal; it is `changed` when
its output meta or constants differ, or its inputs do other than through a replacement (a
relu that now reads the conv that replaced its conv has not changed). A removed node is
`replaced` by an added node:
1. the one the pass named (node.meta["fxc_from"], see snapshot.PROVENANCE_KEY), else
2. the added node it shares the most boundary with (a surviving producer or consumer, or a
   constant such as a weight: a fused conv reads the conv's weight), when that is unique and
   the contact is more than a shared input (dead code reads the same inputs); else
   a neighbour that kept its name but reads new constants (batch norm folded into a conv's
   weights, a constant subgraph folded into one tensor); else
3. its removed producer's replacement (the epilogue goes with its conv), then its removed
   consumer's; else the one candidate that all tied nodes of its connected run of removed
   nodes share; else
4. the main node of the one group of connected added nodes it tied between (three linears
   merged into one GEMM + split: the GEMM).
What is left was deleted outright (dead code, an identity, a duplicate).
"""
from __future__ import annotations

import collections
import dataclasses

from .snapshot import NodeInfo, Snapshot

SHAPE_OPS = ("view", "reshape", "permute", "expand", "split", "unsqueeze", "squeeze",
             "transpose", "slice", "select", "getitem", "t.default", "_to_copy")


@dataclasses.dataclass
class StageDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]
    replaced_by: dict[str, str]          # removed node -> added node that took its place


def diff(before: Snapshot, after: Snapshot) -> StageDiff:
    old, new = before.by_name(), after.by_name()
    same = {k for k in old.keys() & new.keys() if old[k].op == new[k].op}
    removed = [n.name for n in before.nodes if n.name not in same]
    added = [n.name for n in after.nodes if n.name not in same]
    replaced = _attribute(before, after, same, removed, added)
    changed = [n.name for n in after.nodes if n.name in same and _changed(old[n.name], n, replaced)]
    return StageDiff(added, removed, changed, replaced)


def _changed(old: NodeInfo, new: NodeInfo, replaced: dict[str, str]) -> bool:
    """Other output meta, other constants, or other inputs: reading the node that replaced
    an input does not count (that is the replacement's change, not this node's)."""
    rewired = [replaced.get(i, i) for i in old.inputs]
    return (old.meta != new.meta or old.constants != new.constants
            or list(dict.fromkeys(rewired)) != new.inputs)


def _attribute(before: Snapshot, after: Snapshot, same: set[str], removed: list[str],
               added: list[str]) -> dict[str, str]:
    gone, fresh = set(removed), [a for a in added if after.by_name()[a].kind in ("op", "getitem")]
    out: dict[str, str] = {}
    new_nodes = after.by_name()
    for a in fresh:  # rule 1
        for r in new_nodes[a].fused_from or ():
            if r in gone:
                out[r] = a
    ties, weak = _by_boundary(before, after, same, gone - out.keys(), fresh, out)  # rule 2
    _into_constants(before, after, same, gone, out)  # rule 2b
    _propagate(before, gone, out)  # rule 3
    _agree(before, gone - out.keys(), ties, weak, out)  # rule 3b
    _propagate(before, gone, out)
    comp = _components(after, set(fresh))
    for r, cands in ties.items():  # rule 4
        if r not in out and len({comp[c] for c in cands}) == 1:
            out[r] = _main(after, [a for a in fresh if comp[a] == comp[cands[0]]])
    return out


def _users(s: Snapshot) -> dict[str, list[str]]:
    users = collections.defaultdict(list)
    for n in s.nodes:
        for i in n.inputs:
            users[i].append(n.name)
    return users


def _boundary(n: NodeInfo, users: dict[str, list[str]], same: set[str]) -> set[str]:
    """Where a node touches the unchanged part of the graph, with the role it plays there: a
    value read ('in:relu_4') is not the same contact as a value feeding it ('out:relu_4')."""
    b = {"in:" + i for i in n.inputs if i in same}
    b |= {"out:" + u for u in users.get(n.name, ()) if u in same}
    return b | {"const:" + c for c, _ in n.constants}


def _by_boundary(before, after, same, todo, fresh, out):
    """Rule 2; returns the candidates of each removed node it could not place: `ties` (on
    real evidence) and `weak` (on shared inputs only)."""
    new_users, weak = _users(after), {}
    holders = collections.defaultdict(set)
    new_nodes = after.by_name()
    for a in fresh:
        for b in _boundary(new_nodes[a], new_users, same):
            holders[b].add(a)
    old_users, ties = _users(before), {}
    for n in before.nodes:
        if n.name not in todo:
            continue
        score = collections.Counter()
        contacts = _boundary(n, old_users, same)
        for b in contacts:
            score.update(holders.get(b, ()))
        if not score:
            continue
        top = max(score.values())
        best = [a for a in fresh if score.get(a) == top]
        if not any(holders.get(b) for b in contacts if not b.startswith("in:")):
            weak[n.name] = best  # reading what a new node reads is no evidence alone:
        elif len(best) == 1:     # dead code does that too
            out[n.name] = best[0]
        else:
            ties[n.name] = best
    return ties, weak


def _into_constants(before: Snapshot, after: Snapshot, same: set[str], gone: set[str],
                    out: dict[str, str]) -> None:
    """Rule 2b: a removed node next to a node that kept its name but now reads other
    constants was folded into them (batch norm into the conv's weights, a constant
    subgraph into one precomputed tensor)."""
    old, new = before.by_name(), after.by_name()
    names = lambda n: [c for c, _ in n.constants]  # noqa: E731
    refolded = {k for k in same if names(old[k]) != names(new[k])}
    users = _users(before)
    for n in before.nodes:
        if n.name in gone and n.name not in out:
            near = [m for m in n.inputs + users.get(n.name, []) if m in refolded]
            if near:
                out[n.name] = near[0]


def _propagate(before: Snapshot, gone: set[str], out: dict[str, str]) -> None:
    """Rule 3: forward in graph order from removed producers, then backward from consumers."""
    for n in before.nodes:
        if n.name in gone and n.name not in out:
            src = [out[i] for i in n.inputs if i in out]
            if src:
                out[n.name] = src[0]
    users = _users(before)
    for n in reversed(before.nodes):
        if n.name in gone and n.name not in out:
            dst = [out[u] for u in users.get(n.name, ()) if u in out]
            if dst:
                out[n.name] = dst[0]


def _agree(before: Snapshot, todo: set[str], ties: dict[str, list[str]],
           weak: dict[str, list[str]], out: dict[str, str]) -> None:
    """Rule 3b: a connected run of unplaced removed nodes goes to the one candidate all its
    members with candidates agree on (a downsample conv ties with the main conv on its input,
    and with the residual branch on its consumer: only its own replacement is in both). A run
    must have one member with real evidence."""
    comp = _components(before, todo)
    runs: dict[int, list[str]] = collections.defaultdict(list)
    for name, c in comp.items():
        runs[c].append(name)
    for names in runs.values():
        if not any(n in ties for n in names):
            continue
        sets = [set(ties.get(n) or weak[n]) for n in names if n in ties or n in weak]
        common = set.intersection(*sets) if sets else set()
        if len(common) == 1:
            target = common.pop()
            for n in names:
                out[n] = target


def _components(s: Snapshot, names: set[str]) -> dict[str, int]:
    """Connected groups of `names` (edges between two of them), as name -> group id."""
    parent = {n: n for n in names}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for n in s.nodes:
        if n.name in names:
            for i in n.inputs:
                if i in names:
                    parent[find(i)] = find(n.name)
    roots: dict[str, int] = {}
    return {n: roots.setdefault(find(n), len(roots)) for n in names}


def _main(after: Snapshot, group: list[str]) -> str:
    """The node of a group that does the work: an fxc op, else the first op that is not a view."""
    nodes = after.by_name()
    for pick in (lambda n: n.op.startswith("fxc."), lambda n: not is_shape_op(n.op)):
        for a in group:
            if pick(nodes[a]):
                return a
    return group[0]


def is_shape_op(op: str) -> bool:
    return op == "getitem" or any(s in op for s in SHAPE_OPS)


def fates(snapshots: list[Snapshot], diffs: list[StageDiff]) -> list[dict[str, str | None]]:
    """For every stage, node -> the node of the final stage it becomes (itself if it survives,
    the node that replaced it, transitively), or None if a pass deleted it on the way."""
    last = {n.name: n.name for n in snapshots[-1].nodes}
    result: list[dict[str, str | None]] = [last]
    for k in range(len(snapshots) - 2, -1, -1):
        d, nxt = diffs[k + 1], result[0]
        gone = set(d.removed)
        cur: dict[str, str | None] = {}
        for n in snapshots[k].nodes:
            if n.name not in gone:
                cur[n.name] = nxt.get(n.name)
            else:
                r = d.replaced_by.get(n.name)
                cur[n.name] = nxt.get(r) if r else None
        result.insert(0, cur)
    return result
