"""ViT-B/16, mirroring torchvision.models.vision_transformer, with attention written as
F.scaled_dot_product_attention over one fused qkv projection (as timm does) instead of
nn.MultiheadAttention. Same parameters and count (86.6M) as torchvision's vit_b_16; with its weights
renamed, outputs agree to 2e-6 (torchvision 0.29).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._common import images, perturb_


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    num_classes: int = 1000
    dropout: float = 0.0


CONFIGS = {
    "tiny": ViTConfig(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                      mlp_dim=128, num_classes=10),
    "base": ViTConfig(),
}


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, N, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hs)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_dim, eps=1e-6)
        self.self_attention = Attention(cfg.hidden_dim, cfg.num_heads)
        self.dropout = nn.Dropout(cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.hidden_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden_dim, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.mlp_dim, cfg.hidden_dim), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, cfg.hidden_dim, cfg.patch_size, stride=cfg.patch_size)
        seq = (cfg.image_size // cfg.patch_size) ** 2 + 1  # patches + class token
        self.class_token = nn.Parameter(torch.empty(1, 1, cfg.hidden_dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, seq, cfg.hidden_dim))
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))
        self.ln = nn.LayerNorm(cfg.hidden_dim, eps=1e-6)
        self.head = nn.Linear(cfg.hidden_dim, cfg.num_classes)
        fan_in = 3 * cfg.patch_size**2
        nn.init.trunc_normal_(self.conv_proj.weight, std=(1.0 / fan_in) ** 0.5)
        for p in (self.class_token, self.pos_embedding):  # torchvision zeroes the class token
            nn.init.normal_(p, std=0.02)
        for m in self.modules():  # torchvision zeroes the head; random keeps outputs informative
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)  # (B, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding  # (B, N + 1, D)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x)
        x = self.ln(x)
        return self.head(x[:, 0])  # class token -> (B, num_classes)


def build(size: str, batch: int):
    cfg = CONFIGS[size]
    model = perturb_(VisionTransformer(cfg))
    return model, (images(batch, cfg.image_size),)
