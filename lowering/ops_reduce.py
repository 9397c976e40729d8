"""Reductions, arg-reductions, statistics and scans.

Opset 17 quirk: ReduceSum takes its axes as an input, the other Reduce* as an attribute
(opset 18 made them all inputs; Builder.reduce writes either). A torch reduction over no dims (`dim=None` or `[]`) reduces
over all dims; a 0-d input reduces to itself.

Special values keep torch's semantics (issue 16.3; tests/test_special_values.py):
- max/min (amax, amin, max.dim, argmax, ...) propagate NaN in torch; ONNX Runtime's
  ReduceMax/ArgMax skip it. `_nan_reduce` adds back a NaN where any input of a slice is
  NaN (an IsNaN, a Where, a ReduceSum and a Sub: y - 0 keeps -0.0), and `_nan_arg` points an
  arg-reduction at the first NaN, as torch does; both run behind `nan_gated`, an If on
  whether x holds a NaN at all, so a NaN-free call pays one ReduceSum.
- mean over an empty axis is 0 / 0 = NaN in torch; ONNX Runtime's ReduceMean returns 0, so
  an empty static axis is written as ReduceSum / 0.
"""
from __future__ import annotations

import math

import onnx
import torch
from onnx import helper

from .builder import Builder, dtype_of, norm_dim, onnx_dtype, out_meta, rank_of, shape_of
from .registry import Refuse, converter

aten = torch.ops.aten


def _reduce(b: Builder, op_type: str, x: str, axes, keepdim: bool, x_node=None,
            dt: torch.dtype | None = None) -> str:
    """A Reduce* of `x` (a value of dtype `dt`, computed from fx node `x_node`) with torch's
    special values: NaN through max/min, NaN for the mean of an empty axis."""
    if op_type in ("ReduceMax", "ReduceMin") and dt is not None and dt.is_floating_point:
        return _nan_reduce(b, op_type, x, axes, keepdim, dt)
    if op_type == "ReduceMean" and x_node is not None and _empty_axis(x_node, axes):
        s = b.reduce("ReduceSum", x, axes, keepdim)
        return b.op("Div", [s, b.scalar(0, dt)])
    return b.reduce(op_type, x, axes, keepdim)


def _empty_axis(x_node, axes) -> bool:
    """Whether a reduced axis of `x_node` has (static) size 0."""
    shape = shape_of(x_node)
    return any(shape[a] == 0 for a in (axes if axes is not None else range(len(shape))))


def _nan_reduce(b: Builder, op_type: str, x: str, axes, keepdim: bool, dt: torch.dtype) -> str:
    """ReduceMax/ReduceMin that returns NaN for a slice holding a NaN, as torch does:
    y - sum(where(isnan(x), x, 0)); the sum is NaN or +0, and y - +0 is y bit for bit
    (-0.0 included). Behind nan_gated: ungated it cost 7-31x the reduction on this machine's
    CPU (IsNaN and Where over x are slow there), gated about 2x (one ReduceSum)."""
    y = b.reduce(op_type, x, axes, keepdim)

    def fix():
        nans = b.op("Where", [b.op("IsNaN", [x]), x, b.scalar(0, dt)])
        return b.op("Sub", [y, b.reduce("ReduceSum", nans, axes, keepdim)])

    return nan_gated(b, x, fix, y, dt, "nan_slices")


def _nan_arg(b: Builder, op_type: str, x: str, axis: int, keepdim: bool) -> str:
    """ArgMax/ArgMin that points at the first NaN of a slice holding one (torch's rule: NaN
    is both the greatest and the least value); behind nan_gated, as _nan_reduce."""
    idx = b.op(op_type, [x], axis=axis, keepdims=int(keepdim))

    def fix():
        isnan = b.op("Cast", [b.op("IsNaN", [x])], to=onnx_dtype(torch.int32))
        first_nan = b.op("ArgMax", [isnan], axis=axis, keepdims=int(keepdim))
        any_nan = b.reduce("ReduceMax", isnan, [axis], keepdim)
        return b.op("Where", [b.cast(any_nan, torch.bool), first_nan, idx])

    return nan_gated(b, x, fix, idx, torch.int64, "nan_index")


def nan_gated(b: Builder, x: str, fix, plain: str, dt: torch.dtype, name: str,
              gate: str | None = None) -> str:
    """`fix()` where `x` may hold a NaN, else `plain`, as an If: the gate (by default) is
    IsNaN(ReduceSum(x)), true for a NaN (or +inf with -inf) anywhere in x, one fast pass;
    the correction `fix` builds runs only then. `dt`: the result's dtype."""
    if gate is None:
        gate = b.op("IsNaN", [b.reduce("ReduceSum", x, None, False)])
    return b.op("If", [gate], then_branch=branch(b, name, fix, dt),
                else_branch=branch(b, "as_is", lambda: b.op("Identity", [plain]), dt))


def branch(b: Builder, name: str, build, dt: torch.dtype) -> onnx.GraphProto:
    """The nodes `build()` appends to `b`, moved into an If branch whose one output is the
    value `build` returns. A branch reads outer values by name, but onnx's checker does not
    let it read initializers: each constant it reads becomes an Identity of the main graph."""
    start = len(b.nodes)
    out = build()
    nodes = b.nodes[start:]
    del b.nodes[start:]
    constants = {t.name for t in b.initializers}
    lifted: dict[str, str] = {}
    for node in nodes:
        for i, v in enumerate(node.input):
            if v in constants:
                if v not in lifted:
                    lifted[v] = b.op("Identity", [v])
                node.input[i] = lifted[v]
    return helper.make_graph(nodes, f"{b.node.name}/{name}", [],
                             [helper.make_tensor_value_info(out, onnx_dtype(dt), None)])


def _axes(x, dims) -> list[int] | None:
    """Normalized, sorted dims; None for 'all dims'."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return None
    if isinstance(dims, int):
        dims = [dims]
    return sorted({norm_dim(d, rank_of(x)) for d in dims})


def _kw(node, i, name, default):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


_DIM_REDUCTIONS = {
    aten.sum.dim_IntList: "ReduceSum", aten.mean.dim: "ReduceMean",
    aten.amax.default: "ReduceMax", aten.amin.default: "ReduceMin",
    aten.prod.dim_int: "ReduceProd", aten.logsumexp.default: "ReduceLogSumExp",
}
_ALL_REDUCTIONS = {
    aten.sum.default: "ReduceSum", aten.mean.default: "ReduceMean",
    aten.max.default: "ReduceMax", aten.min.default: "ReduceMin", aten.prod.default: "ReduceProd",
}


@converter(*_DIM_REDUCTIONS)
def reduce_dims(b: Builder, node):
    """sum.dim_IntList(Tensor self, int[1]? dim, bool keepdim=False, *, ScalarType? dtype=None) -> Tensor
    (and mean.dim, amax, amin, prod.dim_int, logsumexp alike)"""
    x = node.args[0]
    out = out_meta(node)
    axes = _axes(x, _kw(node, 1, "dim", None))
    keepdim = _kw(node, 2, "keepdim", False)
    op_type = _DIM_REDUCTIONS[node.target]
    if out.dtype == torch.bool:
        return Refuse(f"{op_type} of bool tensors")
    xv = b.tensor(x, out.dtype)
    if rank_of(x) == 0:
        return b.op("Identity", [xv])
    if (op_type == "ReduceMean" and keepdim and rank_of(x) == 4 and axes == [2, 3]
            and out.is_floating_point()):
        return b.op("GlobalAveragePool", [xv])  # what adaptive_avg_pool2d(1) decomposes to
    if any(shape_of(x)[a] == 0 for a in (axes if axes is not None else range(rank_of(x)))) \
            and op_type in ("ReduceMax", "ReduceMin"):
        return Refuse("max/min over an empty dim (torch raises)")
    return _reduce(b, op_type, xv, axes, keepdim, x, out.dtype)


@converter(*_ALL_REDUCTIONS)
def reduce_all(b: Builder, node):
    """sum(Tensor self, *, ScalarType? dtype=None) -> Tensor  (and mean, max, min, prod over all dims)"""
    x, out = node.args[0], out_meta(node)
    op_type = _ALL_REDUCTIONS[node.target]
    if out.dtype == torch.bool:
        return Refuse(f"{op_type} of bool tensors")
    xv = b.tensor(x, out.dtype)
    if rank_of(x) == 0:
        return b.op("Identity", [xv])
    return _reduce(b, op_type, xv, None, False, x, out.dtype)


@converter(aten.max.dim, aten.min.dim)
def max_dim(b: Builder, node):
    """max.dim(Tensor self, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)"""
    x, dim = node.args[:2]
    keepdim = _kw(node, 2, "keepdim", False)
    if rank_of(x) == 0:
        return [b.op("Identity", [b.tensor(x)]),
                b.op("Identity", [b.const(torch.tensor(0, dtype=torch.int64))])]
    axis = norm_dim(dim, rank_of(x))
    xv = b.tensor(x)
    is_max = node.target == aten.max.dim
    dt = dtype_of(x)
    values = _reduce(b, "ReduceMax" if is_max else "ReduceMin", xv, [axis], keepdim, x, dt)
    return [values, _arg_reduce(b, "ArgMax" if is_max else "ArgMin", xv, axis, keepdim, dt)]


def _arg_reduce(b: Builder, op_type: str, x: str, axis: int, keepdim, dt) -> str:
    if dt.is_floating_point:
        return _nan_arg(b, op_type, x, axis, bool(keepdim))
    return b.op(op_type, [x], axis=axis, keepdims=int(bool(keepdim)))


@converter(aten.argmax.default, aten.argmin.default)
def argmax(b: Builder, node):
    """argmax(Tensor self, int? dim=None, bool keepdim=False) -> Tensor"""
    x = node.args[0]
    dim = _kw(node, 1, "dim", None)
    keepdim = _kw(node, 2, "keepdim", False)
    op_type = "ArgMax" if node.target == aten.argmax.default else "ArgMin"
    xv = b.tensor(x)
    if rank_of(x) == 0:
        return b.op("Identity", [b.const(torch.tensor(0, dtype=torch.int64))])
    if dim is None:  # over the flattened tensor
        flat = b.op("Reshape", [xv, b.ints([-1])])
        y = _arg_reduce(b, op_type, flat, 0, False, dtype_of(x))
        return b.op("Reshape", [y, b.ints(out_meta(node).shape)])
    return _arg_reduce(b, op_type, xv, norm_dim(dim, rank_of(x)), keepdim, dtype_of(x))


@converter(aten.var_mean.correction)
def var_mean(b: Builder, node):
    """var_mean.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None, bool keepdim=False) -> (Tensor, Tensor)"""
    v = var(b, node)
    x, keepdim = node.args[0], node.kwargs.get("keepdim", False)
    if isinstance(v, Refuse):
        return v
    dt = out_meta(node)[1].dtype
    xv = b.tensor(x, dt)
    if rank_of(x) == 0:
        return [v, b.op("Identity", [xv])]
    return [v, _reduce(b, "ReduceMean", xv, _axes(x, _kw(node, 1, "dim", None)), keepdim, x, dt)]


@converter(aten.var.correction, aten.std.correction)
def var(b: Builder, node):
    """var.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None, bool keepdim=False) -> Tensor
    = sum((x - mean)^2) / (n - correction); std is its square root"""
    x = node.args[0]
    out = out_meta(node)[0] if isinstance(out_meta(node), (tuple, list)) else out_meta(node)
    axes = _axes(x, _kw(node, 1, "dim", None))
    correction = node.kwargs.get("correction")
    correction = 1 if correction is None else correction
    keepdim = node.kwargs.get("keepdim", False)
    dt = out.dtype
    xv = b.tensor(x, dt)
    if rank_of(x) == 0:
        xv = b.op("Reshape", [xv, b.ints([1])])
        axes = [0]
    dims = axes if axes is not None else list(range(max(rank_of(x), 1)))
    n = math.prod(shape_of(x)[d] for d in dims) if rank_of(x) else 1
    mean = _reduce(b, "ReduceMean", xv, axes, True, x if rank_of(x) else None, dt)
    d = b.op("Sub", [xv, mean])
    ss = _reduce(b, "ReduceSum", b.op("Mul", [d, d]), axes, keepdim)
    y = b.op("Div", [ss, b.scalar(max(n - correction, 0), dt)])
    if rank_of(x) == 0:
        y = b.op("Reshape", [y, b.ints([])])
    return b.op("Sqrt", [y]) if node.target == aten.std.correction else y


@converter(aten.any.default, aten.any.dim, aten.any.dims, aten.all.default, aten.all.dim,
           aten.all.dims)
def any_all(b: Builder, node):
    """any.dim(Tensor self, int dim, bool keepdim=False) -> Tensor  (and all, over dims or all)"""
    x = node.args[0]
    dims = None if node.target in (aten.any.default, aten.all.default) else _kw(node, 1, "dim", None)
    keepdim = _kw(node, 2, "keepdim", False)
    as_int = b.cast(b.tensor(x, torch.bool), torch.int32)  # ORT reduces ints, not bools
    if rank_of(x) == 0:
        return b.cast(as_int, torch.bool)
    op_type = "ReduceMax" if node.target.__name__.startswith("any") else "ReduceMin"
    return b.cast(_reduce(b, op_type, as_int, _axes(x, dims), keepdim), torch.bool)


@converter(aten.cumsum.default)
def cumsum(b: Builder, node):
    """cumsum(Tensor self, int dim, *, ScalarType? dtype=None) -> Tensor"""
    x, dim = node.args[:2]
    dt = out_meta(node).dtype
    xv = b.tensor(x, dt)
    if rank_of(x) == 0:
        return b.op("Identity", [xv])
    return b.op("CumSum", [xv, b.const(torch.tensor(norm_dim(dim, rank_of(x)), dtype=torch.int64))])


@converter(aten.linalg_vector_norm.default)
def vector_norm(b: Builder, node):
    """linalg_vector_norm(Tensor self, Scalar ord=2, int[1]? dim=None, bool keepdim=False, *, ScalarType? dtype=None) -> Tensor"""
    x = node.args[0]
    ord_ = _kw(node, 1, "ord", 2)
    ops = {2: "ReduceL2", 1: "ReduceL1", float("inf"): "ReduceMax"}
    if ord_ not in ops:
        return Refuse(f"vector norm of order {ord_}")
    xv = b.tensor(x, out_meta(node).dtype)
    if ord_ == float("inf"):
        xv = b.op("Abs", [xv])
    if rank_of(x) == 0:
        return b.op("Abs", [xv])
    dt = out_meta(node).dtype
    return _reduce(b, ops[ord_], xv, _axes(x, _kw(node, 2, "dim", None)), _kw(node, 3, "keepdim", False),
                   x, dt)
