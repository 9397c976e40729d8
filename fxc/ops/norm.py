"""Fused residual add + layer norm, the seam between every two transformer sublayers.

    fxc::add_layer_norm(Tensor x, Tensor residual, int[] normalized_shape, Tensor? weight,
                        Tensor? bias, float eps) -> (Tensor sum, Tensor out)
        sum = x + residual
        out = layer_norm(sum, normalized_shape, weight, bias, eps)

Both results are returned: pre-LN blocks (GPT-2, ViT) carry `sum` on as the next residual;
post-LN blocks (BERT) read only `out`. The reference is the two ATen ops the fusion replaced
(`aten.add.Tensor`, `aten.layer_norm`), so on any device without the fast kernel the fused
graph is bitwise the graph before.

CUDA: one Triton kernel per row (the normalized size N <= 16384, the last dimension only;
fp16, bf16 or fp32; x, residual, weight and bias of one dtype, contiguous, same shape, both
weight and bias given): the sum is rounded to the storage dtype, stored, and re-read from the
register (so `out` normalizes exactly the rounded sum the reference normalizes); mean and
variance are computed in fp32 in two passes over the register tile (ATen uses Welford: the
two differ by rounding, at most an ulp of the output, measured against the reference in
tests). It saves one kernel and a round trip of the sum through memory per seam: 24 kernels
of bert-base's ~146 per call. Elsewhere, or where Triton is not installed, the reference.
"""
from __future__ import annotations

from typing import Optional

import torch

from .triton_kernel import LazyKernel

aten = torch.ops.aten
MAX_N = 16384
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _reference(x, residual, normalized_shape, weight, bias, eps):
    s = aten.add.Tensor(x, residual)
    return s, aten.layer_norm.default(s, list(normalized_shape), weight, bias, eps)


@torch.library.custom_op(
    "fxc::add_layer_norm", mutates_args=(),
    schema="(Tensor x, Tensor residual, int[] normalized_shape, Tensor? weight, Tensor? bias, "
           "float eps) -> (Tensor, Tensor)")
def add_layer_norm(x, residual, normalized_shape, weight, bias, eps):
    """fxc::add_layer_norm(x, residual, normalized_shape, weight, bias, eps) -> (sum, out)

    sum = x + residual (no broadcasting); out = layer_norm(sum, ...). See the module docstring.
    """
    return _reference(x, residual, normalized_shape, weight, bias, eps)


@add_layer_norm.register_fake
def _(x, residual, normalized_shape, weight, bias, eps):
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"add_layer_norm: x {x.dtype}{list(x.shape)} and residual "
                         f"{residual.dtype}{list(residual.shape)} must match (no broadcasting)")
    n = len(normalized_shape)
    if n == 0 or list(x.shape[-n:]) != list(normalized_shape):
        raise ValueError(f"add_layer_norm: normalized_shape {list(normalized_shape)} is not the "
                         f"trailing shape of {list(x.shape)}")
    return torch.empty_like(x), torch.empty_like(x)


def _triton_fits(x, residual, normalized_shape, weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor]) -> bool:
    return (len(normalized_shape) == 1 and x.numel() > 0
            and 0 < x.shape[-1] <= MAX_N and x.dtype in _DTYPES
            and weight is not None and bias is not None
            and all(t.dtype == x.dtype and t.is_contiguous() and t.device == x.device
                    for t in (residual, weight, bias)) and x.is_contiguous()
            and residual.shape == x.shape)


@add_layer_norm.register_kernel("cuda")
def _(x, residual, normalized_shape, weight, bias, eps):
    reference = lambda: _reference(x, residual, normalized_shape, weight, bias, eps)  # noqa: E731
    if not _triton_fits(x, residual, normalized_shape, weight, bias):
        return reference()
    return KERNEL.run(lambda: launch(x, residual, weight, bias, eps), reference)


def launch(x, residual, weight, bias, eps):
    """Run the Triton kernel (CUDA tensors, or CPU ones under TRITON_INTERPRET=1)."""
    n = x.shape[-1]
    rows = x.numel() // n
    s, y = torch.empty_like(x), torch.empty_like(x)
    block = max(16, 1 << (n - 1).bit_length())
    warps = 1 if block <= 512 else 4 if block <= 4096 else 8
    KERNEL.get()[(rows,)](x, residual, weight, bias, s, y, n, float(eps), BLOCK=block,
                       num_warps=warps)
    return s, y


def _define(triton, tl):
    @triton.jit
    def add_ln(x_ptr, r_ptr, w_ptr, b_ptr, s_ptr, y_ptr, N, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_ptr + row * N + cols, mask=mask, other=0.0)
        r = tl.load(r_ptr + row * N + cols, mask=mask, other=0.0)
        s = (x.to(tl.float32) + r.to(tl.float32)).to(s_ptr.dtype.element_ty)  # as aten.add
        tl.store(s_ptr + row * N + cols, s, mask=mask)
        v = s.to(tl.float32)
        mean = tl.sum(v, axis=0) / N
        d = tl.where(mask, v - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / N + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * N + cols, (d * rstd * w + b).to(y_ptr.dtype.element_ty),
                 mask=mask)

    return add_ln


KERNEL = LazyKernel("add_layer_norm", _define)
