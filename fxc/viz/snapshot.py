"""A stage's graph as plain data, taken at the moment the stage is dumped.

Passes rewrite the GraphModule in place, so the report cannot look at it later: a Snapshot
copies what the report shows (names, ops, output meta, source lines, edges, fx code) while
the stage is current.

Invariant: a Snapshot's `nodes` are exactly the graph's drawn nodes, in graph order: every
node but get_attr (fxc's graphs hold placeholders, call_function nodes and the output; a
symbolically traced graph's call_method and call_module nodes are drawn as ops too). Parameters and
buffers (get_attr) are not drawn; each is listed as a constant of the nodes that read it,
the way Netron shows weights inside the op that uses them.
"""
from __future__ import annotations

import dataclasses
import operator
import os

import torch
import torch.fx as fx

from fxc import ir

# A pass may record which nodes a new node replaces (names in the stage before it);
# the report then uses that instead of inferring it from the graph's shape.
PROVENANCE_KEY = "fxc_from"

_PRECISION = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
              torch.float64: "fp64", torch.bool: "bool"}


@dataclasses.dataclass
class NodeInfo:
    name: str
    op: str                      # ir.op_name: 'aten.convolution.default', 'placeholder', ...
    kind: str                    # input | op | getitem | output
    meta: str                    # 'f32[1, 64, 56, 56]' (ir.fmt_meta)
    precision: str               # fp32 | fp16 | bf16 | fp64 | int | bool | -
    source: str                  # the user's line, '' when unknown
    module: str                  # 'layer1.0.conv1 (Conv2d)', '' when unknown
    inputs: list[str]            # drawn producers, in argument order (repeats dropped)
    constants: list[tuple[str, str]]  # (get_attr name, meta) read by this node
    args: str = ""               # the call, '(%relu_4, %w, None, [2, 2], ...)', shortened
    fused_from: list[str] | None = None  # meta[PROVENANCE_KEY] when a pass set it

    def key(self) -> tuple:
        """What must be equal for a node to count as unchanged between two stages."""
        return (self.name, self.op, self.meta, tuple(self.inputs),
                tuple(c[0] for c in self.constants))


@dataclasses.dataclass
class Snapshot:
    stage: str
    nodes: list[NodeInfo]
    code: str
    constants: int               # get_attr nodes in the graph

    def by_name(self) -> dict[str, NodeInfo]:
        return {n.name: n for n in self.nodes}


def drawn(node: fx.Node) -> bool:
    return node.op != "get_attr"


def snapshot(stage: str, gm: fx.GraphModule) -> Snapshot:
    nodes = [_info(n) for n in gm.graph.nodes if drawn(n)]
    consts = sum(1 for n in gm.graph.nodes if n.op == "get_attr")
    return Snapshot(stage, nodes, gm.code, consts)


def _info(node: fx.Node) -> NodeInfo:
    inputs, consts = [], []
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            consts.append((str(arg.target), ir.fmt_meta(arg)))
        elif arg.name not in inputs:
            inputs.append(arg.name)
    fused = node.meta.get(PROVENANCE_KEY)
    return NodeInfo(name=node.name, op=ir.op_name(node), kind=_kind(node),
                    meta=ir.fmt_meta(node) if node.op != "output" else "",
                    precision=precision(node.meta.get("val")), source=_short(ir.source_line(node)),
                    module=_module(node), inputs=inputs, constants=consts, args=call_args(node),
                    fused_from=list(map(str, fused)) if isinstance(fused, (list, tuple)) else None)


def call_args(node: fx.Node, limit: int = 240) -> str:
    """The node's arguments as fx prints them ('%x' for nodes), cut at `limit` characters."""
    if node.op != "call_function":
        return ""
    parts = [_arg(a) for a in node.args] + [f"{k}={_arg(v)}" for k, v in node.kwargs.items()]
    text = "(" + ", ".join(parts) + ")"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _arg(a) -> str:
    if isinstance(a, fx.Node):
        return "%" + a.name
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_arg(x) for x in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
    if isinstance(a, torch.dtype):
        return str(a).replace("torch.", "")
    return repr(a)


def _kind(node: fx.Node) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    return "getitem" if node.target is operator.getitem else "op"


def precision(val) -> str:
    if isinstance(val, (tuple, list)):
        kinds = {precision(v) for v in val} - {"-"}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "-")
    if not isinstance(val, torch.Tensor):
        return "-"
    if val.dtype in _PRECISION:
        return _PRECISION[val.dtype]
    return "int" if not val.dtype.is_floating_point and not val.dtype.is_complex else str(val.dtype)


def _short(src: str | None) -> str:
    """Source lines with the path made relative to the working directory when it is below it
    (the report is read next to the code, and absolute paths crowd the tooltip)."""
    if not src:
        return ""
    path, sep, rest = src.partition(":")
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return src
    return (rel if not rel.startswith("..") else path) + sep + rest


def _module(node: fx.Node) -> str:
    """The innermost nn.Module the node came from, as export recorded it."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, cls = list(stack.values())[-1][:2]
    cls_name = (cls.rsplit(".", 1)[-1] if isinstance(cls, str)
                else getattr(cls, "__name__", str(cls)))
    path = str(path).replace("L['self'].", "").replace("L__self___", "")
    return f"{path} ({cls_name})" if path else cls_name
