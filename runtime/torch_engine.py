"""The torch engine: the final graph as a flat list of steps, run without fx.Interpreter.

Built once: every node gets a slot in one value list; each step holds its resolved callable,
its argument template with the slots to fill, and the slots that die after it (their last
use), as torch.fx's Interpreter computes per call and we compute once.

Invariant: `run(inputs)` returns exactly what `gm(*inputs)` returns, op for op.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.fx as fx

from fxc import ir
from fxc.errors import FxcRuntimeError


@dataclasses.dataclass
class Step:
    fn: Callable
    args: list            # template; positions in `fills` are overwritten with slot values
    kwargs: dict
    fills: list           # (path, slot): path is (i,) for args[i], (i, j) for args[i][j]
    kwfills: list         # (key, slot) or (key, j, slot) for tensor-list kwargs
    out: int
    frees: tuple[int, ...]
    node: fx.Node
    lists: tuple[int, ...] = ()   # positions of tensor-list args, copied per call before filling


class _Slot:
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


class TorchEngine:
    """Runs a GraphModule's ATen graph step by step; one engine per compiled module."""

    name = "torch"

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        slot: dict[fx.Node, int] = {}
        self.input_slots: list[int] = []
        self.template: list[Any] = []     # initial slot values: constants filled in
        self.steps: list[Step] = []
        for node in gm.graph.nodes:
            if node.op == "output":
                continue
            slot[node] = len(self.template)
            if node.op == "placeholder":
                self.input_slots.append(len(self.template))
                self.template.append(None)
            elif node.op == "get_attr":
                self.template.append(_fetch_attr(gm, node.target))
            elif node.op == "call_function":
                self.template.append(None)
                self.steps.append(_make_step(node, slot))
            else:
                raise FxcRuntimeError(f"the torch engine cannot run {node.op} node {ir.describe(node)}")
        out_node = gm.graph.output_node()
        self.outputs = [_Slot(slot[a]) if isinstance(a, fx.Node) else a for a in out_node.args[0]]
        _assign_frees(gm, self.steps, slot, out_node)

    def run(self, inputs: list[torch.Tensor]) -> list:
        env = list(self.template)
        for s, x in zip(self.input_slots, inputs):
            env[s] = x
        step = None
        try:
            for step in self.steps:
                args = step.args
                if step.fills:
                    args = list(args)
                    for i in step.lists:
                        args[i] = list(args[i])
                    for path, s in step.fills:
                        if len(path) == 1:
                            args[path[0]] = env[s]
                        else:
                            args[path[0]][path[1]] = env[s]
                kwargs = step.kwargs
                if step.kwfills:
                    kwargs = dict(kwargs)
                    for key, s in step.kwfills:
                        kwargs[key] = env[s]
                env[step.out] = step.fn(*args, **kwargs)
                for s in step.frees:
                    env[s] = None
        except Exception as e:
            node = step.node if step is not None else None
            where = f" at {ir.source_line(node)}" if node is not None and ir.source_line(node) else ""
            raise FxcRuntimeError(f"step {ir.describe(node) if node else '?'} failed{where}: "
                                  f"{type(e).__name__}: {e}") from e
        return [env[o.i] if isinstance(o, _Slot) else o for o in self.outputs]


def _fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _make_step(node: fx.Node, slot: dict[fx.Node, int]) -> Step:
    args, fills = [], []
    for i, a in enumerate(node.args):
        if isinstance(a, fx.Node):
            args.append(None)
            fills.append(((i,), slot[a]))
        elif isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a):
            # A tensor list (cat, stack, index): filled in place, so rebuild a fresh list per call.
            args.append(list(a))
            for j, x in enumerate(a):
                if isinstance(x, fx.Node):
                    fills.append(((i, j), slot[x]))
        else:
            args.append(a)
    kwargs, kwfills = {}, []
    for k, v in node.kwargs.items():
        if isinstance(v, fx.Node):
            kwfills.append((k, slot[v]))
        elif isinstance(v, (list, tuple)) and any(isinstance(x, fx.Node) for x in v):
            raise FxcRuntimeError(f"tensor-list keyword argument {k!r} in {ir.describe(node)}")
        else:
            kwargs[k] = v
    lists = tuple(sorted({path[0] for path, _ in fills if len(path) == 2}))
    return Step(node.target, args, kwargs, fills, kwfills, slot[node], (), node, lists)


def _assign_frees(gm: fx.GraphModule, steps: list[Step], slot: dict, out_node: fx.Node) -> None:
    """Free each value after its last use, unless it is a graph output or a constant."""
    keep = {a for a in out_node.args[0] if isinstance(a, fx.Node)}
    last_use: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        for inp in node.all_input_nodes:
            last_use[inp] = node
    dies_at: dict[fx.Node, list[int]] = {}
    for value, user in last_use.items():
        if value in keep or value.op == "get_attr":
            continue
        dies_at.setdefault(user, []).append(slot[value])
    for step in steps:
        step.frees = tuple(dies_at.get(step.node, ()))
