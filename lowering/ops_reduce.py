"""Reductions, arg-reductions, statistics and scans.

Opset 17 quirk: ReduceSum takes its axes as an input, the other Reduce* as an attribute
(opset 18 made them all inputs; Builder.reduce writes either). A torch reduction over no dims (`dim=None` or `[]`) reduces
over all dims; a 0-d input reduces to itself.
"""
from __future__ import annotations

import math

import torch

from .builder import Builder, norm_dim, out_meta, rank_of, shape_of
from .registry import Refuse, converter

aten = torch.ops.aten


def _reduce(b: Builder, op_type: str, x: str, axes, keepdim: bool) -> str:
    return b.reduce(op_type, x, axes, keepdim)


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
    return _reduce(b, op_type, xv, axes, keepdim)


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
    return _reduce(b, op_type, xv, None, False)


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
    values = _reduce(b, "ReduceMax" if is_max else "ReduceMin", xv, [axis], keepdim)
    idx = b.op("ArgMax" if is_max else "ArgMin", [xv], axis=axis, keepdims=int(bool(keepdim)))
    return [values, idx]


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
        y = b.op(op_type, [flat], axis=0, keepdims=0)
        return b.op("Reshape", [y, b.ints(out_meta(node).shape)])
    return b.op(op_type, [xv], axis=norm_dim(dim, rank_of(x)), keepdims=int(bool(keepdim)))


@converter(aten.var_mean.correction)
def var_mean(b: Builder, node):
    """var_mean.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None, bool keepdim=False) -> (Tensor, Tensor)"""
    v = var(b, node)
    x, keepdim = node.args[0], node.kwargs.get("keepdim", False)
    if isinstance(v, Refuse):
        return v
    xv = b.tensor(x, out_meta(node)[1].dtype)
    if rank_of(x) == 0:
        return [v, b.op("Identity", [xv])]
    return [v, _reduce(b, "ReduceMean", xv, _axes(x, _kw(node, 1, "dim", None)), keepdim)]


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
    mean = _reduce(b, "ReduceMean", xv, axes, True)
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
    return _reduce(b, ops[ord_], xv, _axes(x, _kw(node, 2, "dim", None)), _kw(node, 3, "keepdim", False))
