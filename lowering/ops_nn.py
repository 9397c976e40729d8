"""Neural-network ops: convolution, normalization, softmax, attention, linear algebra,
embedding, pooling, resizing."""
from __future__ import annotations

import math

import torch

from .builder import Builder, dtype_of, norm_dim, out_meta, rank_of, shape_of
from .ops_reduce import nan_gated
from .registry import Refuse, converter

aten = torch.ops.aten


def _arg(node, i, name, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


# -- convolution ----------------------------------------------------------------------------

@converter(aten.convolution.default)
def convolution(b: Builder, node):
    """convolution(Tensor input, Tensor weight, Tensor? bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, bool transposed, SymInt[] output_padding, SymInt groups) -> Tensor"""
    x, w, bias, stride, padding, dilation, transposed, out_pad, groups = node.args[:9]
    spatial = rank_of(x) - 2
    if spatial < 1:
        return Refuse("convolution needs a batched input (N, C, ...)")
    if isinstance(padding, str):
        return Refuse(f"string padding {padding!r}")
    pads = _spatial(padding, spatial)
    attrs = dict(strides=_spatial(stride, spatial), dilations=_spatial(dilation, spatial),
                 pads=pads + pads, group=int(groups),
                 kernel_shape=list(shape_of(w)[2:]))
    dt = out_meta(node).dtype
    inputs = [b.tensor(x, dt), b.tensor(w, dt)] + ([b.tensor(bias, dt)] if bias is not None else [])
    if transposed:
        return b.op("ConvTranspose", inputs, output_padding=_spatial(out_pad, spatial), **attrs)
    return b.op("Conv", inputs, **attrs)


def _spatial(v, n):
    v = list(v)
    return v * n if len(v) == 1 else v


# -- normalization ---------------------------------------------------------------------------

@converter(aten._native_batch_norm_legit_no_training.default)
def batch_norm(b: Builder, node):
    """_native_batch_norm_legit_no_training(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, Tensor running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor)

    Output 0 only (eval mode); the saved statistics are empty tensors nobody reads."""
    x, w, bias, mean, var, _momentum, eps = node.args[:7]
    if rank_of(x) < 2:
        return Refuse("batch norm of a rank < 2 input")
    c = shape_of(x)[1]
    dt = out_meta(node)[0].dtype
    pdt = dtype_of(mean)
    scale = b.tensor(w, pdt) if w is not None else b.const(torch.ones(c, dtype=pdt))
    shift = b.tensor(bias, pdt) if bias is not None else b.const(torch.zeros(c, dtype=pdt))
    y = b.op("BatchNormalization", [b.tensor(x, dt), scale, shift, b.tensor(mean), b.tensor(var)],
             epsilon=float(eps))
    return [y, None, None]


@converter(aten.native_batch_norm.default, aten._native_batch_norm_legit.default)
def batch_norm_maybe_training(b: Builder, node):
    """native_batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor)

    Eval mode only (training=False): the running statistics normalize."""
    x, w, bias, mean, var, training, _momentum, eps = node.args[:8]
    if training or mean is None or var is None:
        return Refuse("batch norm in training mode (batch statistics)")
    c = shape_of(x)[1]
    dt, pdt = out_meta(node)[0].dtype, dtype_of(mean)
    scale = b.tensor(w, pdt) if w is not None else b.const(torch.ones(c, dtype=pdt))
    shift = b.tensor(bias, pdt) if bias is not None else b.const(torch.zeros(c, dtype=pdt))
    y = b.op("BatchNormalization", [b.tensor(x, dt), scale, shift, b.tensor(mean), b.tensor(var)],
             epsilon=float(eps))
    return [y, None, None]


@converter(aten.rms_norm.default)
def rms_norm(b: Builder, node):
    """rms_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None, float? eps=None) -> Tensor

    Written out (RMSNormalization is opset 23): x * rsqrt(mean(x^2) + eps) * weight, computed
    in float32 for half inputs as torch does, eps defaulting to the input dtype's epsilon."""
    x, shape = node.args[:2]
    w, eps = _arg(node, 2, "weight"), _arg(node, 3, "eps")
    dt = out_meta(node).dtype
    calc = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt
    eps = torch.finfo(dtype_of(x)).eps if eps is None else eps
    axes = list(range(rank_of(x) - len(shape), rank_of(x)))
    xv = b.tensor(x, calc)
    ms = b.reduce("ReduceMean", b.op("Mul", [xv, xv]), axes, True)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, b.scalar(eps, calc)])])])
    y = b.op("Mul", [xv, inv])
    if calc != dt:
        y = b.cast(y, dt)
    return b.op("Mul", [y, b.tensor(w, dt)]) if w is not None else y


@converter(aten.layer_norm.default)
def layer_norm(b: Builder, node):
    """layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None, Tensor? bias=None, float eps=1e-05, bool cudnn_enable=True) -> Tensor"""
    return _layer_norm(b, node, node.args[0], node.args[1], _arg(node, 2, "weight"),
                       _arg(node, 3, "bias"), _arg(node, 4, "eps", 1e-5), out_meta(node).dtype)


@converter(aten.native_layer_norm.default)
def native_layer_norm(b: Builder, node):
    """native_layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)

    Output 0 only (TensorRT parses LayerNormalization's Y alone)."""
    x, shape, w, bias, eps = node.args[:5]
    y = _layer_norm(b, node, x, shape, w, bias, eps, out_meta(node)[0].dtype)
    return y if isinstance(y, Refuse) else [y, None, None]


def _layer_norm(b, node, x, normalized_shape, w, bias, eps, dt):
    n = len(normalized_shape)
    if n == 0 or n > rank_of(x):
        return Refuse("layer norm over no dims")
    shape = torch.Size(normalized_shape)
    scale = b.tensor(w, dt) if w is not None else b.const(torch.ones(shape, dtype=dt))
    inputs = [b.tensor(x, dt), scale] + ([b.tensor(bias, dt)] if bias is not None else [])
    return b.op("LayerNormalization", inputs, axis=-n, epsilon=float(eps))


# -- softmax ---------------------------------------------------------------------------------

@converter(aten.softmax.int, aten._softmax.default)
def softmax(b: Builder, node):
    """softmax.int(Tensor self, int dim, ScalarType? dtype=None) -> Tensor;
    _softmax(Tensor self, int dim, bool half_to_float) -> Tensor"""
    return _softmax(b, node, "Softmax")


@converter(aten.log_softmax.int, aten._log_softmax.default)
def log_softmax(b: Builder, node):
    """log_softmax.int(Tensor self, int dim, ScalarType? dtype=None) -> Tensor;
    _log_softmax(Tensor self, int dim, bool half_to_float) -> Tensor"""
    return _softmax(b, node, "LogSoftmax")


def _softmax(b, node, op_type):
    x, dim = node.args[0], node.args[1]
    dt = out_meta(node).dtype
    return b.op(op_type, [b.tensor(x, dt)], axis=norm_dim(dim, rank_of(x)) if rank_of(x) else 0)


# -- attention -------------------------------------------------------------------------------

@converter(aten.scaled_dot_product_attention.default)
def sdpa(b: Builder, node):
    """scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, bool is_causal=False, *, float? scale=None, bool enable_gqa=False) -> Tensor

    Written out: softmax(q @ k^T * scale + mask) @ v, the mask added (float) or applied with
    Where (bool, -inf where False); is_causal keeps the lower triangle (top-left aligned)."""
    q, k, v = node.args[:3]
    mask = _arg(node, 3, "attn_mask")
    dropout = _arg(node, 4, "dropout_p", 0.0)
    causal = _arg(node, 5, "is_causal", False)
    scale = node.kwargs.get("scale")
    if dropout:
        return Refuse("dropout_p != 0 (inference graphs only)")
    qs, ks = shape_of(q), shape_of(k)
    if len(qs) < 2 or len(ks) < 2:
        return Refuse("attention needs rank >= 2 query and key")
    if node.kwargs.get("enable_gqa") and len(qs) >= 3 and qs[-3] != ks[-3]:
        return Refuse("grouped-query attention (enable_gqa with fewer key heads)")
    dt = out_meta(node).dtype
    L, S, E = qs[-2], ks[-2], qs[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    perm = list(range(len(ks) - 2)) + [len(ks) - 1, len(ks) - 2]
    kt = b.op("Transpose", [b.tensor(k, dt)], perm=perm)
    scores = b.op("Mul", [b.op("MatMul", [b.tensor(q, dt), kt]), b.scalar(scale, dt)])
    neg_inf = b.scalar(float("-inf"), dt)
    if causal:
        keep = b.const(torch.ones(L, S, dtype=torch.bool).tril())
        scores = b.op("Where", [keep, scores, neg_inf])
    if mask is not None:
        if dtype_of(mask) == torch.bool:
            scores = b.op("Where", [b.tensor(mask), scores, neg_inf])
        else:
            scores = b.op("Add", [scores, b.tensor(mask, dt)])
    probs = b.op("Softmax", [scores], axis=-1)
    return b.op("MatMul", [probs, b.tensor(v, dt)])


# -- linear algebra ---------------------------------------------------------------------------

@converter(aten.linear.default)
def linear(b: Builder, node):
    """linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor

    2-D input: one Gemm (transB); otherwise MatMul with the transposed weight, then Add."""
    x, w = node.args[:2]
    bias = _arg(node, 2, "bias")
    dt = out_meta(node).dtype
    xv, wv = b.tensor(x, dt), b.tensor(w, dt)
    bv = b.tensor(bias, dt) if bias is not None else None
    if rank_of(x) == 2 and rank_of(w) == 2:
        return b.op("Gemm", [xv, wv, bv], transB=1)
    wt = b.op("Transpose", [wv], perm=[1, 0]) if rank_of(w) == 2 else wv
    y = b.op("MatMul", [xv, wt])
    return b.op("Add", [y, bv]) if bv is not None else y


@converter(aten.matmul.default, aten.mm.default, aten.bmm.default)
def matmul(b: Builder, node):
    """matmul(Tensor self, Tensor other) -> Tensor   (numpy semantics, rank-1 included, = ONNX MatMul)"""
    dt = out_meta(node).dtype
    if not out_meta(node).is_floating_point():
        return Refuse("integer matmul (ONNX MatMul is floating point)")
    return b.op("MatMul", [b.tensor(node.args[0], dt), b.tensor(node.args[1], dt)])


@converter(aten.addmm.default)
def addmm(b: Builder, node):
    """addmm(Tensor self, Tensor mat1, Tensor mat2, *, Scalar beta=1, Scalar alpha=1) -> Tensor"""
    dt = out_meta(node).dtype
    c, m1, m2 = node.args[:3]
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    return b.op("Gemm", [b.tensor(m1, dt), b.tensor(m2, dt), b.tensor(c, dt)],
                alpha=float(alpha), beta=float(beta))


@converter(aten.baddbmm.default)
def baddbmm(b: Builder, node):
    """baddbmm(Tensor self, Tensor batch1, Tensor batch2, *, Scalar beta=1, Scalar alpha=1) -> Tensor"""
    dt = out_meta(node).dtype
    c, m1, m2 = node.args[:3]
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    y = b.op("MatMul", [b.tensor(m1, dt), b.tensor(m2, dt)])
    if alpha != 1:
        y = b.op("Mul", [y, b.scalar(alpha, dt)])
    if beta == 0:
        return y
    cv = b.tensor(c, dt) if beta == 1 else b.op("Mul", [b.tensor(c, dt), b.scalar(beta, dt)])
    return b.op("Add", [y, cv])


# -- embedding --------------------------------------------------------------------------------

@converter(aten.embedding.default)
def embedding(b: Builder, node):
    """embedding(Tensor weight, Tensor indices, SymInt padding_idx=-1, bool scale_grad_by_freq=False, bool sparse=False) -> Tensor"""
    w, idx = node.args[:2]
    return b.op("Gather", [b.tensor(w), b.tensor(idx)], axis=0)


# -- pooling ----------------------------------------------------------------------------------

@converter(aten.max_pool2d_with_indices.default, aten.max_pool1d_with_indices.default,
           aten.max_pool3d_with_indices.default)
def max_pool_with_indices(b: Builder, node):
    """max_pool2d_with_indices(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> (Tensor, Tensor)

    Output 0 only: ONNX MaxPool's indices count across N and C, torch's per plane."""
    if any(u.args[1] != 0 for u in node.users if u.target.__name__ == "getitem"):
        return Refuse("the indices output is used (ONNX and torch number them differently)")
    y = _max_pool(b, node)
    return y if isinstance(y, Refuse) else [y, None]


@converter(aten.max_pool2d.default)
def max_pool2d(b: Builder, node):
    """max_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> Tensor"""
    return _max_pool(b, node)


def _pool_attrs(node, n):
    kernel = _spatial(node.args[1], n)
    stride = _arg(node, 2, "stride", []) or kernel
    padding = _spatial(_arg(node, 3, "padding", [0]), n)
    return kernel, _spatial(stride, n), padding


def _max_pool(b, node):
    x = node.args[0]
    n = len(node.args[1]) if len(node.args[1]) > 1 else rank_of(x) - 2
    if rank_of(x) != n + 2:
        return Refuse("unbatched pooling input")
    kernel, stride, padding = _pool_attrs(node, n)
    dilation = _spatial(_arg(node, 4, "dilation", [1]), n)
    ceil = int(bool(_arg(node, 5, "ceil_mode", False)))
    if ceil and _onnx_pool_shape(shape_of(x)[2:], kernel, stride, padding, dilation) != \
            list(_out_shape(node)[2:]):
        return Refuse("ceil_mode with a last window that starts in the padding: torch drops "
                      "it, ONNX MaxPool keeps it")
    attrs = dict(kernel_shape=kernel, strides=stride, pads=padding + padding,
                 dilations=dilation, ceil_mode=ceil)
    xv = b.tensor(x)
    y = b.op("MaxPool", [xv], **attrs)
    if not dtype_of(x).is_floating_point:
        return y
    return _nan_windows(b, xv, y, dtype_of(x), attrs)


def _nan_windows(b: Builder, x: str, y: str, dt, attrs) -> str:
    """torch's max pooling returns NaN for a window holding a NaN and -inf for a window of
    -infs; ONNX Runtime's MaxPool skips NaN and starts from the lowest finite value. Where `x`
    may hold either (its sum is NaN or -inf), pool a code of each element (2: NaN, 1: -inf)
    with the same windows and correct y; otherwise `y` as it is. (A window of -inf and the
    lowest finite value gives -inf here: told apart only by a third pool.) The gate is one
    ReduceSum over x. On this machine's CPU (1x64x112x112, 3x3 stride 2, one thread) the
    correction run always cost 5-10x the pool; gated it costs 1.55-1.6x the pool alone
    (+0.15 ms; a ResNet has one such pool) (tests/test_special_values.py::
    test_max_pool_nan_gate_cost)."""
    neg_inf = b.scalar(float("-inf"), dt)

    def fix():
        zero, one, two = (b.scalar(v, dt) for v in (0, 1, 2))
        codes = b.op("Where", [b.op("IsNaN", [x]), two,
                               b.op("Where", [b.op("Equal", [x, neg_inf]), one, zero])])
        pooled = b.op("MaxPool", [codes], **attrs)
        y1 = b.op("Where", [b.op("Equal", [pooled, two]), b.scalar(float("nan"), dt), y])
        lowest = b.op("Equal", [y, b.scalar(torch.finfo(dt).min, dt)])
        all_neg_inf = b.op("And", [b.op("Equal", [pooled, one]), lowest])
        return b.op("Where", [all_neg_inf, neg_inf, y1])

    total = b.reduce("ReduceSum", x, None, False)
    gate = b.op("Not", [b.op("Greater", [total, neg_inf])])  # NaN or -inf
    return nan_gated(b, x, fix, y, dt, "nan_windows", gate=gate)


def _onnx_pool_shape(spatial, kernel, stride, padding, dilation) -> list[int]:
    """ONNX MaxPool's output size with ceil_mode: ceil((in + 2p - d(k - 1) - 1) / s) + 1."""
    return [-(-(i + 2 * p - d * (k - 1) - 1) // s) + 1
            for i, k, s, p, d in zip(spatial, kernel, stride, padding, dilation)]


def _out_shape(node):
    out = out_meta(node)
    return (out[0] if isinstance(out, (tuple, list)) else out).shape


@converter(aten.avg_pool2d.default, aten.avg_pool1d.default, aten.avg_pool3d.default)
def avg_pool(b: Builder, node):
    """avg_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, bool ceil_mode=False, bool count_include_pad=True, int? divisor_override=None) -> Tensor"""
    x = node.args[0]
    n = rank_of(x) - 2
    if n < 1:
        return Refuse("unbatched pooling input")
    kernel, stride, padding = _pool_attrs(node, n)
    ceil = bool(_arg(node, 4, "ceil_mode", False))
    include_pad = bool(_arg(node, 5, "count_include_pad", True))
    if _arg(node, 6, "divisor_override") is not None:
        return Refuse("divisor_override (ONNX AveragePool divides by the window)")
    if ceil and include_pad and any(padding):
        return Refuse("ceil_mode with count_include_pad and padding: ONNX and torch count "
                      "the overhanging window differently")
    return b.op("AveragePool", [b.tensor(x)], kernel_shape=kernel, strides=stride,
                pads=padding + padding, ceil_mode=int(ceil), count_include_pad=int(include_pad))


@converter(aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default,
           aten._adaptive_avg_pool1d.default if hasattr(aten, "_adaptive_avg_pool1d")
           else aten.adaptive_avg_pool1d.default)
def adaptive_avg_pool(b: Builder, node):
    """_adaptive_avg_pool2d(Tensor self, SymInt[2] output_size) -> Tensor

    Output 1x1: GlobalAveragePool; an output that divides the input: AveragePool."""
    x, out = node.args[0], list(node.args[1])
    spatial = shape_of(x)[2:]
    if rank_of(x) != len(out) + 2:
        return Refuse("unbatched adaptive pooling input")
    if all(o == 1 for o in out):
        return b.op("GlobalAveragePool", [b.tensor(x)])
    if any(o == 0 or s % o for s, o in zip(spatial, out)):
        return Refuse(f"adaptive pooling {tuple(spatial)} -> {tuple(out)} with uneven windows")
    k = [s // o for s, o in zip(spatial, out)]
    return b.op("AveragePool", [b.tensor(x)], kernel_shape=k, strides=k)


# -- resizing ---------------------------------------------------------------------------------

def _scales(node) -> list:
    """The scale factors an upsample node was given (empty when it was given sizes)."""
    if node.target in (aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec):
        s = node.args[-1] if len(node.args) > (3 if "bilinear" in str(node.target) else 2) else None
        return list(s or [])
    first = 3 if "bilinear" in str(node.target) else 2
    return [s for s in node.args[first:] if s is not None]


@converter(aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
def upsample_nearest(b: Builder, node):
    """upsample_nearest2d.vec(Tensor input, SymInt[]? output_size, float[]? scale_factors) -> Tensor"""
    return _resize(b, node, mode="nearest", transform="asymmetric")


@converter(aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default)
def upsample_bilinear(b: Builder, node):
    """upsample_bilinear2d.vec(Tensor input, SymInt[]? output_size, bool align_corners, float[]? scale_factors) -> Tensor"""
    return _resize(b, node, mode="linear",
                   transform="align_corners" if node.args[2] else "pytorch_half_pixel")


def _resize(b, node, mode, transform):
    # ONNX Resize with `sizes` maps coordinates by out/in, as torch does for output sizes and
    # integer scale factors; torch maps a fractional factor by the factor itself: refuse it.
    if any(float(s) != int(s) for s in _scales(node)):
        return Refuse("fractional scale factors (torch maps coordinates by the factor)")
    return b.op("Resize", [b.tensor(node.args[0]), "", "", b.ints(out_meta(node).shape)],
                mode=mode, coordinate_transformation_mode=transform,
                nearest_mode="floor" if mode == "nearest" else None)
