"""Dynamic batch: which values carry the batch on dim 0, and where that cannot hold.

Capture is static, so `dynamic_batch` relaxes dim 0 of the inputs after the fact. That is
sound only where every op treats dim 0 as an independent batch: elementwise ops whose other
operands broadcast over it, ops that act on the trailing dims (conv, linear, norms, softmax
over dim >= 1, reshapes that keep dim 0), and nothing that reduces, indexes, slices, permutes
or reshapes across it. `analyze` marks each node (True: its dim 0 is the batch) and returns
every node where the rules cannot show it, with the reason; lowering refuses those.
"""
from __future__ import annotations

import math
import operator
from typing import Callable

import torch
import torch.fx as fx

from .builder import norm_dim, rank_of, shape_of
from .ops_elementwise import BINARY, COMPARE, LOGICAL, UNARY

aten = torch.ops.aten
Rule = Callable[[fx.Node, dict], "str | None"]  # None: output carries the batch; str: why not


def analyze(gm: fx.GraphModule) -> tuple[dict[fx.Node, bool], list[tuple[fx.Node, str]]]:
    batch: dict[fx.Node, bool] = {}
    refusals: list[tuple[fx.Node, str]] = []
    sizes = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if rank_of(n) == 0:
                refusals.append((n, "a 0-d input has no batch dim"))
            else:
                sizes.add(shape_of(n)[0])
            batch[n] = True
        elif n.op == "call_function":
            carried = [a for a in n.all_input_nodes if batch.get(a)]
            if not carried:
                batch[n] = False
                continue
            if n.target is operator.getitem:
                batch[n] = True
                continue
            rule = RULES.get(n.target, _unknown)
            why = rule(n, batch)
            batch[n] = True
            if why:
                refusals.append((n, why))
        else:
            batch[n] = False
    if len(sizes) > 1:
        first = next(n for n in gm.graph.nodes if n.op == "placeholder")
        refusals.append((first, f"inputs disagree on dim 0 ({sorted(sizes)}): no one batch dim"))
    return batch, refusals


# -- rules ------------------------------------------------------------------------------------

def _unknown(n, batch):
    return "not known to keep dim 0 as an independent batch"


def _elementwise(n, batch):
    r = rank_of(n) if not isinstance(n.meta.get("val"), (tuple, list)) else None
    for a in _tensor_args(n):
        if batch.get(a) and rank_of(a) != r:
            return f"broadcasting moves the batch dim of %{a.name} off dim 0"
        if not batch.get(a) and rank_of(a) == r and shape_of(a)[0] != 1:
            return f"%{a.name} has a fixed size {shape_of(a)[0]} on dim 0 next to the batch"
    return None


def _first(n, batch):
    """The batch rides on the first argument; the others (weights) must not carry it."""
    if not batch.get(n.args[0]):
        return "the batch enters through an argument other than the input"
    if rank_of(n.args[0]) < 2:
        return "a rank-1 input's only dim is the batch"
    others = [a for a in _tensor_args(n)[1:] if batch.get(a)]
    return f"%{others[0].name} also carries the batch" if others else None


def _axes_rule(get_dims) -> Rule:
    def rule(n, batch):
        if not batch.get(n.args[0]):
            return "the batch enters through an index or another argument"
        dims = get_dims(n)
        if dims is None or 0 in dims:
            return "the op works across dim 0 (the batch)"
        return _first_others(n, batch)
    return rule


def _first_others(n, batch):
    others = [a for a in _tensor_args(n)[1:] if batch.get(a)]
    return f"%{others[0].name} also carries the batch" if others else None


def _tensor_args(n) -> list[fx.Node]:
    out = []
    for a in n.args:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, fx.Node))
    out.extend(v for v in n.kwargs.values() if isinstance(v, fx.Node))
    return out


def _dim(i, default=None):
    def get(n):
        d = n.args[i] if len(n.args) > i else n.kwargs.get("dim", default)
        if d is None or (isinstance(d, (list, tuple)) and not d):
            return None
        ds = d if isinstance(d, (list, tuple)) else [d]
        return {norm_dim(x, rank_of(n.args[0])) for x in ds}
    return get


def _reshape(n, batch):
    src, dst = shape_of(n.args[0]), tuple(n.meta["val"].shape)
    if not dst or dst[0] != src[0] or math.prod(src[1:]) != math.prod(dst[1:]):
        return f"the reshape {src} -> {dst} merges or splits dim 0 (the batch)"
    return None


def _permute(n, batch):
    return None if norm_dim(n.args[1][0], rank_of(n.args[0])) == 0 else "the permute moves dim 0"


def _transpose(n, batch):
    r = rank_of(n.args[0])
    if n.target == aten.t.default:
        return "t() swaps dim 0" if r == 2 else "t() of a rank-1 batch"
    dims = {norm_dim(n.args[1], r), norm_dim(n.args[2], r)}
    return "the transpose moves dim 0" if 0 in dims and len(dims) == 2 else None


def _unsqueeze(n, batch):
    return "unsqueeze at dim 0 moves the batch" if norm_dim(n.args[1], rank_of(n)) == 0 else None


def _expand(n, batch):
    return None if rank_of(n.args[0]) == rank_of(n) else "expand adds dims in front of the batch"


def _slice(n, batch):
    dim = norm_dim(n.args[1] if len(n.args) > 1 else 0, rank_of(n.args[0]))
    if dim == 0 and shape_of(n) != shape_of(n.args[0]):
        return "slicing along dim 0 (the batch)"
    return None


def _cat(n, batch):
    dim = norm_dim(n.args[1] if len(n.args) > 1 else 0, rank_of(n))
    if dim == 0:
        return "concatenation along dim 0 (the batch)"
    if not all(batch.get(a) for a in n.args[0]):
        return "concatenating batch and fixed-size tensors"
    return None


def _stack(n, batch):
    dim = norm_dim(n.args[1] if len(n.args) > 1 else 0, rank_of(n))
    if dim == 0 or not all(batch.get(a) for a in n.args[0]):
        return "stacking at dim 0, or batch with fixed-size tensors"
    return None


def _matmul(n, batch):
    a, b = n.args[:2]
    ra, rb = rank_of(a), rank_of(b)
    if batch.get(a) and not batch.get(b):
        return None if ra >= 2 and rb <= 2 else "matmul broadcasts a fixed tensor over the batch"
    if batch.get(a) and batch.get(b):
        return None if ra == rb and ra >= 3 else "matmul of batch tensors of unequal rank"
    return "the batch enters through the right-hand matrix"


def _sdpa(n, batch):
    q = n.args[0]
    if not batch.get(q):
        return "the batch enters through key/value only"
    for a in _tensor_args(n)[1:]:
        if batch.get(a) and rank_of(a) != rank_of(q):
            return f"%{a.name} carries the batch at another rank than the query"
        if not batch.get(a) and rank_of(a) == rank_of(q) and shape_of(a)[0] != 1:
            return f"%{a.name} has a fixed size {shape_of(a)[0]} on dim 0 next to the batch"
    return None


def _squeeze_all(n, batch):
    if shape_of(n.args[0])[0] == 1:
        return "squeeze() drops dim 0 (the batch was 1 at capture)"
    return None


def _pad(n, batch):
    pad = n.args[1]
    r = rank_of(n.args[0])
    if len(pad) >= 2 * r and (pad[2 * r - 2] or pad[2 * r - 1]):
        return "padding dim 0 (the batch)"
    return None


def _index(n, batch):
    x, idx = n.args
    if not batch.get(x) or any(batch.get(i) for i in idx if i is not None):
        return "the batch enters through an index tensor"
    pos = [i for i, t in enumerate(idx) if t is not None]
    return None if len(pos) == 1 and pos[0] > 0 else "advanced indexing moves dim 0"


def _repeat(n, batch):
    reps = list(n.args[1])
    return None if len(reps) == rank_of(n.args[0]) and reps[0] == 1 else "repeat along dim 0"


def _embedding(n, batch):
    w, idx = n.args[:2]
    return None if batch.get(idx) and not batch.get(w) else "the batch enters through the table"


def _flatten(n, batch):
    return "flatten from dim 0 merges the batch" if norm_dim(n.args[1], rank_of(n.args[0])) == 0 \
        else _reshape(n, batch)


def _layer_norm(n, batch):
    if len(n.args[1]) >= rank_of(n.args[0]):
        return "layer norm over every dim, the batch included"
    return _first(n, batch)


RULES: dict = {}
for _op in list(UNARY) + list(BINARY) + list(COMPARE) + list(LOGICAL) + [
        aten.where.self, aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.clamp.default,
        aten.clamp.Tensor, aten.clamp_min.default, aten.clamp_max.default, aten.hardtanh.default,
        aten.leaky_relu.default, aten.elu.default, aten.gelu.default, aten.silu.default,
        aten.hardsigmoid.default, aten.softplus.default, aten.mish.default, aten.rsqrt.default,
        aten.trunc.default, aten.log2.default, aten.log10.default, aten.log1p.default,
        aten.expm1.default, aten.pow.Tensor_Scalar, aten.fmod.Tensor, aten.fmod.Scalar,
        aten.remainder.Tensor, aten.remainder.Scalar, aten.div.Tensor_mode,
        aten.div.Scalar_mode, aten.floor_divide.default, aten._to_copy.default,
        aten.logical_not.default, aten.bitwise_not.default, aten.isnan.default,
        aten.isinf.default, aten.where.ScalarSelf, aten.where.ScalarOther, aten.to.dtype,
        aten.to.dtype_layout, aten.to.device]:
    RULES[_op] = _elementwise
for _op in (aten.convolution.default, aten._native_batch_norm_legit_no_training.default,
            aten.native_batch_norm.default, aten._native_batch_norm_legit.default,
            aten.layer_norm.default, aten.native_layer_norm.default, aten.linear.default,
            aten.max_pool2d_with_indices.default, aten.max_pool1d_with_indices.default,
            aten.max_pool3d_with_indices.default, aten.max_pool2d.default,
            aten.avg_pool2d.default, aten.avg_pool1d.default, aten.avg_pool3d.default,
            aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default,
            aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec,
            aten.upsample_nearest2d.default, aten.upsample_bilinear2d.default):
    RULES[_op] = _first
for _op, _get in {
        aten.softmax.int: _dim(1), aten._softmax.default: _dim(1),
        aten.log_softmax.int: _dim(1), aten._log_softmax.default: _dim(1),
        aten.cumsum.default: _dim(1), aten.select.int: _dim(1), aten.narrow.default: _dim(1),
        aten.index_select.default: _dim(1), aten.gather.default: _dim(1),
        aten.unbind.int: _dim(1, 0), aten.split.Tensor: _dim(2, 0),
        aten.split_with_sizes.default: _dim(2, 0), aten.squeeze.dim: _dim(1),
        aten.squeeze.dims: _dim(1), aten.flip.default: _dim(1),
        aten.sum.dim_IntList: _dim(1), aten.mean.dim: _dim(1), aten.amax.default: _dim(1),
        aten.amin.default: _dim(1), aten.prod.dim_int: _dim(1), aten.logsumexp.default: _dim(1),
        aten.argmax.default: _dim(1), aten.argmin.default: _dim(1), aten.max.dim: _dim(1),
        aten.min.dim: _dim(1), aten.var.correction: _dim(1), aten.std.correction: _dim(1),
        aten.any.dim: _dim(1), aten.any.dims: _dim(1), aten.all.dim: _dim(1),
        aten.all.dims: _dim(1), aten.linalg_vector_norm.default: _dim(2),
        aten.var_mean.correction: _dim(1),
        aten.roll.default: _dim(2), aten.tril.default: lambda n: {rank_of(n) - 2, rank_of(n) - 1},
        aten.triu.default: lambda n: {rank_of(n) - 2, rank_of(n) - 1},
}.items():
    RULES[_op] = _axes_rule(_get)
RULES.update({
    aten.layer_norm.default: _layer_norm, aten.native_layer_norm.default: _layer_norm,
    aten.rms_norm.default: _layer_norm,
    aten.view.default: _reshape, aten._unsafe_view.default: _reshape,
    aten.reshape.default: _reshape, aten.unflatten.int: _reshape, aten.flatten.using_ints: _flatten,
    aten.permute.default: _permute, aten.transpose.int: _transpose, aten.t.default: _transpose,
    aten.unsqueeze.default: _unsqueeze, aten.expand.default: _expand, aten.slice.Tensor: _slice,
    aten.cat.default: _cat, aten.stack.default: _stack, aten.matmul.default: _matmul,
    aten.bmm.default: _matmul, aten.mm.default: _matmul,
    aten.scaled_dot_product_attention.default: _sdpa, aten.constant_pad_nd.default: _pad,
    aten.index.Tensor: _index, aten.repeat.default: _repeat, aten.embedding.default: _embedding,
    aten.squeeze.default: _squeeze_all,
})


def register(target, rule: Rule) -> None:
    """Converters outside this file (fxc's fused ops) declare how they treat dim 0."""
    RULES[target] = rule


first_arg = _first
elementwise = _elementwise
