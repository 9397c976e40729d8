"""Shape and data-movement ops: views, permutes, slicing, concatenation, indexing, padding,
and constants made by factory ops.

Static shapes: targets come from the node's metadata as int64 constants. Under
`dynamic_batch` a target's dim 0 becomes 0 (Reshape: copy the input's) or 1 (Expand:
broadcast) on values that carry the batch (lowering/batch.py decides which).

Symbolic shapes (`dynamic_shapes=`): a size the graph computes (`aten.sym_size.int`, then
Python arithmetic on it) is a 0-d int64 ONNX value read off the input's Shape at run time,
and targets are built from the node's own arguments (`Builder.sizes`), never from the
metadata, whose symbolic sizes would otherwise be fixed at their compile-time values.
"""
from __future__ import annotations

import operator

import torch

from .builder import (Builder, dtype_of, is_static, norm_dim, onnx_dtype, out_meta, rank_of,
                      shape_of)
from .registry import Refuse, converter

aten = torch.ops.aten
INT64_MAX = 2**63 - 1


def _shape_target(b: Builder, node, fill: int) -> list[int]:
    shape = list(out_meta(node).shape)
    if b.batch.get(node) and shape:
        shape[0] = fill
    return shape


@converter(aten.view.default, aten._unsafe_view.default, aten.reshape.default,
           aten.flatten.using_ints, aten.unflatten.int)
def reshape(b: Builder, node):
    """view(Tensor(a) self, SymInt[] size) -> Tensor(a)   (target from the node's metadata)

    A batch dim becomes -1 (the other dims are static); a real 0 in the target needs
    allowzero=1 (ONNX reads 0 as 'copy the input's dim' otherwise). A symbolic output shape
    takes view/reshape's own size argument (sizes computed in the graph)."""
    if not is_static(node):
        if node.target in (aten.flatten.using_ints, aten.unflatten.int):
            return Refuse("flatten/unflatten with a symbolic shape")
        if any(v == 0 for v in node.args[1] if isinstance(v, int)):
            return Refuse("a symbolic reshape to an empty shape")
        return b.op("Reshape", [b.tensor(node.args[0]), b.sizes(list(node.args[1]))])
    target = _shape_target(b, node, -1)
    if 0 in target and -1 in target:
        return Refuse("dynamic batch through a reshape to an empty shape")
    return b.op("Reshape", [b.tensor(node.args[0]), b.ints(target)],
                allowzero=1 if 0 in target else None)


@converter(aten.permute.default)
def permute(b: Builder, node):
    """permute(Tensor(a) self, int[] dims) -> Tensor(a)"""
    r = rank_of(node.args[0])
    if r < 2:
        return b.op("Identity", [b.tensor(node.args[0])])
    return b.op("Transpose", [b.tensor(node.args[0])], perm=[norm_dim(d, r) for d in node.args[1]])


@converter(aten.transpose.int, aten.t.default)
def transpose(b: Builder, node):
    """transpose.int(Tensor(a) self, int dim0, int dim1) -> Tensor(a);  t(Tensor(a) self) -> Tensor(a)"""
    r = rank_of(node.args[0])
    perm = list(range(r))
    if r < 2:
        return b.op("Identity", [b.tensor(node.args[0])])
    d0, d1 = (node.args[1], node.args[2]) if node.target == aten.transpose.int else (0, 1)
    d0, d1 = norm_dim(d0, r), norm_dim(d1, r)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return b.op("Transpose", [b.tensor(node.args[0])], perm=perm)


@converter(aten.expand.default)
def expand(b: Builder, node):
    """expand(Tensor(a) self, SymInt[] size, *, bool implicit=False) -> Tensor(a)

    Symbolic: the size argument, its -1s as 1 (ONNX Expand broadcasts a 1 to the input's)."""
    if not is_static(node):
        sizes = [1 if isinstance(v, int) and v == -1 else v for v in node.args[1]]
        return b.op("Expand", [b.tensor(node.args[0]), b.sizes(sizes)])
    return b.op("Expand", [b.tensor(node.args[0]), b.ints(_shape_target(b, node, 1))])


@converter(aten.repeat.default)
def repeat(b: Builder, node):
    """repeat(Tensor self, SymInt[] repeats) -> Tensor"""
    x, reps = node.args[0], list(node.args[1])
    v = b.tensor(x)
    extra = len(reps) - rank_of(x)
    if extra > 0:
        v = b.op("Reshape", [v, b.ints([1] * extra + list(shape_of(x)))])
    return b.op("Tile", [v, b.ints(reps)])


@converter(aten.slice.Tensor)
def slice_(b: Builder, node):
    """slice.Tensor(Tensor(a) self, int dim=0, SymInt? start=None, SymInt? end=None, SymInt step=1) -> Tensor(a)"""
    x = node.args[0]
    dim, start, end, step = (list(node.args[1:]) + [0, None, None, 1][len(node.args) - 1:])[:4]
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end if isinstance(end, torch.fx.Node) else min(end, INT64_MAX)
    return b.op("Slice", [b.tensor(x), b.sizes([start]), b.sizes([end]),
                          b.ints([norm_dim(dim, rank_of(x))]), b.ints([step])])


@converter(aten.select.int)
def select(b: Builder, node):
    """select.int(Tensor(a) self, int dim, SymInt index) -> Tensor(a)"""
    x, dim, index = node.args
    return b.op("Gather", [b.tensor(x), b.const(torch.tensor(index, dtype=torch.int64))],
                axis=norm_dim(dim, rank_of(x)))


@converter(aten.narrow.default)
def narrow(b: Builder, node):
    """narrow(Tensor(a) self, int dim, SymInt start, SymInt length) -> Tensor(a)"""
    x, dim, start, length = node.args
    start = start % shape_of(x)[norm_dim(dim, rank_of(x))] if start < 0 else start
    return b.op("Slice", [b.tensor(x), b.ints([start]), b.ints([start + length]),
                          b.ints([norm_dim(dim, rank_of(x))])])


@converter(aten.cat.default)
def cat(b: Builder, node):
    """cat(Tensor[] tensors, int dim=0) -> Tensor   (legacy empty 1-D inputs are skipped, as torch does)"""
    out = out_meta(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    parts = [t for t in node.args[0]
             if not (rank_of(t) == 1 and is_static(t) and shape_of(t) == (0,) and out.dim() != 1)]
    if not parts:
        return b.op("Identity", [b.const(torch.zeros(out.shape, dtype=out.dtype))])
    vals = [b.tensor(t, out.dtype) for t in parts]
    if len(vals) == 1:
        return b.op("Identity", vals)
    return b.op("Concat", vals, axis=norm_dim(dim, out.dim()))


@converter(aten.stack.default)
def stack(b: Builder, node):
    """stack(Tensor[] tensors, int dim=0) -> Tensor"""
    out = out_meta(node)
    dim = norm_dim(node.args[1] if len(node.args) > 1 else 0, out.dim())
    vals = [b.op("Unsqueeze", [b.tensor(t, out.dtype), b.ints([dim])]) for t in node.args[0]]
    return vals[0] if len(vals) == 1 else b.op("Concat", vals, axis=dim)


@converter(aten.split_with_sizes.default, aten.split.Tensor)
def split(b: Builder, node):
    """split_with_sizes(Tensor(a -> *) self, SymInt[] split_sizes, int dim=0) -> Tensor(a)[];
    split.Tensor(Tensor(a -> *) self, SymInt split_size, int dim=0) -> Tensor(a)[]"""
    x = node.args[0]
    dim = norm_dim(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), rank_of(x))
    sizes = [int(t.shape[dim]) for t in out_meta(node)]
    if len(sizes) == 1:
        return [b.op("Identity", [b.tensor(x)])]
    return b.op("Split", [b.tensor(x), b.ints(sizes)], n_out=len(sizes), axis=dim)


@converter(aten.unbind.int)
def unbind(b: Builder, node):
    """unbind.int(Tensor(a -> *) self, int dim=0) -> Tensor(a)[]"""
    x = node.args[0]
    dim = norm_dim(node.args[1] if len(node.args) > 1 else 0, rank_of(x))
    n = shape_of(x)[dim]
    parts = b.op("Split", [b.tensor(x), b.ints([1] * n)], n_out=n, axis=dim) if n > 1 \
        else [b.tensor(x)]
    return [b.op("Squeeze", [p, b.ints([dim])]) for p in parts]


@converter(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims)
def squeeze(b: Builder, node):
    """squeeze.dims(Tensor(a) self, int[] dim) -> Tensor(a)   (dims of size != 1 stay, as in torch)"""
    x = node.args[0]
    shape, r = shape_of(x), rank_of(x)
    if node.target == aten.squeeze.default:
        dims = range(r)
    elif node.target == aten.squeeze.dim:
        dims = [node.args[1]]
    else:
        dims = node.args[1]
    axes = sorted({norm_dim(d, r) for d in dims if r and shape[norm_dim(d, r)] == 1})
    if not axes:
        return b.op("Identity", [b.tensor(x)])
    return b.op("Squeeze", [b.tensor(x), b.ints(axes)])


@converter(aten.unsqueeze.default)
def unsqueeze(b: Builder, node):
    """unsqueeze(Tensor(a) self, int dim) -> Tensor(a)"""
    x = node.args[0]
    return b.op("Unsqueeze", [b.tensor(x), b.ints([norm_dim(node.args[1], rank_of(x) + 1)])])


@converter(aten.flip.default)
def flip(b: Builder, node):
    """flip(Tensor self, int[] dims) -> Tensor"""
    x = node.args[0]
    axes = [norm_dim(d, rank_of(x)) for d in node.args[1]]
    if not axes:
        return b.op("Identity", [b.tensor(x)])
    n = len(axes)
    return b.op("Slice", [b.tensor(x), b.ints([-1] * n), b.ints([-INT64_MAX - 1] * n),
                          b.ints(axes), b.ints([-1] * n)])


@converter(aten.roll.default)
def roll(b: Builder, node):
    """roll(Tensor self, SymInt[1] shifts, int[1] dims=[]) -> Tensor"""
    x, shifts = node.args[0], list(node.args[1])
    dims = list(node.args[2]) if len(node.args) > 2 else []
    v = b.tensor(x)
    if not dims:  # roll the flattened tensor, then restore the shape
        flat = b.op("Reshape", [v, b.ints([-1])])
        rolled = _roll1(b, flat, shifts[0], 0, max(1, out_meta(node).numel()))
        return b.op("Reshape", [rolled, b.ints(shape_of(x))])
    for s, d in zip(shifts, dims):
        d = norm_dim(d, rank_of(x))
        v = _roll1(b, v, s, d, shape_of(x)[d])
    return v


def _roll1(b, v, shift, axis, n):
    s = shift % n if n else 0
    if s == 0:
        return b.op("Identity", [v])
    tail = b.op("Slice", [v, b.ints([n - s]), b.ints([n]), b.ints([axis])])
    head = b.op("Slice", [v, b.ints([0]), b.ints([n - s]), b.ints([axis])])
    return b.op("Concat", [tail, head], axis=axis)


@converter(aten.tril.default, aten.triu.default)
def trilu(b: Builder, node):
    """tril(Tensor self, int diagonal=0) -> Tensor;  triu(Tensor self, int diagonal=0) -> Tensor"""
    k = node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0)
    return b.op("Trilu", [b.tensor(node.args[0]), b.const(torch.tensor(k, dtype=torch.int64))],
                upper=int(node.target == aten.triu.default))


# -- padding ----------------------------------------------------------------------------------

def _onnx_pads(torch_pad, rank) -> list[int]:
    """torch pads name the last dim first, (before, after) pairs; ONNX all begins, all ends."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(torch_pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = torch_pad[2 * i], torch_pad[2 * i + 1]
    return begins + ends


@converter(aten.constant_pad_nd.default)
def constant_pad(b: Builder, node):
    """constant_pad_nd(Tensor self, SymInt[] pad, Scalar value=0) -> Tensor"""
    x, pad = node.args[:2]
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
    dt = out_meta(node).dtype
    return b.op("Pad", [b.tensor(x), b.ints(_onnx_pads(pad, rank_of(x))), b.scalar(value, dt)],
                mode="constant")


@converter(aten.reflection_pad1d.default, aten.reflection_pad2d.default,
           aten.reflection_pad3d.default, aten.replication_pad1d.default,
           aten.replication_pad2d.default, aten.replication_pad3d.default)
def mode_pad(b: Builder, node):
    """reflection_pad2d(Tensor self, SymInt[4] padding) -> Tensor;  replication_pad2d(...) -> Tensor"""
    x, pad = node.args[:2]
    if any(p < 0 for p in pad):
        return Refuse("negative reflection/replication padding")
    mode = "reflect" if "reflection" in node.target._opname else "edge"
    return b.op("Pad", [b.tensor(x), b.ints(_onnx_pads(pad, rank_of(x)))], mode=mode)


# -- indexing ---------------------------------------------------------------------------------

@converter(aten.index_select.default)
def index_select(b: Builder, node):
    """index_select(Tensor self, int dim, Tensor index) -> Tensor"""
    x, dim, idx = node.args
    iv = b.tensor(idx, torch.int64)
    if rank_of(idx) == 0:  # a 0-d index keeps the dim (size 1), unlike Gather
        iv = b.op("Reshape", [iv, b.ints([1])])
    return b.op("Gather", [b.tensor(x), iv], axis=norm_dim(dim, rank_of(x)))


@converter(aten.gather.default)
def gather(b: Builder, node):
    """gather(Tensor self, int dim, Tensor index, *, bool sparse_grad=False) -> Tensor"""
    x, dim, idx = node.args[:3]
    return b.op("GatherElements", [b.tensor(x), b.tensor(idx, torch.int64)],
                axis=norm_dim(dim, rank_of(x)))


@converter(aten.index.Tensor)
def index(b: Builder, node):
    """index.Tensor(Tensor self, Tensor?[] indices) -> Tensor

    One index tensor: Gather on its dim. Several: broadcast, stack and GatherND, with the
    indexed dims moved to the front and the result dims placed as torch places them."""
    x, indices = node.args
    pos = [i for i, t in enumerate(indices) if t is not None]
    if any(dtype_of(indices[i]) in (torch.bool, torch.uint8) for i in pos):
        return Refuse("boolean mask indexing (data-dependent shape)")
    if len(pos) == 1:
        return b.op("Gather", [b.tensor(x), b.tensor(indices[pos[0]], torch.int64)], axis=pos[0])
    r, m = rank_of(x), len(pos)
    nb = max(rank_of(indices[i]) for i in pos)  # rank of the broadcast index shape
    target = _broadcast_shape(b, [indices[i] for i in pos])
    cols = [b.op("Unsqueeze", [b.op("Expand", [b.tensor(indices[i], torch.int64), target]),
                               b.ints([-1])]) for i in pos]
    stacked = b.op("Concat", cols, axis=-1)
    adjacent = pos == list(range(pos[0], pos[0] + m))
    xv = b.tensor(x)
    if pos != list(range(m)):
        rest = [d for d in range(r) if d not in pos]
        xv = b.op("Transpose", [xv], perm=pos + rest)
    y = b.op("GatherND", [xv, stacked])
    if adjacent and pos[0] > 0:  # torch keeps the result dims where the indexed dims were
        p0 = pos[0]
        total = nb + r - m
        perm = list(range(nb, nb + p0)) + list(range(nb)) + list(range(nb + p0, total))
        y = b.op("Transpose", [y], perm=perm)
    return y


def _broadcast_shape(b: Builder, tensors) -> str:
    """The broadcast shape of `tensors` as a 1-D int64: a constant when static, else read at
    run time off their sum with zeros (ONNX Add broadcasts as torch does)."""
    if all(is_static(t) for t in tensors):
        return b.ints(torch.broadcast_shapes(*[shape_of(t) for t in tensors]))
    zero = b.scalar(0, torch.int64)
    total = None
    for t in tensors:
        z = b.op("Mul", [b.tensor(t, torch.int64), zero])
        total = z if total is None else b.op("Add", [total, z])
    return b.op("Shape", [total])


@converter(aten.as_strided.default)
def as_strided(b: Builder, node):
    """as_strided(Tensor(a) self, SymInt[] size, SymInt[] stride, SymInt? storage_offset=None) -> Tensor(a)

    On a contiguous input: a Gather of the flat input at the precomputed element offsets."""
    x, size, stride = node.args[:3]
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset")
    if not (is_static(node) and is_static(x)):
        return Refuse("as_strided with a symbolic shape (its offsets are precomputed)")
    xm = x.meta["val"]
    if not xm.is_contiguous() or xm.storage_offset() != 0:
        return Refuse("as_strided over a non-contiguous input")
    flat_index = torch.arange(max(xm.numel(), 1)).as_strided(size, stride, offset or 0)
    flat = b.op("Reshape", [b.tensor(x), b.ints([-1])])
    return b.op("Gather", [flat, b.const(flat_index.contiguous())], axis=0)


@converter(aten.copy.default)
def copy(b: Builder, node):
    """copy(Tensor self, Tensor src, bool non_blocking=False) -> Tensor   (src, broadcast and cast to self)"""
    out = out_meta(node)
    src = b.tensor(node.args[1], out.dtype)
    return b.op("Expand", [src, b.ints(out.shape)])


# -- constants from factory ops -----------------------------------------------------------------

FACTORIES = (
    aten.full.default, aten.zeros.default, aten.ones.default, aten.empty.memory_format,
    aten.arange.default, aten.arange.start, aten.arange.start_step, aten.scalar_tensor.default,
    aten.eye.default, aten.linspace.default, aten.full_like.default, aten.zeros_like.default,
    aten.ones_like.default, aten.empty_like.default, aten.new_zeros.default,
    aten.new_ones.default, aten.new_full.default, aten.new_empty.default, aten.fill.Scalar,
    aten.empty_strided.default,
)
_UNINITIALIZED = {aten.empty.memory_format, aten.empty_like.default, aten.new_empty.default,
                  aten.empty_strided.default}


_SIZED = {aten.full.default, aten.zeros.default, aten.ones.default, aten.new_zeros.default,
          aten.new_ones.default, aten.new_full.default}


_LIKE = {aten.full_like.default: None, aten.zeros_like.default: 0, aten.ones_like.default: 1,
         aten.empty_like.default: 0}


def _symbolic_factory(b: Builder, node):
    """A factory of a symbolic shape, computed at run time: arange as Range, full/zeros/ones
    (and new_*) as their fill value expanded to the sizes; any other is refused."""
    out = out_meta(node)
    t = node.target
    if t in (aten.arange.default, aten.arange.start, aten.arange.start_step):
        args = list(node.args) if t != aten.arange.default else [0, node.args[0]]
        start, end, step = (args + [1])[:3]
        vals = [b.op("Cast", [b.value(a)], to=onnx_dtype(out.dtype)) if isinstance(a, torch.fx.Node)
                else b.scalar(a, out.dtype) for a in (start, end, step)]
        return b.op("Range", vals)
    if t in _LIKE:  # the fill value over the input's run-time shape
        fill = node.args[1] if t == aten.full_like.default else _LIKE[t]
        if isinstance(fill, torch.fx.Node):
            return Refuse("a fill value computed in the graph")
        return b.op("Expand", [b.scalar(fill, out.dtype), b.op("Shape", [b.tensor(node.args[0])])])
    if t in _SIZED:
        sizes = node.args[1] if t.__name__.startswith("new_") else node.args[0]
        fill = {aten.zeros.default: 0, aten.ones.default: 1, aten.new_zeros.default: 0,
                aten.new_ones.default: 1}.get(t, node.args[-1] if t != aten.new_full.default
                                              else node.args[2])
        if isinstance(fill, torch.fx.Node):
            return Refuse("a fill value computed in the graph")
        return b.op("Expand", [b.scalar(fill, out.dtype), b.sizes(list(sizes))])
    return Refuse(f"{t} with a symbolic shape")


def sym_size(b: Builder, node):
    """sym_size.int(Tensor self, int dim) -> SymInt   (a 0-d int64, read at run time)"""
    x, dim = node.args
    shape = b.op("Shape", [b.tensor(x)])
    return b.op("Gather", [shape, b.const(torch.tensor(norm_dim(dim, rank_of(x))))], axis=0)


_SIZE_MATH = {operator.add: "Add", operator.sub: "Sub", operator.mul: "Mul",
              operator.floordiv: "Div", operator.mod: "Mod"}  # sizes: non-negative ints


def size_math(b: Builder, node):
    """SymInt arithmetic (s0 * 2, s1 + s2, ...): int64 ONNX ops on 0-d values. Sizes are
    non-negative, so ONNX's truncating Div and Mod agree with Python's // and %."""
    if not all(isinstance(a, (int, torch.fx.Node)) and not isinstance(a, bool) for a in node.args):
        return Refuse("arithmetic on non-integer values")
    vals = [b.value(a) if isinstance(a, torch.fx.Node) else b.scalar(a, torch.int64)
            for a in node.args]
    return b.op(_SIZE_MATH[node.target], vals)


@converter(*FACTORIES)
def factory(b: Builder, node):
    """full(SymInt[] size, Scalar fill_value, *, ScalarType? dtype=None, ...) -> Tensor, and the
    other factories: their values depend on shapes and arguments only, so they become
    initializers (computed here on CPU; `empty` reads as zeros)."""
    if not is_static(node):
        return _symbolic_factory(b, node)
    out = out_meta(node)
    if node.target in _UNINITIALIZED:
        value = torch.zeros(out.shape, dtype=out.dtype)
    else:
        def real(a):
            if isinstance(a, torch.fx.Node):
                m = a.meta["val"]
                return torch.zeros(m.shape, dtype=m.dtype)
            return a
        args = [real(a) for a in node.args]
        kwargs = {k: v for k, v in node.kwargs.items() if k not in ("device", "pin_memory")}
        value = node.target(*args, **kwargs, device="cpu") if "device" in str(node.target._schema) \
            else node.target(*args, **kwargs)
    return b.op("Identity", [b.const(value.to(out.dtype))])


# Sizes the graph computes are not ATen ops with a coverage row: onnx_export dispatches them
# here before the converter registry (as it does getitem).
SIZE_OPS = {aten.sym_size.int: sym_size, **{op: size_math for op in _SIZE_MATH}}
