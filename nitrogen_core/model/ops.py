"""Execution back-ends for the U-Net's layer calls, and MAC accounting.

The U-Net's forward is written once against the small `Ops` interface below. `DenseOps`
runs every op on the whole tensor (the reference, and the training path); the sparse
executor in `nitrogen_core/sparse.py` implements the same interface with gather/conv/scatter
on active blocks. Every executed conv, linear and attention op adds its MACs here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .layers import SlimConv2d, SlimGroupNorm


class MacCounter:
    """Per-sample multiply-accumulate counts, (Bm,) int64, where Bm is the model batch.

    `rows` are the samples being executed (None: all); a per-sample op is charged to them.
    """

    def __init__(self, batch: int, rows: torch.Tensor | None = None):
        self.per_sample = torch.zeros(batch, dtype=torch.int64)
        self.rows = None if rows is None else rows.cpu()

    def add(self, macs: int, samples: torch.Tensor | None = None) -> None:
        """Add `macs` to each executing sample, or once per entry of `samples` (repeats add up)."""
        samples = self.rows if samples is None else samples.cpu()
        if samples is None:
            self.per_sample += int(macs)
        else:
            self.per_sample.index_add_(0, samples, torch.full((len(samples),), int(macs), dtype=torch.int64))


def attention_macs(tokens: int, channels: int) -> int:
    """QK^T and AV of one sample's self-attention (the 1x1 projections are counted as convs)."""
    return 2 * tokens * tokens * channels


class Ops:
    """What the U-Net asks of an executor. All tensors are NCHW over the model batch."""

    counter: MacCounter
    rows: torch.Tensor | None = None      # samples this pass executes; None means all

    def per_row(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        """fn over the executing rows only; other rows of the result are zero (they are never read)."""
        if self.rows is None:
            return fn(*tensors)
        y = fn(*(x[self.rows] for x in tensors))
        return y.new_zeros((tensors[0].shape[0], *y.shape[1:])).index_copy_(0, self.rows, y)

    def conv(self, layer: SlimConv2d, inputs: Sequence[torch.Tensor], width: float, *,
             norm: SlimGroupNorm | None = None, bias: torch.Tensor | None = None,
             residual: Sequence[torch.Tensor] | None = None, residual_conv: SlimConv2d | None = None,
             upsample: bool = False) -> torch.Tensor:
        """y = conv(silu(norm(up(cat(inputs))))) + bias[:, :, None, None] + skip(cat(residual))."""
        raise NotImplementedError

    def attention(self, block, x: torch.Tensor, width: float) -> torch.Tensor:
        raise NotImplementedError


def dense_conv(layer: SlimConv2d, inputs: Sequence[torch.Tensor], width: float, norm: SlimGroupNorm | None,
               bias: torch.Tensor | None, residual: Sequence[torch.Tensor] | None,
               residual_conv: SlimConv2d | None, upsample: bool) -> tuple[torch.Tensor, int]:
    """The reference semantics of `Ops.conv`. Returns (output, MACs per sample)."""
    in_active = [t.shape[1] for t in inputs]
    x = torch.cat(list(inputs), dim=1) if len(inputs) > 1 else inputs[0]        # (B, Cin, H, W)
    if upsample:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
    if norm is not None:
        x = F.silu(norm(x, in_active, width))
    weight, b = layer.params_at(in_active, width)
    y = F.conv2d(x, weight, b, layer.stride, layer.padding)                    # (B, Cout, H', W')
    macs = layer.macs_per_pixel(in_active, width) * y.shape[2] * y.shape[3]
    if bias is not None:
        y = y + bias[:, :, None, None]
    if residual is not None:
        r = torch.cat(list(residual), dim=1) if len(residual) > 1 else residual[0]
        if residual_conv is not None:
            r_active = [t.shape[1] for t in residual]
            rw, rb = residual_conv.params_at(r_active, width)
            r = F.conv2d(r, rw, rb)
            macs += residual_conv.macs_per_pixel(r_active, width) * r.shape[2] * r.shape[3]
        y = y + r
    return y, macs


def dense_attention(block, x: torch.Tensor, width: float) -> tuple[torch.Tensor, int]:
    """Multi-head self-attention over all pixels, pre-norm, residual. Returns (output, MACs per sample)."""
    B, C, H, W = x.shape
    h = block.norm(x, [C], width)
    qkv_w, qkv_b = block.qkv.params_at([C], width)
    qkv = F.conv2d(h, qkv_w, qkv_b)                                            # (B, 3C, H, W)
    heads = max(1, C // block.head_channels)
    q, k, v = qkv.reshape(B, 3, heads, C // heads, H * W).permute(1, 0, 2, 4, 3)  # each (B, heads, HW, C/heads)
    a = F.scaled_dot_product_attention(q, k, v)                                # (B, heads, HW, C/heads)
    a = a.permute(0, 1, 3, 2).reshape(B, C, H, W)
    proj_w, proj_b = block.proj.params_at([C], width)
    y = x + F.conv2d(a, proj_w, proj_b)
    macs = (block.qkv.macs_per_pixel([C], width) + block.proj.macs_per_pixel([C], width)) * H * W
    return y, macs + attention_macs(H * W, C)


class DenseOps(Ops):
    """Runs every op on the full tensor. `keep(k, y)`, if given, is called with every op's index
    (in call order) and output, so that a sparse step can later update them in place (the
    activation cache); it is called as each op finishes, so the cache can copy the output while
    the forward goes on, instead of the forward holding every output until it ends."""

    def __init__(self, batch: int, keep=None):
        self.counter = MacCounter(batch)
        self.keep = keep
        self.ops_run = 0

    def _keep(self, y: torch.Tensor) -> torch.Tensor:
        if self.keep is not None:
            self.keep(self.ops_run, y)
        self.ops_run += 1
        return y

    def conv(self, layer, inputs, width, *, norm=None, bias=None, residual=None, residual_conv=None, upsample=False):
        y, macs = dense_conv(layer, inputs, width, norm, bias, residual, residual_conv, upsample)
        self.counter.add(macs)
        return self._keep(y)

    def attention(self, block, x, width):
        y, macs = dense_attention(block, x, width)
        self.counter.add(macs)
        return self._keep(y)
