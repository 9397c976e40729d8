"""The decomposition table: core ATen, except the ops fxc fuses and lowers whole.

Convolutions of every rank become `aten.convolution` and eval-mode batch norm becomes
`aten._native_batch_norm_legit_no_training`: one form each for the fusion rules.

Keeping these whole means a pass sees `aten.linear` rather than `permute + addmm`, and the
ONNX lowering emits one Gemm/MatMul, one LayerNormalization, one Softmax. Everything else
decomposes to core ATen as torch.export does by default.
"""
from __future__ import annotations

import torch

aten = torch.ops.aten

# Composite ops we keep (their default decomposition is popped from the table).
KEEP_WHOLE = (
    aten.linear.default,                        # -> one GEMM with bias (fusion, Gemm)
    aten.layer_norm.default,                    # -> LayerNormalization
    aten.rms_norm.default,                      # -> CUDA's fused kernel (aten._fused_rms_norm)
    aten.softmax.int,                           # -> Softmax (dtype-stable)
    aten.log_softmax.int,
    aten.scaled_dot_product_attention.default,  # -> fused attention kernels
    aten.matmul.default,                        # numpy semantics, = ONNX MatMul; no view/bmm noise
    aten.silu.default,                          # activation epilogues
    aten.hardswish.default,
    aten.hardsigmoid.default,
    aten.gelu.default,
)


def table() -> dict:
    """torch.export's default decomposition table minus the ops in KEEP_WHOLE."""
    t = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        try:
            t.pop(op)
        except KeyError:  # not decomposed by default on this torch: already kept
            pass
    return t
