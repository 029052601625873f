"""Gating predictor: per patch, how much would recomputing this patch change eps?

Inputs are cheap and already at hand when a step starts: x_t, the cached eps, how much the
cached eps changed when it was last refreshed and, with config.gate_age, each patch's age (steps
since its eps was computed; 1 = the previous step). Stride-2 convs bring the image to the patch
grid; the timestep modulates the features (FiLM); a 1x1 head gives a non-negative predicted
per-patch RMS of (eps_fresh - eps_skip), eps_skip being what a skip would use. Cost is well under
1% of the U-Net.

Why age: a skipped patch's error grows with its staleness (on the bundled transformer's gate
trajectories, the mean log residual rises ~0.6 per step of age), and nothing else in the inputs
says how stale a patch is. On that model's gate data the age input took the held-out log-RMSE
from 0.521 to 0.308 (Pearson 0.762 -> 0.910). It is opt-in (`train gate --gate-age`), because the
better predictor did not give a better sampler there: the tail rule's default fell from tau 0.005
at 0.659 of the MACs to tau 0.003 at 0.741 (README, How adaptive compute works).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import NitroGenConfig
from .layers import timestep_embedding

GATE_INPUTS = 9   # x_t (3) + eps_cached (3) + eps_delta (3); + 1 age channel with config.gate_age
AGE_SCALE = 4.0   # age enters as age / AGE_SCALE (max_skips is 3 by default: ages 1..4 map to 0.25..1)


class Gate(nn.Module):
    def __init__(self, cfg: NitroGenConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.gate_channels
        n_down = int(math.log2(cfg.patch_size))
        convs, ch = [], GATE_INPUTS + int(cfg.gate_age)
        for _ in range(n_down):
            convs.append(nn.Conv2d(ch, c, 3, stride=2, padding=1))
            ch = c
        self.convs = nn.ModuleList(convs)
        self.film = nn.Linear(c, 2 * c)
        self.head1 = nn.Conv2d(c, c, 1)
        self.head2 = nn.Conv2d(c, 1, 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, eps_cached: torch.Tensor,
                eps_delta: torch.Tensor, age: torch.Tensor | None = None) -> torch.Tensor:
        """x_t, eps_cached, eps_delta (B, C, H, W); t (B,); age (B, Hp, Wp) steps since each patch
        was computed (read only with config.gate_age) -> predicted residual (B, Hp, Wp) >= 0."""
        inputs = [x_t, eps_cached, eps_delta]
        if self.cfg.gate_age:
            if age is None:
                raise ValueError("this gate reads each patch's age (config.gate_age); pass age (B, Hp, Wp)")
            p = self.cfg.patch_size
            age_px = age.to(x_t.dtype).repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]   # (B, 1, H, W)
            inputs.append(age_px / AGE_SCALE)
        h = torch.cat(inputs, dim=1)                                              # (B, 9 or 10, H, W)
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
