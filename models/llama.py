"""A Llama-style decoder, mirroring HuggingFace transformers' LlamaForCausalLM (eager attention).

RMSNorm with HF's float32 round trip, rotary embeddings from cos/sin buffers with rotate_half,
grouped-query attention (K, V repeated by expand + reshape), a causal + padding mask built from
`attention_mask`, a gated SiLU MLP, and a dataclass output as HF's ModelOutput returns.
base is SmolLM-135M's configuration (a published Llama-architecture model). HF's LlamaForCausalLM
with these weights gives bitwise-equal logits and hidden states (transformers 5.24, eager).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_seq, padding_mask, tokens


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (B, T, vocab)
    hidden_states: tuple[torch.Tensor, ...]  # embeddings, then each layer's output; last one normed


# HF registers its ModelOutput classes as pytree nodes; without this torch.export rejects the output.
torch.export.register_dataclass(CausalLMOutput, serialized_type_name=f"{__name__}.CausalLMOutput")


@dataclass
class LlamaConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5


CONFIGS = {
    "tiny": LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "base": LlamaConfig(),
}
SEQ = {"tiny": 16, "base": 128}


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_positions).float(), inv_freq)  # (P, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (P, hd)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_cached[:seq_len].to(dtype), self.sin_cached[:seq_len].to(dtype)  # (T, hd)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd), as torch.repeat_interleave(x, n_rep, dim=1)."""
    B, n_kv, T, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(B, n_kv, n_rep, T, hd).reshape(B, n_kv * n_rep, T, hd)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        kv_dim = cfg.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        cos, sin = cos[None, None], sin[None, None]  # (1, 1, T, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, nh, T, hd)
        att = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask  # (B, nh, T, T)
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        y = torch.matmul(att, v).transpose(1, 2).contiguous()  # (B, T, nh, hd)
        return self.o_proj(y.reshape(B, T, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.rotary_emb = LlamaRotaryEmbedding(head_dim, cfg.max_position_embeddings, cfg.rope_theta)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tie_word_embeddings, as SmolLM
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, LlamaRMSNorm):  # HF starts at 1; random so a dropped weight shows
                nn.init.normal_(m.weight, 1.0, 0.1)

    def causal_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        B, T = attention_mask.shape
        min_value = torch.finfo(dtype).min
        mask = torch.full((T, T), min_value, dtype=dtype, device=attention_mask.device).triu(1)
        mask = mask[None, None, :, :].expand(B, 1, T, T).clone()  # (B, 1, T, T)
        padding = attention_mask[:, None, None, :] == 0  # (B, 1, 1, T): padded keys
        return mask.masked_fill_(padding, min_value)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> CausalLMOutput:
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rotary_emb(input_ids.shape[1], x.dtype)
        mask = self.causal_mask(attention_mask, x.dtype)
        hidden_states = []
        for layer in self.layers:
            hidden_states.append(x)
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        hidden_states.append(x)
        return CausalLMOutput(logits=self.lm_head(x), hidden_states=tuple(hidden_states))


def build(size: str, batch: int, seq: int | None = None):
    cfg = CONFIGS[size]
    seq = check_seq(SEQ[size] if seq is None else seq, cfg.max_position_embeddings, "llama")
    model = LlamaForCausalLM(cfg)
    return model, (tokens(batch, seq, cfg.vocab_size), padding_mask(batch, seq))
