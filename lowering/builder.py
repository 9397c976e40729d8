"""The ONNX graph under construction, and the few verbs converters use to add to it.

A converter sees one `Builder`: `b.op("Relu", [x])` appends a node named after the fx node
being converted (`relu_3`, then `relu_3/1`, `relu_3/2` for multi-node expansions) whose
doc_string is the user's source line; `b.const(...)` adds an initializer (small constants
shared); `b.tensor(arg, dtype)` gives any argument (fx node or Python scalar) as an ONNX value
of `dtype`, casting where torch's type promotion would.

Invariant: every value name is produced once (by a node, an input or an initializer), so
the model is in SSA form and `onnx.checker` accepts it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper, numpy_helper

from fxc import ir

TORCH_TO_ONNX = {
    torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16, torch.float64: TensorProto.DOUBLE,
    torch.int64: TensorProto.INT64, torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16, torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8, torch.bool: TensorProto.BOOL,
}
ONNX_TO_TORCH = {v: k for k, v in TORCH_TO_ONNX.items()}
_SHARE_BELOW = 64  # constants with fewer elements are deduplicated by value


def onnx_dtype(dtype: torch.dtype) -> int:
    try:
        return TORCH_TO_ONNX[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no ONNX equivalent here") from None


def to_tensor_proto(t: torch.Tensor, name: str) -> onnx.TensorProto:
    """A torch tensor as an initializer (bfloat16 through its raw bits: numpy has no bf16)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        proto = helper.make_tensor(name, TensorProto.BFLOAT16, list(t.shape),
                                   t.view(torch.int16).numpy().tobytes(), raw=True)
        return proto
    return numpy_helper.from_array(t.numpy(), name)


class Builder:
    """Accumulates nodes and initializers; converters add through `op`, `const`, `tensor`."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.env: dict[fx.Node, Any] = {}   # fx node -> ONNX name (or list of names)
        self.batch: dict[fx.Node, bool] = {}  # dynamic batch: node's dim 0 is the batch
        self.node: fx.Node | None = None    # the fx node being converted
        self._k = 0
        self._shared: dict[tuple, str] = {}
        self._n_const = 0

    # -- naming ---------------------------------------------------------------------------
    def begin(self, node: fx.Node) -> None:
        self.node, self._k = node, 0

    def fresh(self) -> str:
        base = self.node.name if self.node is not None else "v"
        name = base if self._k == 0 else f"{base}/{self._k}"
        self._k += 1
        return name

    # -- nodes ----------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str | None], n_out: int = 1,
           domain: str = "", **attrs) -> Any:
        """Append one node; returns its output name (or a list when n_out > 1).

        `None` inputs become '' (ONNX's absent optional input)."""
        outs = [self.fresh() for _ in range(n_out)]
        doc = ir.source_line(self.node) if self.node is not None else None
        node = helper.make_node(op_type, ["" if i is None else i for i in inputs], outs,
                                name=outs[0], domain=domain or None,
                                **{k: v for k, v in attrs.items() if v is not None})
        if doc:
            node.doc_string = doc
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    # -- constants ------------------------------------------------------------------------
    def const(self, value: Any, dtype: torch.dtype | None = None) -> str:
        """An initializer holding `value` (tensor, array, list or scalar) as `dtype`."""
        t = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=dtype)
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        key = None
        if t.numel() < _SHARE_BELOW:
            key = (t.dtype, tuple(t.shape), t.detach().cpu().contiguous().view(-1).tolist().__repr__())
            if key in self._shared:
                return self._shared[key]
        name = f"const/{self._n_const}"
        self._n_const += 1
        self.initializers.append(to_tensor_proto(t, name))
        if key is not None:
            self._shared[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant: shapes, axes, pads, starts/ends. A symbolic size is refused
        (SymbolicShape): written here it would be fixed at its compile-time value."""
        for v in values:
            if isinstance(v, torch.SymInt):
                raise SymbolicShape(v)
        return self.const(torch.tensor([int(v) for v in values], dtype=torch.int64))

    def sizes(self, values: Sequence[Any]) -> str:
        """A 1-D int64 value of sizes that may be computed in the graph: ints, and fx nodes of
        SymInt values (their ONNX values are 0-d int64, see ops_shape.sym_size)."""
        if not any(isinstance(v, fx.Node) for v in values):
            return self.ints(values)
        parts, run = [], []
        for v in values:
            if isinstance(v, fx.Node):
                if run:
                    parts.append(self.ints(run))
                    run = []
                parts.append(self.op("Unsqueeze", [self.value(v), self.ints([0])]))
            else:
                run.append(v)
        if run:
            parts.append(self.ints(run))
        return self.op("Concat", parts, axis=0)

    def scalar(self, value: Any, dtype: torch.dtype) -> str:
        """A 0-d constant of `dtype` (a Python scalar cast as torch casts it in an op)."""
        return self.const(torch.tensor(value).to(dtype))

    # -- values ---------------------------------------------------------------------------
    def value(self, arg: fx.Node) -> str:
        v = self.env[arg]
        if not isinstance(v, str):
            raise TypeError(f"%{arg.name} is a tuple of values, not one tensor")
        return v

    def tensor(self, arg: Any, dtype: torch.dtype | None = None) -> str:
        """`arg` as an ONNX value of `dtype` (None: its own dtype): fx nodes are cast when
        their dtype differs, Python scalars become constants of `dtype`."""
        if isinstance(arg, fx.Node):
            name = self.value(arg)
            have = dtype_of(arg)
            return name if dtype is None or have == dtype else self.cast(name, dtype)
        if dtype is None:
            dtype = torch.tensor(arg).dtype
        return self.scalar(arg, dtype)

    def cast(self, name: str, dtype: torch.dtype) -> str:
        return self.op("Cast", [name], to=onnx_dtype(dtype))

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool) -> str:
        """A Reduce* node over `axes` (None: all dims). ReduceSum takes its axes as an input
        from opset 13, the others from opset 18 (an attribute before)."""
        keep = int(bool(keepdims))
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes) if axes is not None else None],
                           keepdims=keep)
        return self.op(op_type, [x], axes=list(axes) if axes is not None else None, keepdims=keep)


# -- finishing the graph ----------------------------------------------------------------------
# Our own, not onnx-graphsurgeon's cleanup()/toposort(): its round trip drops every node's
# doc_string (the user's source line) and the GPU machine has no graphsurgeon. Converters
# append nodes in fx order, which is topological, so the graph needs no sort, only a check.

def outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (an If's branches, a Loop's body) read from enclosing scopes."""
    reads: set[str] = set()
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                  attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []):
            inner = {v.name for v in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                reads |= (set(n.input) | outer_reads(n)) - inner
                inner |= set(n.output)
            reads -= inner
    reads.discard("")
    return reads


def reads(node: onnx.NodeProto) -> set[str]:
    """Every value a node reads: its inputs ('' is an absent optional one) and its subgraphs'."""
    return ({i for i in node.input if i} | outer_reads(node))


def prune(nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """`nodes` less those no graph output depends on (a multi-output op's unread outputs: the
    indices of a max_pool whose values alone are used, a NaN fix-up of a dropped result)."""
    live, kept = set(outputs), []
    for n in reversed(nodes):
        if live.intersection(n.output):
            live |= reads(n)
            kept.append(n)
    return kept[::-1]


def check_order(nodes: Sequence[onnx.NodeProto], defined: set[str]) -> None:
    """Raise ValueError unless every value a node reads is a graph input, an initializer or an
    output of an earlier node (ONNX's topological order; the checker is optional)."""
    defined = set(defined)
    for n in nodes:
        missing = reads(n) - defined
        if missing:
            raise ValueError(f"ONNX node {n.name} ({n.op_type}) reads {sorted(missing)} "
                             "before any node produces it")
        defined.update(n.output)


# -- meta helpers converters use -----------------------------------------------------------

def meta(arg: Any) -> torch.Tensor | None:
    return arg.meta.get("val") if isinstance(arg, fx.Node) else None


def dtype_of(arg: Any) -> torch.dtype:
    """The dtype of an fx node's tensor, or what torch makes of a Python scalar."""
    v = meta(arg)
    if isinstance(v, torch.Tensor):
        return v.dtype
    if isinstance(arg, fx.Node):
        raise TypeError(f"%{arg.name} is not a tensor")
    return torch.tensor(arg).dtype


class SymbolicShape(Exception):
    """A converter read a symbolic size as a number: it needs static shapes here (the
    lowering reports the node as unsupported instead of fixing the size silently)."""

    def __init__(self, size):
        super().__init__(f"needs static shapes (symbolic size {size})")


class SymbolicSize:
    """A symbolic size in `shape_of`'s tuple: any use of it as a number (int(), indexing,
    arithmetic, comparison) raises SymbolicShape. A converter that reads only the static
    sizes (an attention's head dim, say) lowers; one that reads this one is refused."""

    __slots__ = ("size",)

    def __init__(self, size):
        self.size = size

    def _refuse(self, *args):
        raise SymbolicShape(self.size)

    __int__ = __index__ = __float__ = __bool__ = __hash__ = _refuse
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __truediv__ = __rtruediv__ = _refuse
    __neg__ = _refuse

    def __repr__(self) -> str:
        return f"SymbolicSize({self.size})"


def shape_of(arg: Any) -> tuple:
    """The shape of an fx node's tensor: static sizes as ints, symbolic ones as SymbolicSize
    (whose use as a number refuses the converter instead of fixing the size silently)."""
    v = meta(arg)
    if not isinstance(v, torch.Tensor):
        return ()
    return tuple(d if isinstance(d, int) else SymbolicSize(d) for d in v.shape)


def is_static(arg: Any) -> bool:
    v = meta(arg)
    return not isinstance(v, torch.Tensor) or all(isinstance(d, int) for d in v.shape)


def rank_of(arg: Any) -> int:
    v = meta(arg)
    return v.dim() if isinstance(v, torch.Tensor) else 0


def out_meta(node: fx.Node) -> torch.Tensor:
    return node.meta["val"]


def norm_dim(d: int, rank: int) -> int:
    """A torch dim (negative allowed; rank-0 tensors accept 0 and -1) as 0..rank-1."""
    r = max(rank, 1)
    return d % r if rank else 0


def as_array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
