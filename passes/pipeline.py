"""The pass pipeline: one ordered list, one comment a pass.

Read top to bottom, this is what fxc does to a captured graph. Order matters: clean-up and
folding first, so patterns are visible; written-out norms/GELUs are recognised before the
linear-epilogue fusion that needs a whole gelu; attention and the QKV merge come before
fuse_linear (a merged QKV linear has no activation, so nothing is lost); precision last, so
fused ops get half inputs; layout after that, over the final ops; generated kernels last, so
they take what every pattern left and record the strides layout settled on (conv_epilogue
first hands them the conv epilogues no library kernel fuses). Options pick entries through
each Pass's `when`; any pass can be switched off by name (`disable_passes=`). On a graph with
symbolic shapes a pass runs only with `static_only=None` (checked at several sizes by
tests/test_dynamic_passes.py); the others are skipped, their reason in the report.
"""
from __future__ import annotations

from . import dce
from . import cse, fold_constants, noops
from . import flatten_linear, fuse_bn, fuse_conv, fuse_dwconv_ln, fuse_linear
from . import fuse_attention, merge_parallel_linear, recognize_norm_act
from . import align_gemm, bool_mask, cast_precision, conv_epilogue, fuse_add_norm, fuse_regions
from . import layout, rotary
from . import repair_views
from .manager import Pass

def _generates(o) -> bool:
    """Generated kernels run: asked for, or by default on CUDA (fuse_regions.not_here says
    why not where the engine is another)."""
    return o.generated_kernels or (o.device.type == "cuda" and o.generated_kernels is None)


PIPELINE: list[Pass] = [
    Pass("dce", dce.run, numerics="exact", static_only=None),  # drop what nothing uses (export leaves some)
    Pass("noops", noops.run, numerics="exact", static_only=None),  # drop identity ops, shrink permute/view/cast chains
    Pass("fold_constants", fold_constants.run, static_only=None),  # precompute what depends on constants alone
    Pass("cse", cse.run, numerics="exact", static_only=None),  # merge duplicate computations and identical constants
    Pass("recognize_norm_act", recognize_norm_act.run, static_only=None),  # written-out norms, GELU, SiLU -> one aten op
    Pass("fuse_attention", fuse_attention.run, static_only=None),  # q@k^T, scale, mask, softmax, @v -> aten SDPA
    Pass("merge_parallel_linear", merge_parallel_linear.run, static_only=None),  # linears on one input -> one GEMM + split (QKV)
    Pass("fuse_bn", fuse_bn.run, numerics="reassoc", static_only=None),  # fold eval BN into conv/linear weights
    Pass("fuse_conv", fuse_conv.run, numerics="reassoc", static_only=None),  # conv2d + bias (+ residual add) + activation -> one fxc op
    Pass("fuse_linear", fuse_linear.run, numerics="reassoc", static_only=None),  # linear + bias + relu/gelu -> fxc::linear_act
    Pass("flatten_linear", flatten_linear.run, numerics="reassoc", static_only=None),  # N-D linear -> 2-D GEMM: bias in the epilogue when planned
    Pass("cast_precision", cast_precision.run, numerics="lowp",  # fp16/bf16 compute, sensitive ops in fp32
         when=lambda o: o.precision in ("fp16", "bf16"), static_only=None),
    Pass("bool_mask", bool_mask.run, numerics="exact",  # a run-time bool attention mask -> float once, not per SDPA call
         static_only=None),
    Pass("align_gemm", align_gemm.run, numerics="lowp",  # pad half GEMMs' N to x8 for tensor cores (gpt2's LM head)
         when=lambda o: o.device.type == "cuda" and o.precision != "fp32", static_only=None),
    Pass("fuse_add_norm", fuse_add_norm.run, numerics="lowp",  # residual add + layer norm -> one kernel (CUDA, torch runtime)
         when=lambda o: o.device.type == "cuda", static_only=None),
    Pass("repair_views", repair_views.run, numerics="exact",  # a view the layouts above made impossible reads a copy
         static_only=None),
    Pass("layout", layout.run, numerics="lowp",  # channels-last convs where measured faster (layout.py: why lowp)
         when=lambda o: o.device.type == "cuda",
         static_only="channels-last is chosen by timing the convs at the compile shapes"),
    Pass("fuse_dwconv_ln", fuse_dwconv_ln.run, numerics="lowp",  # ConvNeXt: depthwise conv + permute + LN -> one kernel
         when=_generates,
         static_only=None),  # refuses a symbolic shape itself, saying so
    Pass("conv_epilogue", conv_epilogue.run, numerics="lowp",  # conv bias/act no library kernel fuses -> ops
         when=_generates,
         static_only=None),  # a conv with a symbolic shape stays fused (fuse_regions would refuse it)
    Pass("rotary", rotary.run, numerics="exact",  # rotate_half's neg + cat -> a select of views, so the next pass fuses RoPE whole
         when=_generates,
         static_only=None),
    Pass("fuse_regions", fuse_regions.run, numerics="lowp",  # what is left: pointwise/row regions -> generated Triton kernels
         when=_generates,
         static_only=None),  # refuses each region with a symbolic shape itself, saying so
]


def names() -> list[str]:
    return [p.name for p in PIPELINE]
