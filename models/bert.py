"""BERT encoder, mirroring HuggingFace transformers' BertModel (eager attention, absolute positions).

Module names follow HF (embeddings.word_embeddings, encoder.layer[i].attention.self.query, ...)
so that a graph node's source reads like the code users run. A HF BertModel loads this
state_dict as is and gives bitwise-equal outputs (transformers 5.24, eager attention).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_seq, padding_mask, perturb_, tokens


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1


CONFIGS = {
    "tiny": BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128, max_position_embeddings=64),
    "base": BertConfig(),
}
SEQ = {"tiny": 16, "base": 128}


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        positions = torch.arange(cfg.max_position_embeddings).unsqueeze(0)  # (1, P)
        self.register_buffer("position_ids", positions, persistent=False)
        self.register_buffer("token_type_ids", torch.zeros_like(positions), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        token_type_ids = self.token_type_ids[:, :T].expand(B, T)  # HF's default: all segment 0
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(self.position_ids[:, :T])  # (B, T, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_size = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_size).permute(0, 2, 1, 3)  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.split_heads(self.query(x))
        k = self.split_heads(self.key(x))
        v = self.split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, nh, T, T)
        scores = scores / math.sqrt(self.head_size)
        scores = scores + mask  # (B, 1, 1, T): 0 where attended, very negative on padding
        probs = self.dropout(F.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v)  # (B, nh, T, hs)
        ctx = ctx.permute(0, 2, 1, 3).contiguous()  # (B, T, nh, hs)
        return ctx.view(ctx.shape[:-2] + (self.num_heads * self.head_size,))  # (B, T, H)


class BertAddNorm(nn.Module):
    """HF's BertSelfOutput / BertOutput: dense, dropout, residual add, LayerNorm."""

    def __init__(self, d_in: int, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertAddNorm(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, HF's "gelu"


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertAddNorm(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x[:, 0]))  # first ([CLS]) token, (B, H)


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)
        for m in self.modules():  # HF's _init_weights; perturb_ then makes biases and norms non-trivial
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        with torch.no_grad():
            self.embeddings.word_embeddings.weight[0].zero_()  # padding_idx

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = self.embeddings.word_embeddings.weight.dtype
        mask = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
        mask = (1.0 - mask) * torch.finfo(dtype).min  # HF's extended attention mask
        h = self.encoder(self.embeddings(input_ids), mask)  # (B, T, H)
        return {"last_hidden_state": h, "pooler_output": self.pooler(h)}


def build(size: str, batch: int, seq: int | None = None):
    cfg = CONFIGS[size]
    seq = check_seq(SEQ[size] if seq is None else seq, cfg.max_position_embeddings, "bert")
    model = perturb_(BertModel(cfg))
    return model, (tokens(batch, seq, cfg.vocab_size), padding_mask(batch, seq))
