"""Slimmable primitives: every layer can run on the first w*C of its channels.

Concatenated inputs (the U-Net decoder's `cat(h, skip)`) are described by *segments*:
at width w each segment keeps its own first channels, so weight columns are picked
per segment rather than as one prefix.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ChannelsAt = Callable[[int, float], int]   # (full_channels, width) -> active channels


def segment_index(full_segments: Sequence[int], active_segments: Sequence[int]) -> torch.Tensor | None:
    """Indices of the active channels inside a concatenation of full-width segments.

    Returns None when the active channels are a plain prefix (a cheap slice suffices).
    """
    if len(full_segments) == 1 or tuple(full_segments) == tuple(active_segments):
        return None                              # one segment, or all of them whole: a prefix
    index, offset = [], 0
    for full, active in zip(full_segments, active_segments):
        index.extend(range(offset, offset + active))
        offset += full
    return torch.tensor(index, dtype=torch.long)


class SlimConv2d(nn.Module):
    """Conv whose input and output channels are prefixes (per segment) of the full layer."""

    def __init__(self, in_segments: Sequence[int], out_segments: Sequence[int], kernel_size: int,
                 channels_at: ChannelsAt, stride: int = 1, slim_out: bool = True):
        super().__init__()
        self.in_segments, self.out_segments = tuple(in_segments), tuple(out_segments)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, kernel_size // 2
        self.slim_out, self.channels_at = slim_out, channels_at
        self.weight = nn.Parameter(torch.empty(sum(self.out_segments), sum(self.in_segments), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(sum(self.out_segments)))

    def out_channels_at(self, width: float) -> tuple[int, ...]:
        if not self.slim_out:
            return self.out_segments
        return tuple(self.channels_at(c, width) for c in self.out_segments)

    def params_at(self, in_active: Sequence[int], width: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (Cout_w, Cin_w, k, k) and bias (Cout_w,) for inputs with `in_active` channels per segment."""
        out_active = self.out_channels_at(width)
        w, b = self.weight, self.bias
        out_idx = segment_index(self.out_segments, out_active)
        if out_idx is None:
            n = out_active[0] if len(out_active) == 1 else sum(out_active)
            w, b = w[:n], b[:n]
        else:
            w, b = w.index_select(0, out_idx.to(w.device)), b.index_select(0, out_idx.to(b.device))
        in_idx = segment_index(self.in_segments, in_active)
        n_in = in_active[0] if len(in_active) == 1 else sum(in_active)
        w = w[:, :n_in] if in_idx is None else w.index_select(1, in_idx.to(w.device))
        return w, b

    def macs_per_pixel(self, in_active: Sequence[int], width: float) -> int:
        """Multiply-accumulates per output pixel."""
        return sum(self.out_channels_at(width)) * sum(in_active) * self.kernel_size ** 2


class SlimGroupNorm(nn.Module):
    """GroupNorm with a fixed number of channels per group and separate affine parameters per width.

    Fixed group size means group g sees the same channels at every width, so a narrow
    network's statistics are a prefix of the wide one's. Per-width affine parameters
    (as in slimmable networks' switchable BN) let each width correct its own shift.
    """

    def __init__(self, segments: Sequence[int], group_channels: int, widths: Sequence[float], eps: float = 1e-5):
        super().__init__()
        self.segments, self.group_channels, self.widths, self.eps = tuple(segments), group_channels, tuple(widths), eps
        self.weight = nn.Parameter(torch.ones(len(self.widths), sum(self.segments)))
        self.bias = nn.Parameter(torch.zeros(len(self.widths), sum(self.segments)))

    def affine_at(self, in_active: Sequence[int], width: float) -> tuple[torch.Tensor, torch.Tensor]:
        wi = self.widths.index(width)
        w, b = self.weight[wi], self.bias[wi]
        idx = segment_index(self.segments, in_active)
        if idx is None:
            n = in_active[0] if len(in_active) == 1 else sum(in_active)
            return w[:n], b[:n]
        return w.index_select(0, idx.to(w.device)), b.index_select(0, idx.to(b.device))

    def forward(self, x: torch.Tensor, in_active: Sequence[int], width: float) -> torch.Tensor:
        weight, bias = self.affine_at(in_active, width)
        return F.group_norm(x, x.shape[1] // self.group_channels, weight, bias, self.eps)


class SlimLinear(nn.Module):
    """Linear layer whose output is sliced to the width (its input is the full-width embedding)."""

    def __init__(self, in_features: int, out_features: int, channels_at: ChannelsAt):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.channels_at = channels_at

    def forward(self, x: torch.Tensor, width: float) -> torch.Tensor:
        n = self.channels_at(self.linear.out_features, width)
        return F.linear(x, self.linear.weight[:n], self.linear.bias[:n])


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim). (Vaswani et al. / ADM)"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                                   # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)               # (B, dim)
