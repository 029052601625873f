"""Sparse execution of the U-Net on active blocks (SIGE-style: gather, conv, scatter).

A dense step records every op's output into an activation cache. A sparse step walks the
same network; at each op of a sparse level it gathers the active blocks plus the conv's
halo from the cached inputs, runs the conv "valid" on that small batch, and scatters the
result into the op's cached output. Ops at dense levels (low resolution, attention) run on
the samples that have any active block. Blocks are `config.block_size` image pixels square
at every level, so one block mask (Bm, nb, nb) drives every sparse level.

Approximations, against a dense forward of the same input (measured in tests/test_sparse.py
and by `bench_sparse`):
- Inactive positions keep the activations of the last time they were computed, and an
  active block's halo reads them as they are (the core approximation: stale context).
- GroupNorm statistics are taken over the current cached tensor, i.e. fresh values in
  active blocks and stale values elsewhere. With every block active this is exact.
- The cache is tied to one width; a width change forces a dense step.

Every cached tensor is stored channels-last with a one-pixel zero border, so a window is a
gather of contiguous pixel rows and 3x3 windows at the image edge need no padded copies.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ._kernels import load_kernels
from .executor import Executor, StepCosts
from .model.layers import SlimConv2d, SlimGroupNorm
from .model.ops import DenseOps, MacCounter, Ops, dense_attention, dense_conv
from .model.unet import UNet

BORDER = 1  # zero border around every cached buffer, enough for 3x3 convs


class Padded:
    """A cached activation: channels-last buffer (B, H+2, W+2, C) whose border is zero.

    `sums` holds per-sample, per-channel (sum x, sum x^2) over the inside, float64 (B, C) each,
    once a GroupNorm has asked for them; sparse writes keep them current incrementally, so
    GroupNorm statistics of the current tensor cost O(active area) instead of O(image).
    """

    __slots__ = ("buf", "sums")

    def __init__(self, buf: torch.Tensor):
        self.buf = buf
        self.sums: tuple[torch.Tensor, torch.Tensor] | None = None

    def channel_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sums is None:
            B, Hp, Wp, C = self.buf.shape
            flat = self.buf.view(B, Hp * Wp, C)                 # the zero border adds nothing
            self.sums = (flat.sum(1, dtype=torch.float64), flat.square().sum(1, dtype=torch.float64))
        return self.sums

    def update_sums(self, img: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        """Account for blocks of sample img[i] changing from old[i] to new[i], (n, C, b, b) each."""
        if self.sums is None:
            return
        s1, s2 = self.sums
        s1.index_add_(0, img, (new.sum((2, 3)) - old.sum((2, 3))).double())
        s2.index_add_(0, img, (new.square().sum((2, 3)) - old.square().sum((2, 3))).double())

    def write_rows(self, rows: torch.Tensor, y: torch.Tensor) -> None:
        """Replace samples `rows` (n,) with y (n, C, H, W); their channel sums, if kept, are redone."""
        self.buf[rows, BORDER:-BORDER, BORDER:-BORDER, :] = y.permute(0, 2, 3, 1)
        if self.sums is not None:
            flat = self.buf[rows].flatten(1, 2)                                   # (n, (H+2)(W+2), C)
            self.sums[0][rows] = flat.sum(1, dtype=torch.float64)
            self.sums[1][rows] = flat.square().sum(1, dtype=torch.float64)

    @property
    def nbytes(self) -> int:
        sums = 0 if self.sums is None else sum(s.numel() * s.element_size() for s in self.sums)
        return self.buf.numel() * self.buf.element_size() + sums

    @classmethod
    def wrap(cls, x: torch.Tensor) -> "Padded":
        """From an NCHW tensor (B, C, H, W); one copy, cheap when x is already channels-last."""
        B, C, H, W = x.shape
        buf = x.new_zeros(B, H + 2 * BORDER, W + 2 * BORDER, C)
        buf[:, BORDER:-BORDER, BORDER:-BORDER, :].copy_(x.permute(0, 2, 3, 1))
        return cls(buf)

    @property
    def interior(self) -> torch.Tensor:
        """NCHW view (B, C, H, W) of the buffer's inside."""
        return self.buf[:, BORDER:-BORDER, BORDER:-BORDER, :].permute(0, 3, 1, 2)

    @property
    def channels(self) -> int:
        return self.buf.shape[3]

    @property
    def size(self) -> int:
        return self.buf.shape[1] - 2 * BORDER


@dataclass
class ActivationCache:
    """Every op's last output, in call order, as zero-bordered buffers, for one width."""
    width: float
    outputs: list[Padded]

    def clone(self) -> "ActivationCache":
        """An independent copy (sparse steps update a cache in place)."""
        return ActivationCache(self.width, [Padded(p.buf.clone()) for p in self.outputs])

    @property
    def nbytes(self) -> int:
        """Bytes held: every op's bordered output, plus the GroupNorm channel sums kept so far."""
        return sum(p.nbytes for p in self.outputs)


def dense_forward(unet: UNet, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, width: float,
                  record: bool = True) -> tuple[torch.Tensor, ActivationCache | None, torch.Tensor]:
    """Full forward that also fills the activation cache (unless `record` is False, which saves
    the ~20% cost of copying every activation). Returns (out, cache or None, MACs per sample).

    Each op's output is copied into the cache as the op finishes, so the forward never holds
    every raw output and every cached copy at once."""
    outputs: list[Padded] = []
    ops = DenseOps(x.shape[0], keep=(lambda k, y: outputs.append(Padded.wrap(y))) if record else None)
    with torch.no_grad():
        out = unet(x, t, labels, width, ops)
    return out, (ActivationCache(width, outputs) if record else None), ops.counter.per_sample


def dense_forward_rows(unet: UNet, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                       cache: ActivationCache, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A full forward of some samples at the cache's width, written into their rows of the cache.

    x (n, C, H, W), t (n,), labels (n,) are the samples `rows` (n,) of the cache's batch.
    Returns (out (n, C, H, W), MACs per sample (n,))."""
    ops = DenseOps(x.shape[0], keep=lambda k, y: cache.outputs[k].write_rows(rows, y))
    with torch.no_grad():
        out = unet(x, t, labels, cache.width, ops)
    if ops.ops_run != len(cache.outputs):
        raise RuntimeError(f"dense rows visited {ops.ops_run} ops but the cache holds {len(cache.outputs)}")
    return out, ops.counter.per_sample


def group_affine(norm: SlimGroupNorm, inputs: Sequence[Padded], width: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold GroupNorm statistics of the current (cached) inputs and the width's affine into
    per-sample, per-channel scale and shift, (B, Cin) each, so a gather can apply them."""
    scales, shifts = [], []
    weight, bias = norm.affine_at([p.channels for p in inputs], width)
    for p in inputs:
        s1, s2 = p.channel_sums()                                          # (B, C) each, float64
        B, C = s1.shape
        count = p.size * p.size * norm.group_channels
        mean = s1.view(B, -1, norm.group_channels).sum(2) / count          # (B, G)
        var = (s2.view(B, -1, norm.group_channels).sum(2) / count - mean.square()).clamp(min=0)
        rstd = torch.rsqrt(var + norm.eps)
        mean, rstd = mean.to(p.buf.dtype), rstd.to(p.buf.dtype)
        scales.append(rstd.repeat_interleave(norm.group_channels, dim=1))  # (B, C)
        shifts.append((-mean * rstd).repeat_interleave(norm.group_channels, dim=1))
    scale, shift = torch.cat(scales, 1), torch.cat(shifts, 1)
    return scale * weight, shift * weight + bias


class SparseOps(Ops):
    """Executes one sparse step against an activation cache, updating it in place."""

    def __init__(self, unet: UNet, cache: ActivationCache, block_mask: torch.Tensor):
        cfg = unet.cfg
        self.cfg, self.cache, self.kernels = cfg, cache, load_kernels().backend_for(block_mask.device.type)
        self.next_op = 0
        self.img, self.by, self.bx = block_mask.nonzero(as_tuple=True)     # (n,) each: active blocks
        self.rows = block_mask.flatten(1).any(1).nonzero(as_tuple=True)[0]  # (Ba,) samples with work
        # Every block active: every op's inputs are fresh everywhere, so dense ops give the same
        # result without halo gathers or small convs (the sparse path costs ~1.8x dense here).
        self.all_active = bool(block_mask.all())
        self.counter = MacCounter(block_mask.shape[0], self.rows)

    # -- helpers -------------------------------------------------------------------------
    def _level(self, size: int) -> int:
        return (self.cfg.image_size // size).bit_length() - 1

    def _cached_output(self) -> Padded:
        out = self.cache.outputs[self.next_op]
        self.next_op += 1
        return out

    def _as_padded(self, x) -> Padded:
        return x if isinstance(x, Padded) else Padded.wrap(x)

    # -- Ops interface -------------------------------------------------------------------
    def conv(self, layer: SlimConv2d, inputs, width, *, norm=None, bias=None, residual=None,
             residual_conv=None, upsample=False):
        inputs = [self._as_padded(x) for x in inputs]
        residual = None if residual is None else [self._as_padded(x) for x in residual]
        out = self._cached_output()
        if self._level(out.size) in self.cfg.sparse_levels and not self.all_active:
            self._sparse_conv(out, layer, inputs, width, norm, bias, residual, residual_conv, upsample)
        else:
            self._dense_on_active_samples(out, lambda xs, rs, b: dense_conv(
                layer, xs, width, norm, b, rs, residual_conv, upsample), inputs, residual, bias)
        return out

    def attention(self, block, x, width):
        out = self._cached_output()
        self._dense_on_active_samples(out, lambda xs, rs, b: dense_attention(block, xs[0], width),
                                      [self._as_padded(x)], None, None)
        return out

    def _dense_on_active_samples(self, out: Padded, run, inputs, residual, bias) -> None:
        idx = self.rows
        if len(idx) == 0:
            return
        if len(idx) == out.buf.shape[0]:       # every sample has work: skip the row copies
            xs = [p.interior for p in inputs]
            rs = None if residual is None else [p.interior for p in residual]
            y, macs = run(xs, rs, bias)
            out.interior.copy_(y)
        else:
            xs = [p.interior[idx] for p in inputs]
            rs = None if residual is None else [p.interior[idx] for p in residual]
            y, macs = run(xs, rs, None if bias is None else bias[idx])
            out.interior[idx] = y
        out.sums = None                          # low-resolution: recomputed in full when next needed
        self.counter.add(macs, idx)

    def _sparse_conv(self, out: Padded, layer: SlimConv2d, inputs: list[Padded], width: float,
                     norm: SlimGroupNorm | None, bias: torch.Tensor | None,
                     residual: list[Padded] | None, residual_conv: SlimConv2d | None, upsample: bool) -> None:
        if len(self.img) == 0:
            return
        k = self.kernels
        level = self._level(out.size)
        block = self.cfg.block_size >> level                      # output block edge at this level
        in_active = [p.channels for p in inputs]
        # Where each output block's receptive window starts and how big it is, in input coords.
        if upsample:       # nearest x2 then 3x3: read a (block/2 + 2) low-res window, upsample, crop to block + 2
            size, step, offset = block // 2 + 2, block // 2, 0
        elif layer.stride == 2:
            size, step, offset = 2 * block + 1, 2 * block, 0
        else:
            size, step, offset = block + layer.kernel_size - 1, block, BORDER - layer.padding
        if norm is not None:
            if upsample:
                raise ValueError("norm before an upsampling conv is not supported by the sparse executor")
            scale, shift = group_affine(norm, inputs, width)     # (B, Cin) each
            parts, c0 = [], 0
            for p in inputs:
                c1 = c0 + p.channels
                parts.append(k.gather(p.buf, self.img, self.by, self.bx, size=size, step=step, offset=offset,
                                      scale=scale[:, c0:c1], shift=shift[:, c0:c1], border=BORDER))
                c0 = c1
        else:
            parts = [k.gather(p.buf, self.img, self.by, self.bx, size=size, step=step, offset=offset)
                     for p in inputs]
        x = torch.cat(parts, 1) if len(parts) > 1 else parts[0]  # (n, Cin, size, size)
        if upsample:       # nearest x2 of the low-res window, cropped to the conv's window
            x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, :, 1:-1, 1:-1]  # (n, Cin, block+2, block+2)
        weight, b = layer.params_at(in_active, width)
        y = F.conv2d(x, weight, b, stride=layer.stride)          # (n, Cout, block, block), channels-last
        macs = layer.macs_per_pixel(in_active, width) * block * block
        if bias is not None:
            y = y + bias[self.img][:, :, None, None]
        res = None
        if residual is not None:
            r_parts = [k.gather(p.buf, self.img, self.by, self.bx, size=block, step=block, offset=BORDER)
                       for p in residual]
            res = torch.cat(r_parts, 1) if len(r_parts) > 1 else r_parts[0]   # (n, Cr, block, block)
            if residual_conv is not None:
                r_active = [p.channels for p in residual]
                rw, rb = residual_conv.params_at(r_active, width)
                res = F.conv2d(res, rw, rb)
                macs += residual_conv.macs_per_pixel(r_active, width) * block * block
        if out.sums is not None:                   # a GroupNorm reads this output: keep its sums current
            if res is not None:
                y, res = y + res, None
            old = k.gather(out.buf, self.img, self.by, self.bx, size=block, step=block, offset=BORDER)
            out.update_sums(self.img, old, y)
        k.scatter(out.buf, y, self.img, self.by, self.bx, offset=BORDER, residual=res)   # residual add fused
        self.counter.add(macs, self.img)


def sparse_forward(unet: UNet, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                   cache: ActivationCache, block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute the active blocks. x (Bm, C, H, W); block_mask (Bm, nb, nb) bool.

    Updates `cache` in place and returns (out (Bm, C, H, W), MACs per sample (Bm,)).
    Outside the active blocks, out equals the cached output.
    """
    ops = SparseOps(unet, cache, block_mask)
    with torch.no_grad():
        out = unet(x, t, labels, cache.width, ops)
    if ops.next_op != len(cache.outputs):
        raise RuntimeError(f"sparse step visited {ops.next_op} ops but the cache holds {len(cache.outputs)}")
    return out.interior.clone(), ops.counter.per_sample


class MaskedDenseOps(SparseOps):
    """The dense reference of a sparse step: every sparse-level op runs densely on the current
    cached inputs and only its active blocks are kept. Same semantics as SparseOps, no gathers;
    used by tests to pin the sparse executor down exactly."""

    def _sparse_conv(self, out, layer, inputs, width, norm, bias, residual, residual_conv, upsample):
        xs = [p.interior for p in inputs]
        rs = None if residual is None else [p.interior for p in residual]
        y, _ = dense_conv(layer, xs, width, norm, bias, rs, residual_conv, upsample)   # (B, Cout, H, W)
        block = self.cfg.block_size >> self._level(out.size)
        keep = torch.zeros(out.buf.shape[0], *(2 * [self.cfg.image_size // self.cfg.block_size]), dtype=torch.bool)
        keep[self.img, self.by, self.bx] = True
        keep = keep.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, None]      # (B, 1, H, W)
        out.interior.copy_(torch.where(keep, y, out.interior))
        out.sums = None


def masked_dense_forward(unet: UNet, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                         cache: ActivationCache, block_mask: torch.Tensor) -> torch.Tensor:
    """What `sparse_forward` must return, computed densely. Updates `cache` in place."""
    ops = MaskedDenseOps(unet, cache, block_mask)
    with torch.no_grad():
        out = unet(x, t, labels, cache.width, ops)
    return out.interior.clone()


class UNetExecutor(Executor):
    """The U-Net's executor (see executor.Executor): units are block_size px pixel blocks."""

    # A sparse pass over ~40% of the blocks takes as long as a dense one on the CPU (halos, the
    # dense 8 px level and ~40 small ops), so above a quarter a dense pass is the better buy.
    dense_above = 0.25

    forwards = sys.modules[__name__]


def step_costs(unet: UNet, width: float) -> StepCosts:
    """MACs of a dense step and of n active blocks at `width` (measured once; see Executor.costs)."""
    return UNetExecutor(unet, record=True).costs(width)
