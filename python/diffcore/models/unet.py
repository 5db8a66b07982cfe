"""A small UNet for 8×8 – 32×32 images (DDPM / improved-DDPM layout, Ho et al. 2020; Nichol & Dhariwal 2021).

Layout: ``conv_in`` → per level ``num_res_blocks`` residual blocks (+ self-attention on the levels in
``attention_levels``) and a stride-2 downsampling conv between levels → middle (res, attention, res)
→ the mirror image with skip connections concatenated (``num_res_blocks + 1`` blocks per level,
nearest-neighbour upsampling + conv) → group norm, SiLU, ``conv_out``.

Residual block: ``GN → SiLU → conv3×3 → GN · (1 + scale) + shift → SiLU → dropout → conv3×3`` plus a
1×1 skip when the width changes; ``(scale, shift)`` is a linear map of the condition (time code +
label embedding), i.e. FiLM / AdaGN. The last conv of every residual and attention branch, and
``conv_out``, start at zero, so every block starts as the identity and the network as the zero map.

Level ``i`` works at resolution ``H / 2**i``; ``H`` and ``W`` must be divisible by ``2**(levels − 1)``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from .base import Network
from .embedding import TimeEmbedding

__all__ = ["UNet"]


def _groups(channels: int, groups: int) -> int:
    """The largest group count ≤ ``groups`` that divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, c):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the ``H·W`` positions (residual, zero-initialised output)."""

    def __init__(self, channels: int, groups: int, head_dim: int):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise ValueError(f"head_dim: {head_dim} does not split {channels} channels into whole heads")
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x, c=None):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class UNet(Network):
    """UNet ``net(x, t, labels=None)`` for images ``x: [B, in_channels, H, W]``.

    Args:
        in_channels: image channels; ``out_channels`` defaults to the same.
        channels: width of level 0; level ``i`` has ``channels * channel_mult[i]``.
        channel_mult: one multiplier per level (e.g. ``(1, 2)`` for 8×8, ``(1, 2, 2, 2)`` for 32×32).
        num_res_blocks: residual blocks per level on the way down.
        attention_levels: level indices with self-attention after each block (low resolution, e.g.
            ``(2,)`` = H/4). ``mid_attention``: attention in the middle block.
        head_dim: channels per attention head. groups: group-norm groups (reduced to divide widths).
        dropout: dropout in the residual blocks.
        time_embedding, time_transform, max_freq, emb_dim: as for :class:`~diffcore.models.MLP`
            (``emb_dim`` defaults to ``4 * channels``).
        num_classes: class-conditional with a null label (``null_label == num_classes``) when set.
    """

    name = "unet"

    def __init__(self, in_channels: int = 1, out_channels: Optional[int] = None, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (), mid_attention: bool = True, head_dim: int = 32,
                 groups: int = 8, dropout: float = 0.0, time_embedding: str = "sinusoidal",
                 time_transform: Union[str, Callable] = "identity", emb_dim: Optional[int] = None,
                 max_freq: float = 1000.0, num_classes: Optional[int] = None):
        for name, v in (("in_channels", in_channels), ("channels", channels), ("num_res_blocks", num_res_blocks),
                        ("groups", groups), ("head_dim", head_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult = tuple(channel_mult)
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult: expected a non-empty sequence of positive ints, got {channel_mult!r}")
        attention_levels = tuple(sorted(set(attention_levels)))
        if any(not 0 <= i < len(channel_mult) for i in attention_levels):
            raise ValueError(f"attention_levels: expected level indices in [0, {len(channel_mult)}), "
                             f"got {attention_levels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        emb_dim = 4 * channels if emb_dim is None else emb_dim
        super().__init__(num_classes, emb_dim)
        self.config = {"name": self.name, "in_channels": in_channels, "out_channels": out_channels,
                       "channels": channels, "channel_mult": list(channel_mult), "num_res_blocks": num_res_blocks,
                       "attention_levels": list(attention_levels), "mid_attention": mid_attention,
                       "head_dim": head_dim, "groups": groups, "dropout": dropout, "time_embedding": time_embedding,
                       "time_transform": time_transform if isinstance(time_transform, str) else None,
                       "emb_dim": emb_dim, "max_freq": max_freq, "num_classes": num_classes}
        self.in_channels, self.out_channels, self.levels = in_channels, out_channels, len(channel_mult)
        self.time_embedding = TimeEmbedding(channels if channels % 2 == 0 else channels + 1, time_embedding,
                                            time_transform, max_freq)
        self.time_mlp = nn.Sequential(nn.Linear(self.time_embedding.dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, groups, dropout)

        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blk = nn.ModuleList([res(ch, channels * mult)])
                ch = channels * mult
                if level in attention_levels:
                    blk.append(Attention(ch, groups, head_dim))
                self.down.append(blk)
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = nn.ModuleList([res(ch, ch)] + ([Attention(ch, groups, head_dim)] if mid_attention else [])
                                 + [res(ch, ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for _ in range(num_res_blocks + 1):
                blk = nn.ModuleList([res(ch + skips.pop(), channels * channel_mult[level])])
                ch = channels * channel_mult[level]
                if level in attention_levels:
                    blk.append(Attention(ch, groups, head_dim))
                self.up.append(blk)
            if level != 0:
                self.up.append(nn.ModuleList([_Upsample(ch)]))
        self.norm_out = nn.GroupNorm(_groups(ch, groups), ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected images [B, {self.in_channels}, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        f = 2 ** (self.levels - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x: height and width must be divisible by {f} for {self.levels} levels, "
                             f"got {tuple(x.shape[2:])}")
        B = x.shape[0]
        t = self._times(x, t)
        c = F.silu(self._condition(self.time_mlp(self.time_embedding(t)), labels, B, x.device))
        h = self.conv_in(x)
        hs = [h]
        for blk in self.down:
            h = _apply(blk, h, c)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, c)
        for blk in self.up:
            if isinstance(blk[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = _apply(blk, h, c)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, c=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _apply(blk: nn.ModuleList, h, c):
    for layer in blk:
        h = layer(h, c) if isinstance(layer, (ResBlock, Attention, _Upsample)) else layer(h)
    return h
