"""Fused 2-D convolution ops: conv + bias + activation, and conv + bias + residual add + activation.

    fxc::conv2d_act(Tensor x, Tensor w, Tensor? b, int[] stride, int[] padding, int[] dilation,
                    int groups, str act, float[] act_args) -> Tensor
        y = act(conv(x, w) + b)

    fxc::conv2d_add_act(Tensor x, Tensor w, Tensor? b, Tensor residual, int[] stride,
                        int[] padding, int[] dilation, int groups, str act, float[] act_args)
        y = act(conv(x, w) + b + residual)          residual: exactly conv's output shape

conv is `aten.convolution` (not transposed, no output padding); the reference kernels are the
very ATen ops the fusion replaced, so on CPU a fused graph is bitwise the graph before it.
The reference is rank-generic (stride/padding/dilation of any length); the passes emit these
ops for 2-D convolutions, where cuDNN has the fused kernels.

`act` names the activation, `act_args` its scalar arguments (ACTIVATIONS below):
    identity              y                         (conv + bias only: see CUDA below)
    relu                  max(y, 0)
    hardtanh [lo, hi]     min(max(y, lo), hi)      (relu6 is hardtanh [0, 6]: bounds always kept)
    silu                  y * sigmoid(y)
    gelu                  y * Phi(y)                (exact, erf)
    gelu_tanh             0.5 y (1 + tanh(sqrt(2/pi) (y + 0.044715 y^3)))
    sigmoid               1 / (1 + exp(-y))
    hardswish             y * min(max(y + 3, 0), 6) / 6

CUDA kernels, first that fits (else the reference):
  - 1x1 conv, stride 1, no padding, one group, channels_last input, fp16/bf16, with bias, act
    identity/relu/relu6: the conv *is* a GEMM over the (N*H*W, C_in) view of the input, so it
    runs as one cuBLASLt GEMM whose epilogue adds the bias (and relu): `torch.addmm` /
    `torch._addmm_activation`, written straight into the channels_last output; relu6 adds an
    in-place clamp_max. cuDNN runs these convs as the same GEMM kernels, but adds the bias with
    a separate broadcast kernel (MobileNet: 52 of them, 2.5 us each at batch 1 on an H100).
  - relu or relu6 (hardtanh [0, hi]) in fp16/fp32 on 4-D input, one group: cuDNN's fused
    conv+bias(+add)+relu (`torch.cudnn_convolution_relu`, `torch.cudnn_convolution_add_relu`);
    relu6 then clamps in place (min(relu(y), hi) == hardtanh(y, 0, hi) exactly). Grouped and
    depthwise convs run the reference: cuDNN's fused engine for them is a generic direct kernel,
    measured 11 us per MobileNet-v2 depthwise layer (H100, fp16, batch 1) against 3 us for
    its unfused depthwise kernel plus 2 elementwise ones. Where cuDNN has no fused engine for a
    geometry (it raises), that geometry runs the reference from then on. Where the input is
    channels_last the cuDNN kernels return channels_last.
The fused kernels round once, from the fp32 epilogue; the reference rounds the conv output before
the add and relu: in fp16 they differ by up to an ulp (H100, cuDNN 9). Measured there (fp16,
batch 32, median of 50): one 3x3 64-channel 56x56 layer ran 9-18% slower fused than as
conv + relu, yet resnet50 as a whole ran 3.9% faster fused (3.53 vs 3.67 ms, BN folded in both).
"""
from collections.abc import Sequence
from typing import Callable, Optional

import torch

aten = torch.ops.aten

# name -> (number of act_args, the ATen ops that compute it)
ACTIVATIONS: dict[str, tuple[int, Callable]] = {
    "identity": (0, lambda y: y),
    "relu": (0, lambda y: aten.relu.default(y)),
    "hardtanh": (2, lambda y, lo, hi: aten.hardtanh.default(y, lo, hi)),
    "silu": (0, lambda y: aten.silu.default(y)),
    "gelu": (0, lambda y: aten.gelu.default(y, approximate="none")),
    "gelu_tanh": (0, lambda y: aten.gelu.default(y, approximate="tanh")),
    "sigmoid": (0, lambda y: aten.sigmoid.default(y)),
    "hardswish": (0, lambda y: aten.hardswish.default(y)),
}


def check_act(act: str, act_args: Sequence[float], allowed=ACTIVATIONS) -> None:
    """Raise ValueError unless `act` is one of `allowed` with the right number of arguments."""
    if act not in allowed:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(allowed)}")
    if len(act_args) != ACTIVATIONS[act][0]:
        raise ValueError(f"activation {act!r} takes {ACTIVATIONS[act][0]} argument(s), "
                         f"got {list(act_args)}")


def activate(y: torch.Tensor, act: str, act_args: Sequence[float]) -> torch.Tensor:
    """The reference activation: the ATen op the fusion replaced."""
    check_act(act, act_args)
    return ACTIVATIONS[act][1](y, *act_args)


def _conv(x, w, b, stride, padding, dilation, groups):
    n = len(stride)
    return aten.convolution.default(x, w, b, list(stride), list(padding), list(dilation),
                                    False, [0] * n, groups)


def conv_out_shape(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation) -> list[int]:
    """(..., C_out, *spatial): out = floor((in + 2p - d (k - 1) - 1) / s) + 1 per spatial axis."""
    n = len(stride)
    if not (len(padding) == len(dilation) == n == w.dim() - 2):
        raise ValueError(f"conv of a {w.dim()}-D weight needs {w.dim() - 2} strides, paddings and "
                         f"dilations; got {list(stride)}, {list(padding)}, {list(dilation)}")
    spatial = [(i + 2 * p - d * (k - 1) - 1) // s + 1
               for i, k, s, p, d in zip(x.shape[-n:], w.shape[2:], stride, padding, dilation)]
    if any(o <= 0 for o in spatial):
        raise ValueError(f"conv output would be empty: input {list(x.shape)}, kernel "
                         f"{list(w.shape)} -> {spatial}")
    return [*x.shape[:-n - 1], w.shape[0], *spatial]


_FAST_DTYPES = (torch.float16, torch.float32)
_GEMM_DTYPES = (torch.float16, torch.bfloat16)
_NO_FUSED_ENGINE: set = set()  # geometries cuDNN refused once: (fn, dtype, kernel size)


def relu_like(act: str, act_args: Sequence[float]) -> bool:
    """relu, or hardtanh [0, hi] (relu6): relu followed by min(., hi) computes it exactly."""
    return act == "relu" or (act == "hardtanh" and act_args[0] == 0.0 and act_args[1] >= 0.0)


def _clamped(y: torch.Tensor, act: str, act_args: Sequence[float]) -> torch.Tensor:
    """A relu kernel's output `y` finished as `act` (a relu-like one): relu6 clamps in place."""
    return y.clamp_max_(float(act_args[1])) if act == "hardtanh" else y


def fused_relu_fits(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str,
                    act_args: Sequence[float], *others: torch.Tensor) -> bool:
    """The convs cuDNN's fused kernels take: relu only (relu6 clamps after), 2-D, one group,
    fp16/fp32, one dtype, non-empty (shapes and dtypes alone: metas answer it too, which is
    how passes/conv_epilogue.py knows what stays one kernel)."""
    return (relu_like(act, act_args)
            and x.dim() == 4 and w.dim() == 4 and x.numel() > 0 and x.dtype in _FAST_DTYPES
            and w.shape[1] == x.shape[1]  # one group (module docstring)
            and all(t.dtype == x.dtype for t in (w, *others) + ((b,) if b is not None else ())))


def _cudnn_fusable(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str,
                   act_args: Sequence[float], fn_name: str, *others: torch.Tensor) -> bool:
    """fused_relu_fits, on a cuDNN that is there and may run non-deterministically (the fused
    kernels pass deterministic=false): fall back where any fails, or where cuDNN refused this
    geometry."""
    return (fused_relu_fits(x, w, b, act, act_args, *others) and hasattr(torch, fn_name)
            and torch.backends.cudnn.is_available()
            and torch.backends.cudnn.enabled and not torch.backends.cudnn.deterministic
            and not torch.are_deterministic_algorithms_enabled()
            and _engine_key(fn_name, x, w) not in _NO_FUSED_ENGINE)


def _engine_key(fn_name, x, w) -> tuple:
    return fn_name, x.dtype, tuple(w.shape[2:])


def _try_cudnn(fn_name: str, x, w, call: Callable) -> Optional[torch.Tensor]:
    """Run a cuDNN fused call; None (and remember the geometry) where cuDNN has no engine."""
    try:
        return call()
    except RuntimeError:
        _NO_FUSED_ENGINE.add(_engine_key(fn_name, x, w))
        return None


def gemm_fits(x, w, b, stride, padding, groups, act, act_args) -> bool:
    """The 1x1 conv that is exactly a GEMM on the channels_last view (module docstring)."""
    return ((act == "identity" or relu_like(act, act_args)) and b is not None
            and x.dim() == 4 and w.dim() == 4 and tuple(w.shape[2:]) == (1, 1)
            and all(s == 1 for s in stride) and all(p == 0 for p in padding) and groups == 1
            and x.numel() > 0 and x.dtype in _GEMM_DTYPES and w.dtype == x.dtype == b.dtype
            and x.is_contiguous(memory_format=torch.channels_last))


def _conv1x1_gemm(x, w, b, act, act_args) -> torch.Tensor:
    n, c, h, wd = x.shape
    x2d = x.permute(0, 2, 3, 1).reshape(n * h * wd, c)   # a view: x is channels_last
    w2d = w.reshape(w.shape[0], c).t()                    # (C_in, C_out)
    if act == "identity":
        y = torch.addmm(b, x2d, w2d)
    else:
        y = _clamped(torch._addmm_activation(b, x2d, w2d, use_gelu=False), act, act_args)
    return y.view(n, h, wd, w.shape[0]).permute(0, 3, 1, 2)  # (N, C_out, H, W) channels_last


# -- fxc::conv2d_act -------------------------------------------------------------------------

@torch.library.custom_op(
    "fxc::conv2d_act", mutates_args=(),
    schema="(Tensor x, Tensor w, Tensor? b, int[] stride, int[] padding, int[] dilation, "
           "int groups, str act, float[] act_args) -> Tensor")
def conv2d_act(x, w, b, stride, padding, dilation, groups, act, act_args):
    """fxc::conv2d_act(x, w, b, stride, padding, dilation, groups, act, act_args) -> Tensor

    y = act(conv(x, w) + b), conv = aten.convolution (not transposed); see the module docstring.
    """
    return activate(_conv(x, w, b, stride, padding, dilation, groups), act, act_args)


@conv2d_act.register_fake
def _(x, w, b, stride, padding, dilation, groups, act, act_args):
    check_act(act, act_args)
    return x.new_empty(conv_out_shape(x, w, stride, padding, dilation))


@conv2d_act.register_kernel("cuda")
def _(x, w, b, stride, padding, dilation, groups, act, act_args):
    check_act(act, act_args)
    if gemm_fits(x, w, b, stride, padding, groups, act, act_args):
        return _conv1x1_gemm(x, w, b, act, act_args)
    fn = "cudnn_convolution_relu"
    if _cudnn_fusable(x, w, b, act, act_args, fn):
        y = _try_cudnn(fn, x, w, lambda: torch.cudnn_convolution_relu(
            x, w, b, list(stride), list(padding), list(dilation), groups))
        if y is not None:
            return _clamped(y, act, act_args)
    return activate(_conv(x, w, b, stride, padding, dilation, groups), act, act_args)


# -- fxc::conv2d_add_act ---------------------------------------------------------------------

@torch.library.custom_op(
    "fxc::conv2d_add_act", mutates_args=(),
    schema="(Tensor x, Tensor w, Tensor? b, Tensor residual, int[] stride, int[] padding, "
           "int[] dilation, int groups, str act, float[] act_args) -> Tensor")
def conv2d_add_act(x, w, b, residual, stride, padding, dilation, groups, act, act_args):
    """fxc::conv2d_add_act(x, w, b, residual, stride, padding, dilation, groups, act, act_args)

    y = act(conv(x, w) + b + residual), residual of conv's output shape and dtype (no
    broadcasting: the fused kernels read it element for element).
    """
    y = _conv(x, w, b, stride, padding, dilation, groups)
    return activate(aten.add.Tensor(y, residual), act, act_args)


@conv2d_add_act.register_fake
def _(x, w, b, residual, stride, padding, dilation, groups, act, act_args):
    check_act(act, act_args)
    shape = conv_out_shape(x, w, stride, padding, dilation)
    if list(residual.shape) != shape or residual.dtype != x.dtype:
        raise ValueError(f"conv2d_add_act: residual {residual.dtype}{list(residual.shape)} must be "
                         f"the conv output {x.dtype}{shape}")
    return x.new_empty(shape)


@conv2d_add_act.register_kernel("cuda")
def _(x, w, b, residual, stride, padding, dilation, groups, act, act_args):
    check_act(act, act_args)
    fn = "cudnn_convolution_add_relu"
    if _cudnn_fusable(x, w, b, act, act_args, fn, residual):
        y = _try_cudnn(fn, x, w, lambda: torch.cudnn_convolution_add_relu(
            x, w, residual, 1.0, b, list(stride), list(padding), list(dilation), groups))
        if y is not None:
            return _clamped(y, act, act_args)
    y = _conv(x, w, b, stride, padding, dilation, groups)
    return activate(aten.add.Tensor(y, residual), act, act_args)
