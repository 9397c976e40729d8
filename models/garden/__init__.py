"""The model garden: library models (torchvision, timm, transformers) built from configs with
random weights, to test fxc on the code users actually run. Nothing is downloaded.

    from fxc.models import garden
    model, example_inputs = garden.get("hf:bert-base", size="tiny", batch=1, seed=0)
    out = model(*example_inputs)              # tensors: HF ModelOutputs are unwrapped
    garden.names("timm")                      # ['timm:regnety_016', ...]

`fxc.models.get` takes these names too (any name with a ':'). Same contract as the zoo: `base`
is the published size, `tiny` a few ms on CPU (1-2 blocks a stage, hidden 32-64, 32x32 images,
16 tokens); weights random but deterministic given `seed`, with norms, biases, layer scales and
BatchNorm statistics made non-trivial (_libs.nontrivial_); the global RNG is left as found.

Names are `source:model`: `tv:` torchvision, `timm:` timm, `hf:` transformers. The libraries
are optional (`pip install fxc[garden]`) and imported on first use; _libs.load says why one
cannot be. Text models (hf: encoders and decoders) take `seq=` (default 16 tiny, 128 base).
transformers models run with attn_implementation="sdpa" and, for decoders, use_cache=False.

Inputs and outputs: torchvision and timm take (images,) and return logits (B, classes); the hf:
models are wrapped (_libs.ReturnTensors) to take positional tensors (from_transformers' docstring
lists them) and return tensors: last_hidden_state (with pooler_output for BERT, RoBERTa, CLIP
and SigLIP), or logits for the causal LMs. `with torch.device("meta"): get(name, "base")`
builds without allocating (how the tests count parameters; BN calibration is skipped there).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from . import from_timm, from_torchvision, from_transformers
from .._common import build_seeded, check_args
from ._libs import load

SOURCES = ("tv", "timm", "hf")  # torchvision, timm, transformers


@dataclass(frozen=True)
class GardenSpec:
    build: Callable[..., tuple[nn.Module, tuple[torch.Tensor, ...]]]  # (size, batch, **kwargs)
    library: str  # torchvision | timm | transformers
    family: str
    params: int  # at base size, as the published checkpoint has them
    description: str  # one line, with the real-size parameter count
    sizes: tuple[str, ...] = ("tiny", "base")
    kwargs: tuple[str, ...] = ()


def _tv(fn, *args, **kw): return GardenSpec(fn, "torchvision", *args, **kw)  # noqa: E704
def _timm(fn, *args, **kw): return GardenSpec(fn, "timm", *args, **kw)  # noqa: E704


def _hf(key, *args, **kw):  # text models (encoders and decoders) take seq=
    text = from_transformers.MODELS[key].kind in ("text", "causal")
    return GardenSpec(partial(from_transformers.build, key), "transformers", *args,
                      kwargs=("seq",) if text else (), **kw)


tv, tm = from_torchvision, from_timm

# Parameter counts: torchvision's model docs, timm's model cards, the HF checkpoints' tensors
# (each equal to what the builder makes; tests/test_garden.py checks them on the meta device).
GARDEN: dict[str, GardenSpec] = {
    "tv:resnet50": _tv(tv.resnet50, "ResNet", 25_557_032, "ResNet-50, 224x224 (25.6M)"),
    "tv:resnext50_32x4d": _tv(tv.resnext50_32x4d, "ResNeXt", 25_028_904,
                              "ResNeXt-50 32x4d, grouped 3x3 convs, 224x224 (25.0M)"),
    "tv:regnet_y_400mf": _tv(tv.regnet_y_400mf, "RegNet", 4_344_144,
                             "RegNetY-400MF, group convs + SE, 224x224 (4.3M)"),
    "tv:mobilenet_v3_large": _tv(tv.mobilenet_v3_large, "MobileNetV3", 5_483_032,
                                 "MobileNetV3-Large, hardswish + SE, 224x224 (5.5M)"),
    "tv:efficientnet_b0": _tv(tv.efficientnet_b0, "EfficientNet", 5_288_548,
                              "EfficientNet-B0, MBConv + SE + SiLU, 224x224 (5.3M)"),
    "tv:convnext_tiny": _tv(tv.convnext_tiny, "ConvNeXt", 28_589_128,
                            "ConvNeXt-T, 7x7 depthwise + LayerNorm, 224x224 (28.6M)"),
    "tv:densenet121": _tv(tv.densenet121, "DenseNet", 7_978_856,
                          "DenseNet-121, concatenating blocks, 224x224 (8.0M)"),
    "tv:vit_b_16": _tv(tv.vit_b_16, "ViT", 86_567_656,
                       "ViT-B/16, nn.MultiheadAttention, 224x224 (86.6M)"),
    "tv:swin_t": _tv(tv.swin_t, "Swin", 28_288_354, "Swin-T, shifted windows, 224x224 (28.3M)"),
    "timm:regnety_016": _timm(tm.regnety_016, "RegNet", 11_202_430,
                              "RegNetY-1.6GF, 224x224 (11.2M)"),
    "timm:deit_small_patch16_224": _timm(tm.deit_small_patch16_224, "DeiT", 22_050_664,
                                         "DeiT-S/16, fused SDPA, 224x224 (22.1M)"),
    "timm:efficientnet_b0": _timm(tm.efficientnet_b0, "EfficientNet", 5_288_548,
                                  "EfficientNet-B0, 224x224 (5.3M)"),
    "timm:convnext_tiny": _timm(tm.convnext_tiny, "ConvNeXt", 28_589_128,
                                "ConvNeXt-T, channels-last LayerNorm, 224x224 (28.6M)"),
    "timm:seresnext26d_32x4d": _timm(tm.seresnext26d_32x4d, "ResNeXt", 16_809_512,
                                     "SE-ResNeXt-26d 32x4d, deep stem, avg-down, 224x224 (16.8M)"),
    "hf:bert-base": _hf("bert-base", "BERT", 109_482_240,
                        "BertModel, bert-base-uncased, with pooler, seq 128 (109.5M)"),
    "hf:roberta-base": _hf("roberta-base", "RoBERTa", 124_645_632,
                           "RobertaModel, roberta-base, with pooler, seq 128 (124.6M)"),
    "hf:distilbert": _hf("distilbert", "DistilBERT", 66_362_880,
                         "DistilBertModel, distilbert-base-uncased, seq 128 (66.4M)"),
    "hf:t5-encoder": _hf("t5-encoder", "T5", 109_628_544,
                         "T5EncoderModel, t5-base, relative position bias, seq 128 (109.6M)"),
    "hf:whisper-encoder": _hf("whisper-encoder", "Whisper", 20_590_592,
                              "WhisperEncoder, whisper-base, 80 mels x 3000 frames (20.6M)"),
    "hf:clip-vision": _hf("clip-vision", "CLIP", 87_456_000,
                          "CLIPVisionModel, clip-vit-base-patch32, no projection (87.5M)"),
    "hf:siglip-vision": _hf("siglip-vision", "SigLIP", 92_884_224,
                            "SiglipVisionModel, siglip-base-patch16-224, pooling head (92.9M)"),
    "hf:gpt2": _hf("gpt2", "GPT-2", 124_439_808,
                   "GPT2LMHeadModel, gpt2, tied head, logits, seq 128 (124.4M)"),
    "hf:llama": _hf("llama", "Llama", 1_100_048_384,
                    "LlamaForCausalLM, TinyLlama-1.1B, GQA 32/4 heads, logits (1.10B)"),
    "hf:qwen2": _hf("qwen2", "Qwen2", 494_032_768,
                    "Qwen2ForCausalLM, Qwen2-0.5B, QKV bias, tied head, logits (494.0M)"),
    "hf:phi3": _hf("phi3", "Phi-3", 3_821_079_552,
                   "Phi3ForCausalLM, Phi-3-mini-4k, fused QKV and gate-up, logits (3.82B)"),
}


def names(source: str | None = None) -> list[str]:
    """Garden names in registry order, all or those of one source ('tv', 'timm', 'hf')."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    return [n for n in GARDEN if source is None or n.split(":")[0] == source]


def get(name: str, size: str = "tiny", batch: int = 1, seed: int = 0,
        **kwargs: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build garden model `name` at `size` in eval mode, with inputs of leading dim `batch`.

    ImportError if its library is missing or cannot be imported.
    """
    spec = GARDEN.get(name)
    if spec is None:
        raise ValueError(f"unknown garden model {name!r}; choose one of: {', '.join(GARDEN)}")
    check_args(name, spec, size, batch, kwargs)
    load(spec.library)  # before the RNG fork: a failed import leaves nothing to restore
    return build_seeded(spec, size, batch, seed, kwargs)


__all__ = ["GARDEN", "GardenSpec", "get", "load", "names"]
