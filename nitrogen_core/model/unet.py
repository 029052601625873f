"""Slimmable class-conditional U-Net (ADM-style), written top-down: blocks, then the network.

The forward pass is expressed through an `Ops` executor (see ops.py), so the dense reference,
training, and the sparse executor share one description of the network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import NitroGenConfig
from .layers import SlimConv2d, SlimGroupNorm, SlimLinear, timestep_embedding
from .ops import DenseOps, Ops


class ResBlock(nn.Module):
    """GN-SiLU-conv, + embedding, GN-SiLU-conv, + skip. Inputs may be a concatenation (decoder)."""

    def __init__(self, cfg: NitroGenConfig, in_segments: tuple[int, ...], out_channels: int):
        super().__init__()
        ca = cfg.channels_at
        self.norm1 = SlimGroupNorm(in_segments, cfg.group_channels, cfg.widths)
        self.conv1 = SlimConv2d(in_segments, (out_channels,), 3, ca)
        self.emb_proj = SlimLinear(cfg.emb_channels, out_channels, ca)
        self.norm2 = SlimGroupNorm((out_channels,), cfg.group_channels, cfg.widths)
        self.conv2 = SlimConv2d((out_channels,), (out_channels,), 3, ca)
        needs_skip_conv = len(in_segments) > 1 or in_segments[0] != out_channels
        self.skip = SlimConv2d(in_segments, (out_channels,), 1, ca) if needs_skip_conv else None

    def forward(self, ops: Ops, inputs: list[torch.Tensor], emb: torch.Tensor, width: float) -> torch.Tensor:
        emb_bias = ops.per_row(lambda e: self.emb_proj(F.silu(e), width), emb)     # (B, Cout)
        ops.counter.add(self.emb_proj.linear.in_features * emb_bias.shape[1])
        h = ops.conv(self.conv1, inputs, width, norm=self.norm1, bias=emb_bias)    # (B, Cout, H, W)
        return ops.conv(self.conv2, [h], width, norm=self.norm2, residual=inputs, residual_conv=self.skip)


class AttnBlock(nn.Module):
    """Pre-norm multi-head self-attention over all pixels; heads = channels // head_channels."""

    def __init__(self, cfg: NitroGenConfig, channels: int):
        super().__init__()
        self.head_channels = cfg.head_channels
        self.norm = SlimGroupNorm((channels,), cfg.group_channels, cfg.widths)
        self.qkv = SlimConv2d((channels,), (channels,) * 3, 1, cfg.channels_at)
        self.proj = SlimConv2d((channels,), (channels,), 1, cfg.channels_at)

    def forward(self, ops: Ops, x: torch.Tensor, width: float) -> torch.Tensor:
        return ops.attention(self, x, width)


class UNet(nn.Module):
    """eps/v-prediction U-Net. Level l runs at image_size / 2**l with base*channel_mult[l] channels."""

    def __init__(self, cfg: NitroGenConfig):
        super().__init__()
        self.cfg = cfg
        ca, levels = cfg.channels_at, cfg.level_channels(1.0)
        emb = cfg.emb_channels
        self.time_mlp = nn.Sequential(nn.Linear(cfg.base_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb)           # last index = null class (CFG)
        self.conv_in = SlimConv2d((cfg.in_channels,), (levels[0],), 3, ca)

        # Encoder: remember the channels of every skip the decoder will concatenate.
        self.down = nn.ModuleList()
        skip_channels, ch = [levels[0]], levels[0]
        for lvl, out_ch in enumerate(levels):
            stage = nn.ModuleDict()
            stage["res"] = nn.ModuleList()
            stage["attn"] = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage["res"].append(ResBlock(cfg, (ch,), out_ch))
                stage["attn"].append(AttnBlock(cfg, out_ch) if lvl in cfg.attn_levels else nn.Identity())
                ch = out_ch
                skip_channels.append(ch)
            if lvl < len(levels) - 1:
                stage["downsample"] = SlimConv2d((ch,), (ch,), 3, ca, stride=2)
                skip_channels.append(ch)
            self.down.append(stage)

        self.mid_res1 = ResBlock(cfg, (ch,), ch)
        self.mid_attn = AttnBlock(cfg, ch)
        self.mid_res2 = ResBlock(cfg, (ch,), ch)

        self.up = nn.ModuleList()
        for lvl in reversed(range(len(levels))):
            out_ch = levels[lvl]
            stage = nn.ModuleDict()
            stage["res"] = nn.ModuleList()
            stage["attn"] = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage["res"].append(ResBlock(cfg, (ch, skip_channels.pop()), out_ch))
                stage["attn"].append(AttnBlock(cfg, out_ch) if lvl in cfg.attn_levels else nn.Identity())
                ch = out_ch
            if lvl > 0:
                stage["upsample"] = SlimConv2d((ch,), (ch,), 3, ca)
            self.up.append(stage)

        self.norm_out = SlimGroupNorm((ch,), cfg.group_channels, cfg.widths)
        self.conv_out = SlimConv2d((ch,), (cfg.in_channels,), 3, ca, slim_out=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """All init in one place: Kaiming-uniform convs, zero-init every branch's last conv (ADM)."""
        for m in self.modules():
            if isinstance(m, SlimConv2d):
                nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.weight)
            elif isinstance(m, AttnBlock):
                nn.init.zeros_(m.proj.weight)
        nn.init.zeros_(self.conv_out.weight)

    def embed(self, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps and (B,) labels -> (B, emb). labels == num_classes is the null class."""
        t_emb = timestep_embedding(t, self.cfg.base_channels).to(self.class_emb.weight.dtype)
        return self.time_mlp(t_emb) + self.class_emb(labels)

    def embed_macs(self) -> int:
        return sum(m.in_features * m.out_features for m in self.time_mlp if isinstance(m, nn.Linear))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, width: float = 1.0,
                ops: Ops | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,), labels (B,) -> prediction (B, C, H, W)."""
        if width not in self.cfg.widths:
            raise ValueError(f"width {width} is not one of the model's widths {self.cfg.widths}")
        ops = ops if ops is not None else DenseOps(x.shape[0])
        # Channels-last: ~20% faster convs on CPU (oneDNN), and the sparse cache layout.
        x = x.contiguous(memory_format=torch.channels_last)
        emb = ops.per_row(self.embed, t, labels)                                  # (B, emb)
        ops.counter.add(self.embed_macs())
        h = ops.conv(self.conv_in, [x], width)                                     # (B, C0, H, W)
        skips = [h]
        for stage in self.down:
            for res, attn in zip(stage["res"], stage["attn"]):
                h = res(ops, [h], emb, width)
                if isinstance(attn, AttnBlock):
                    h = attn(ops, h, width)
                skips.append(h)
            if "downsample" in stage:
                h = ops.conv(stage["downsample"], [h], width)                      # (B, C, H/2, W/2)
                skips.append(h)
        h = self.mid_res1(ops, [h], emb, width)
        h = self.mid_attn(ops, h, width)
        h = self.mid_res2(ops, [h], emb, width)
        for stage in self.up:
            for res, attn in zip(stage["res"], stage["attn"]):
                h = res(ops, [h, skips.pop()], emb, width)
                if isinstance(attn, AttnBlock):
                    h = attn(ops, h, width)
            if "upsample" in stage:
                h = ops.conv(stage["upsample"], [h], width, upsample=True)         # (B, C, 2H, 2W)
        return ops.conv(self.conv_out, [h], width, norm=self.norm_out)             # (B, C_in, H, W)
