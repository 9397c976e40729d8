"""Fused linear op: linear + bias + activation.

    fxc::linear_act(Tensor x, Tensor w, Tensor? b, str act) -> Tensor
        y = act(x @ w^T + b)        x (..., K), w (N, K), b (N,) or None -> y (..., N)

act is one of (formulas in fxc/ops/conv.py):
    relu        max(y, 0)
    gelu        y * Phi(y)                                    (exact, erf)
    gelu_tanh   0.5 y (1 + tanh(sqrt(2/pi) (y + 0.044715 y^3)))

The reference is `aten.linear` then the activation's ATen op: the very ops the fusion replaced.

CUDA: relu and gelu_tanh run `torch._addmm_activation(b, x2d, w.t(), use_gelu=...)`, one
cuBLASLt GEMM with a bias+activation epilogue (over x reshaped to 2-D). Its `use_gelu` is the
tanh approximation both in the epilogue (CUBLASLT_EPILOGUE_GELU_BIAS) and in the fallback
Blas.cpp takes when Lt cannot run (`at::gelu_(result, "tanh")`), so the exact-erf gelu always
runs the reference. Also the reference: no bias, mixed dtypes, dtypes other than
fp16/bf16/fp32, empty input.
"""
from typing import Optional

import torch

from .conv import activate, check_act

aten = torch.ops.aten

LINEAR_ACTS = ("relu", "gelu", "gelu_tanh")
_EPILOGUE = {"relu": False, "gelu_tanh": True}  # act -> use_gelu of _addmm_activation
_FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _reference(x, w, b, act):
    return activate(aten.linear.default(x, w, b), act, ())


@torch.library.custom_op("fxc::linear_act", mutates_args=(),
                         schema="(Tensor x, Tensor w, Tensor? b, str act) -> Tensor")
def linear_act(x, w, b, act):
    """fxc::linear_act(x, w, b, act) -> Tensor

    y = act(x @ w^T + b): x (..., K), w (N, K), b (N,) or None; act relu, gelu or gelu_tanh.
    """
    check_act(act, (), LINEAR_ACTS)
    return _reference(x, w, b, act)


@linear_act.register_fake
def _(x, w, b, act):
    check_act(act, (), LINEAR_ACTS)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear_act: x {list(x.shape)} @ w^T {list(w.shape)} does not fit")
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _epilogue_fits(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], act: str) -> bool:
    return (act in _EPILOGUE and hasattr(torch, "_addmm_activation") and b is not None
            and b.dim() == 1 and x.numel() > 0 and x.dtype in _FAST_DTYPES
            and w.dtype == x.dtype and b.dtype == x.dtype)


@linear_act.register_kernel("cuda")
def _(x, w, b, act):
    if not _epilogue_fits(x, w, b, act):
        return _reference(x, w, b, act)
    x2d = x.reshape(-1, x.shape[-1])                                     # (M, K)
    y = torch._addmm_activation(b, x2d, w.t(), use_gelu=_EPILOGUE[act])  # (M, N)
    return y.reshape(*x.shape[:-1], w.shape[0])
