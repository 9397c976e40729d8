"""transformers models, one table row each: the model class, its published configuration (base)
and a tiny one, built with `Model._from_config(config, attn_implementation="sdpa")` (random
weights, no hub access) and wrapped in _libs.ReturnTensors, which returns tensors.

Example inputs by kind:
    text     (input_ids, attention_mask)  (B, T) int64; mask all ones at batch 1, else padded
             rows (_common.padding_mask) whose padded ids are the pad token
    causal   (input_ids,)                 (B, T) int64; returns logits (B, T, vocab), no cache
    vision   (pixel_values,)              (B, 3, H, W) float32
    audio    (input_features,)            (B, mels, 2 * max_source_positions) float32
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from .._common import check_seq, images, padding_mask
from ._libs import ReturnTensors, load, nontrivial_


@dataclass(frozen=True)
class HFModel:
    cls: str  # class in transformers, or "module:Class" below transformers.models
    config: str  # config class in transformers
    kind: str  # text | causal | vision | audio
    base: dict[str, Any]  # the published configuration (what differs from the class defaults)
    tiny: dict[str, Any]
    fields: tuple[str, ...] = ("last_hidden_state",)
    seq_key: str = "max_position_embeddings"  # the config's position limit (absent: 512)


_TEXT_TINY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
_DECODER_TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2)  # GQA: 2 query heads per KV
_VISION_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8)

MODELS: dict[str, HFModel] = {
    "bert-base": HFModel("BertModel", "BertConfig", "text", {}, _TEXT_TINY,  # = bert-base-uncased
                         fields=("last_hidden_state", "pooler_output")),
    "roberta-base": HFModel(
        "RobertaModel", "RobertaConfig", "text",
        dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
             layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
        dict(_TEXT_TINY, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1),
        fields=("last_hidden_state", "pooler_output")),
    "distilbert": HFModel("DistilBertModel", "DistilBertConfig", "text", {},  # -base-uncased
                          dict(vocab_size=128, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                               max_position_embeddings=64)),
    "t5-encoder": HFModel(
        "T5EncoderModel", "T5Config", "text",
        dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
             feed_forward_proj="relu"),
        dict(vocab_size=128, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
             relative_attention_num_buckets=8, relative_attention_max_distance=16)),
    "whisper-encoder": HFModel(
        "whisper.modeling_whisper:WhisperEncoder", "WhisperConfig", "audio",
        dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
             num_mel_bins=80, max_source_positions=1500),  # whisper-base: 30 s, 3000 frames
        dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
             num_mel_bins=16, max_source_positions=16)),
    "clip-vision": HFModel("CLIPVisionModel", "CLIPVisionConfig", "vision", {},  # ViT-B/32
                           _VISION_TINY, fields=("last_hidden_state", "pooler_output")),
    "siglip-vision": HFModel("SiglipVisionModel", "SiglipVisionConfig", "vision", {},  # B/16-224
                             _VISION_TINY, fields=("last_hidden_state", "pooler_output")),
    "gpt2": HFModel("GPT2LMHeadModel", "GPT2Config", "causal", {},  # = gpt2 (small)
                    dict(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                         bos_token_id=1, eos_token_id=2),
                    fields=("logits",), seq_key="n_positions"),
    "llama": HFModel(  # TinyLlama-1.1B
        "LlamaForCausalLM", "LlamaConfig", "causal",
        dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
             rms_norm_eps=1e-5),
        _DECODER_TINY, fields=("logits",)),
    "qwen2": HFModel(  # Qwen2-0.5B: QKV biases, tied embeddings
        "Qwen2ForCausalLM", "Qwen2Config", "causal",
        dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
             rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1e6),
             tie_word_embeddings=True),
        dict(_DECODER_TINY, tie_word_embeddings=True), fields=("logits",)),
    "phi3": HFModel(  # Phi-3-mini-4k: fused qkv_proj and gate_up_proj
        "Phi3ForCausalLM", "Phi3Config", "causal",
        dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
             rms_norm_eps=1e-5),
        _DECODER_TINY, fields=("logits",)),
}


def _model_class(tf, cls: str):
    if ":" not in cls:
        return getattr(tf, cls)
    module, name = cls.split(":")
    return getattr(importlib.import_module(f"transformers.models.{module}"), name)


def build(key: str, size: str, batch: int, seq: int | None = None):
    """Build MODELS[key] at `size`: (ReturnTensors(model), example inputs)."""
    tf = load("transformers")
    spec = MODELS[key]
    config = getattr(tf, spec.config)(**(spec.base if size == "base" else spec.tiny))
    if spec.kind == "causal":
        config.use_cache = False
    model = _model_class(tf, spec.cls)._from_config(config, attn_implementation="sdpa")
    nontrivial_(model)
    if spec.kind in ("text", "causal"):
        limit = getattr(config, spec.seq_key, None) or 512  # T5: relative positions, no table
        seq = check_seq(seq or (128 if size == "base" else 16), limit, f"hf:{key}")
        ids = torch.randint(3, config.vocab_size, (batch, seq))  # (B, T), no special tokens
        if spec.kind == "causal":
            return ReturnTensors(model, ("input_ids",), spec.fields, use_cache=False), (ids,)
        mask = torch.ones(batch, seq, dtype=torch.long) if batch == 1 else padding_mask(batch, seq)
        ids = ids.masked_fill(mask == 0, config.pad_token_id or 0)
        return ReturnTensors(model, ("input_ids", "attention_mask"), spec.fields), (ids, mask)
    if spec.kind == "vision":
        return ReturnTensors(model, ("pixel_values",), spec.fields), \
            (images(batch, config.image_size),)
    frames = 2 * config.max_source_positions  # the encoder's two convs halve the frames once
    feats = torch.randn(batch, config.num_mel_bins, frames)  # (B, mels, frames) log-mel-like
    return ReturnTensors(model, ("input_features",), spec.fields), (feats,)
