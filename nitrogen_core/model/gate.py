"""Gating predictor: per patch, how much would recomputing this patch change eps?

Inputs are cheap and already at hand when a step starts: x_t, the cached eps, and how much
the cached eps changed when it was last refreshed. Stride-2 convs bring the image to the
patch grid; the timestep modulates the features (FiLM); a 1x1 head gives a non-negative
predicted per-patch RMS of (eps_fresh - eps_cached). Cost is well under 1% of the U-Net.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import NitroGenConfig
from .layers import timestep_embedding

GATE_INPUTS = 9   # x_t (3) + eps_cached (3) + eps_delta (3)


class Gate(nn.Module):
    def __init__(self, cfg: NitroGenConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.gate_channels
        n_down = int(math.log2(cfg.patch_size))
        convs, ch = [], GATE_INPUTS
        for _ in range(n_down):
            convs.append(nn.Conv2d(ch, c, 3, stride=2, padding=1))
            ch = c
        self.convs = nn.ModuleList(convs)
        self.film = nn.Linear(c, 2 * c)
        self.head1 = nn.Conv2d(c, c, 1)
        self.head2 = nn.Conv2d(c, 1, 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, eps_cached: torch.Tensor,
                eps_delta: torch.Tensor) -> torch.Tensor:
        """x_t, eps_cached, eps_delta (B, C, H, W); t (B,) -> predicted residual (B, Hp, Wp) >= 0."""
        h = torch.cat([x_t, eps_cached, eps_delta], dim=1)                        # (B, 9, H, W)
        for conv in self.convs:
            h = F.silu(conv(h))                                                   # (B, c, H/2^i, W/2^i)
        t_emb = timestep_embedding(t, self.cfg.gate_channels).to(self.film.weight.dtype)
        scale, shift = self.film(t_emb).chunk(2, dim=1)
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = self.head2(F.silu(self.head1(h)))                                     # (B, 1, Hp, Wp)
        return F.softplus(h[:, 0])

    def macs(self) -> int:
        """MACs per sample of one forward."""
        total, size = 0, self.cfg.image_size
        for conv in self.convs:
            size //= 2
            total += size * size * conv.out_channels * conv.in_channels * 9
        total += self.film.in_features * self.film.out_features
        total += size * size * (self.head1.in_channels * self.head1.out_channels + self.head2.in_channels)
        return total
