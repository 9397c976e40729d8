"""Swin Transformer (Swin-T at base), mirroring Microsoft's reference swin_transformer.py.

Window attention with a relative position bias table indexed by a buffer, shifted windows by
torch.roll with a precomputed attention mask buffer, window partition/reverse by
view/permute/contiguous, patch merging by strided slicing and cat. Input size is fixed.
With torchvision's swin_t weights renamed, outputs are bitwise equal (torchvision 0.29).
"""
from dataclasses import dataclass

import torch
from torch import nn

from ._common import images, perturb_


@dataclass
class SwinConfig:
    img_size: int = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    num_classes: int = 1000


CONFIGS = {
    "tiny": SwinConfig(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                       window_size=4, num_classes=10),
    "base": SwinConfig(),
}


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)  # (B * nW, ws, ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    B = windows.shape[0] // ((H // ws) * (W // ws))
    x = windows.view(B, H // ws, W // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)  # (B, H, W, C)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        coords = coords.flatten(1)  # (2, ws*ws)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()  # (N, N, 2)
        rel[:, :, 0] += ws - 1  # shift to start from 0
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))  # (N, N)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B_, N, C = x.shape  # (B * nW, ws*ws, C)
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B_, nh, N, hd)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B_, nh, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:  # (nW, N, N): 0 inside a shifted region, -100 across regions
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, num_heads: int, ws: int, shift: int, mlp_ratio: float):
        super().__init__()
        if resolution <= ws:  # one window covers the map: no shifting
            ws, shift = resolution, 0
        self.resolution, self.ws, self.shift = resolution, ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        attn_mask = None
        if shift > 0:  # label the regions that a cyclic shift brings together
            img_mask = torch.zeros((1, resolution, resolution, 1))
            cnt = 0
            for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    img_mask[:, h, w, :] = cnt
                    cnt += 1
            mask_windows = window_partition(img_mask, ws).view(-1, ws * ws)  # (nW, N)
            attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)  # (nW, N, N)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
        self.register_buffer("attn_mask", attn_mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H = W = self.resolution
        B, L, C = x.shape  # (B, H*W, C)
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.ws).view(-1, self.ws * self.ws, C)  # (B*nW, N, C)
        windows = self.attn(windows, self.attn_mask).view(-1, self.ws, self.ws, C)
        x = window_reverse(windows, self.ws, H, W)  # (B, H, W, C)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.view(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, resolution: int, dim: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, self.resolution, self.resolution, C)
        x0, x1 = x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :]  # each (B, H/2, W/2, C)
        x2, x3 = x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1).view(B, -1, 4 * C)  # (B, H/2*W/2, 4C)
        return self.reduction(self.norm(x))  # (B, H/2*W/2, 2C)


class SwinTransformer(nn.Module):
    def __init__(self, cfg: SwinConfig):
        super().__init__()
        dim, res = cfg.embed_dim, cfg.img_size // cfg.patch_size
        self.proj = nn.Conv2d(3, dim, cfg.patch_size, stride=cfg.patch_size)  # patch embedding
        self.patch_norm = nn.LayerNorm(dim)
        stages: list[nn.Module] = []
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            for j in range(depth):
                shift = 0 if j % 2 == 0 else cfg.window_size // 2
                stages.append(SwinBlock(dim, res, heads, cfg.window_size, shift, cfg.mlp_ratio))
            if i < len(cfg.depths) - 1:
                stages.append(PatchMerging(res, dim))
                dim, res = dim * 2, res // 2
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(dim, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, H/p * W/p, C)
        x = self.layers(self.patch_norm(x))
        x = self.norm(x)  # (B, L, C_last)
        x = torch.flatten(self.avgpool(x.transpose(1, 2)), 1)  # (B, C_last)
        return self.head(x)  # (B, num_classes)


def build(size: str, batch: int):
    cfg = CONFIGS[size]
    model = perturb_(SwinTransformer(cfg))
    return model, (images(batch, cfg.img_size),)
