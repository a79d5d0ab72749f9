"""Swin-transformer blocks for the TIC backbone: window attention with a relative position bias,
shifted windows, and the residual Swin transformer block (RSTB) that TIC stacks between its
strided convolutions. Feature maps of any size are accepted: they are padded to whole windows,
and windows shrink to the map when the map is smaller than a window."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@lru_cache(maxsize=64)
def _relative_index(window: int, table_window: int) -> Tensor:
    """Index into a (2*table_window-1)^2 bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (table_window - 1)
    return rel[0] * (2 * table_window - 1) + rel[1]


@lru_cache(maxsize=64)
def _shift_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """-inf between positions that a cyclic shift brought together from different image regions
    (made once per shape and device)."""
    regions = torch.zeros(height, width)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            regions[rows, cols] = label
            label += 1
    windows = _partition(regions[None, :, :, None], window).squeeze(-1)
    different = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(different.shape).masked_fill(different, float("-inf")).to(device)


def _partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * windows, window * window, C)"""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def _unpartition(windows: Tensor, window: int, B: int, H: int, W: int) -> Tensor:
    x = windows.view(B, H // window, W // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads = heads
        self.window = window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_bias, std=0.02)

    def forward(self, x: Tensor, window: int, mask: Tensor | None) -> Tensor:
        n_windows, n, C = x.shape
        qkv = self.qkv(x).view(n_windows, n, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = self.relative_bias[_relative_index(window, self.window).to(x.device)].permute(2, 0, 1)
        if mask is not None:
            groups = mask.shape[0]
            bias = bias[None] + mask.to(x.dtype)[:, None]
            bias = bias.repeat(n_windows // groups, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(n_windows, -1, -1, -1), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(n_windows, n, C))


class SwinLayer(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shifted: bool, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C)"""
        B, H, W, C = x.shape
        window = min(self.window, H, W)
        shift = window // 2 if self.shifted and min(H, W) > self.window else 0
        h = self.norm1(x)
        pad_h, pad_w = (-H) % window, (-W) % window
        h = F.pad(h, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        mask = None
        if shift:
            h = torch.roll(h, (-shift, -shift), dims=(1, 2))
            mask = _shift_mask(Hp, Wp, window, shift, x.device)
        h = self.attn(_partition(h, window), window, mask)
        h = _unpartition(h, window, B, Hp, Wp)
        if shift:
            h = torch.roll(h, (shift, shift), dims=(1, 2))
        x = x + h[:, :H, :W]
        return x + self.mlp(self.norm2(x))


class RSTB(nn.Module):
    """Residual Swin transformer block on (B, C, H, W) maps: Swin layers, a 3x3 conv, a skip."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(dim, heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio) for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.permute(0, 2, 3, 1)
        for layer in self.layers:
            h = layer(h)
        return x + self.conv(h.permute(0, 3, 1, 2))
