"""Depthwise convolution with the layer norm over channels that follows it: ConvNeXt's block head.

    fxc::dwconv2d_ln(Tensor x, Tensor weight, Tensor? bias, int[] padding, Tensor? ln_weight,
                     Tensor? ln_bias, float eps) -> Tensor
        y   = convolution(x, weight, bias, stride 1, padding, dilation 1, groups C)  (N, C, H', W')
        out = layer_norm(y.permute(0, 2, 3, 1), [C], ln_weight, ln_bias, eps)       (N, H', W', C)

torchvision's and timm's ConvNeXt blocks start with a 7x7 depthwise conv, a permute to
channels-last and a layer norm over C. On CUDA, cuDNN's depthwise NHWC kernel took 12 us per
call at batch 1 on the H200 (0.216 ms of convnext_tiny's 0.596 ms of kernel time, 18 calls) and
the norm another 3.6 us; torch.compile fuses the conv bias into the norm but keeps cuDNN.

CUDA: one Triton kernel. A program owns BLOCK_P output pixels and all C channels (C <= 4096):
it accumulates the K*K taps in fp32 from x (any strides: NCHW or channels-last), adds the bias,
rounds to the storage dtype (as cuDNN's output is rounded before ATen's norm reads it),
normalizes over C in fp32 (two passes over the register tile, where ATen uses Welford: they
differ by rounding) and writes (N, H', W', C) contiguous, as aten.layer_norm does. The
reference is the ATen ops the fusion replaced, so on any device without the kernel the fused
graph computes what it computed before.
"""
from __future__ import annotations

import torch

from .triton_kernel import LazyKernel

aten = torch.ops.aten
MAX_C = 4096
MAX_K = 11
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _reference(x, weight, bias, padding, ln_weight, ln_bias, eps):
    c = weight.shape[0]
    y = aten.convolution.default(x, weight, bias, [1, 1], list(padding), [1, 1], False, [0, 0], c)
    return aten.layer_norm.default(y.permute(0, 2, 3, 1), [c], ln_weight, ln_bias, eps)


@torch.library.custom_op(
    "fxc::dwconv2d_ln", mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor? bias, int[] padding, Tensor? ln_weight, "
           "Tensor? ln_bias, float eps) -> Tensor")
def dwconv2d_ln(x, weight, bias, padding, ln_weight, ln_bias, eps):
    """fxc::dwconv2d_ln: depthwise conv (stride 1) then layer norm over channels, channels-last
    out. See the module docstring."""
    return _reference(x, weight, bias, padding, ln_weight, ln_bias, eps).contiguous()


@dwconv2d_ln.register_fake
def _(x, weight, bias, padding, ln_weight, ln_bias, eps):
    _check(x, weight, padding)
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    oh, ow = h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1
    return x.new_empty((n, oh, ow, c))


def _check(x, weight, padding) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"dwconv2d_ln: x {list(x.shape)} and weight {list(weight.shape)} are not "
                         f"a depthwise conv (weight (C, 1, kh, kw), x (N, C, H, W))")
    if len(padding) != 2:
        raise ValueError(f"dwconv2d_ln: padding {list(padding)} is not 2-D")


def fits(x, weight, bias, padding, ln_weight, ln_bias) -> bool:
    """Whether the Triton kernel takes these arguments (else the reference runs)."""
    k = weight.shape[2]
    return (x.dim() == 4 and x.dtype in DTYPES and x.numel() > 0
            and 0 < x.shape[1] <= MAX_C and weight.shape[2] == weight.shape[3] and k <= MAX_K
            and padding[0] == padding[1] and 0 <= padding[0] < k
            and all(t is not None and t.device == x.device and t.dim() == 1
                    and t.shape[0] == x.shape[1] for t in (bias, ln_weight, ln_bias)))


@dwconv2d_ln.register_kernel("cuda")
def _(x, weight, bias, padding, ln_weight, ln_bias, eps):
    reference = lambda: _reference(x, weight, bias, padding, ln_weight, ln_bias, eps).contiguous()  # noqa: E731
    if not fits(x, weight, bias, padding, ln_weight, ln_bias):
        return reference()
    return KERNEL.run(lambda: launch(x, weight, bias, padding[0], ln_weight, ln_bias, eps), reference)


def blocks(pixels: int, c: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, warps): all channels in one tile of at most 4096 elements, and enough
    programs to cover the H200's 132 SMs where the image is small (stages 3 and 4 of ConvNeXt:
    196 and 49 pixels at batch 1)."""
    block_c = max(16, 1 << (c - 1).bit_length())
    most = max(1, 4096 // block_c)
    want = max(1, pixels // 132)
    block_p = 1 << min(most.bit_length() - 1, want.bit_length() - 1)
    return block_p, block_c, 4 if block_p * block_c >= 2048 else 2


def launch(x, weight, bias, pad, ln_weight, ln_bias, eps):
    """Run the Triton kernel (CUDA tensors, or CPU ones under TRITON_INTERPRET=1)."""
    n, c, h, w = x.shape
    k = weight.shape[2]
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    out = torch.empty((n, oh, ow, c), dtype=x.dtype, device=x.device)
    pixels = n * oh * ow
    block_p, block_c, warps = blocks(pixels, c)
    sn, sc, sh, sw = x.stride()
    wc, _, wh, ww = weight.stride()
    grid = (-(-pixels // block_p),)
    KERNEL.get()[grid](x, weight, bias, ln_weight, ln_bias, out, h, w, c, oh, ow, pixels,
                    sn, sc, sh, sw, wc, wh, ww, float(eps), K=k, PAD=pad,
                    BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    return out


def _define(triton, tl):
    @triton.jit
    def dwconv_ln(x_ptr, w_ptr, b_ptr, lw_ptr, lb_ptr, y_ptr, H, W, C, OH, OW, P,
                  sn, sc, sh, sw, wc, wh, ww, eps,
                  K: tl.constexpr, PAD: tl.constexpr,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.arange(0, BLOCK_C)
        pm, cm = p < P, c < C
        ow = p % OW
        oh = (p // OW) % OH
        n = (p // OW) // OH
        base = n.to(tl.int64) * sn
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(K):
            ih = oh + kh - PAD
            hok = pm & (ih >= 0) & (ih < H)
            for kw in tl.static_range(K):
                iw = ow + kw - PAD
                ok = hok & (iw >= 0) & (iw < W)
                xp = x_ptr + base[:, None] + (ih * sh + iw * sw)[:, None] + c[None, :] * sc
                xv = tl.load(xp, mask=ok[:, None] & cm[None, :], other=0.0)
                wv = tl.load(w_ptr + c * wc + kh * wh + kw * ww, mask=cm, other=0.0)
                acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        acc += tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)[None, :]
        v = acc.to(y_ptr.dtype.element_ty).to(tl.float32)  # the conv output as stored
        mean = tl.sum(v, axis=1) / C  # masked channels hold 0
        d = tl.where(cm[None, :], v - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
        lw = tl.load(lw_ptr + c, mask=cm, other=0.0).to(tl.float32)
        lb = tl.load(lb_ptr + c, mask=cm, other=0.0).to(tl.float32)
        y = d * rstd[:, None] * lw[None, :] + lb[None, :]
        yp = y_ptr + p.to(tl.int64)[:, None] * C + c[None, :]
        tl.store(yp, y.to(y_ptr.dtype.element_ty), mask=pm[:, None] & cm[None, :])

    return dwconv_ln


KERNEL = LazyKernel("dwconv2d_ln", _define)
