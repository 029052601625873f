"""The slimmable U-Net and the gate: shapes, widths, MAC accounting (checked by hand against the
architecture), per-width GroupNorm affines, and the CFG null class."""
from __future__ import annotations

import copy

import pytest
import torch

from nitrogen_core.config import preset
from nitrogen_core.model import DenseOps, Gate, NitroGenModel
from nitrogen_core.model.layers import SlimGroupNorm

B = 2


@pytest.fixture(scope="module")
def inputs(cfg):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    t = torch.tensor([10.0, 700.0])
    labels = torch.tensor([0, 2])
    return x, t, labels


def run(unet, x, t, labels, width, record=False):
    outputs = []
    ops = DenseOps(x.shape[0], keep=(lambda k, y: outputs.append(y)) if record else None)
    with torch.no_grad():
        out = unet(x, t, labels, width, ops)
    ops.outputs = outputs
    return out, ops


# -- shapes, widths ------------------------------------------------------------------------------

def test_output_shape_every_width(unet, inputs, cfg):
    x, t, labels = inputs
    for w in cfg.widths:
        out, _ = run(unet, x, t, labels, w)
        assert out.shape == x.shape, w
        assert torch.isfinite(out).all(), w
        assert out.abs().max() > 0, f"width {w}: perturbed net should not output 0"


def test_macs_strictly_decrease_with_width(unet, inputs, cfg):
    x, t, labels = inputs
    macs = {}
    for w in cfg.widths:
        _, ops = run(unet, x, t, labels, w)
        per_sample = ops.counter.per_sample
        assert per_sample.shape == (B,)
        assert per_sample[0] == per_sample[1] > 0          # a dense forward costs every sample the same
        macs[w] = int(per_sample[0])
    ws = sorted(cfg.widths)
    for narrow, wide in zip(ws, ws[1:]):
        assert macs[narrow] < macs[wide], macs


def expected_ops(c0: int, c1: int, c2: int, s: int) -> list[tuple[int, int]]:
    """(channels, spatial size) of every recorded op output, in call order, for level channels
    (c0, c1, c2) and image size s (tiny: 3 levels, 1 res block, attention at level 2)."""
    return [
        (c0, s),                                      # conv_in
        (c0, s), (c0, s),                             # enc L0 ResBlock conv1, conv2
        (c0, s // 2),                                 # downsample
        (c1, s // 2), (c1, s // 2),                   # enc L1 ResBlock
        (c1, s // 4),                                 # downsample
        (c2, s // 4), (c2, s // 4), (c2, s // 4),     # enc L2 ResBlock, attention
        (c2, s // 4), (c2, s // 4),                   # mid ResBlock 1
        (c2, s // 4),                                 # mid attention
        (c2, s // 4), (c2, s // 4),                   # mid ResBlock 2
        (c2, s // 4), (c2, s // 4), (c2, s // 4),     # dec L2 ResBlock 1 + attention
        (c2, s // 4), (c2, s // 4), (c2, s // 4),     # dec L2 ResBlock 2 + attention
        (c2, s // 2),                                 # upsample (nearest x2 + 3x3 conv)
        (c1, s // 2), (c1, s // 2),                   # dec L1 ResBlock 1
        (c1, s // 2), (c1, s // 2),                   # dec L1 ResBlock 2
        (c1, s),                                      # upsample
        (c0, s), (c0, s),                             # dec L0 ResBlock 1
        (c0, s), (c0, s),                             # dec L0 ResBlock 2
        (3, s),                                       # conv_out: never slimmed
    ]


def test_narrow_forward_uses_fewer_channels(unet, inputs, cfg):
    x, t, labels = inputs
    for w in cfg.widths:
        _, ops = run(unet, x, t, labels, w, record=True)
        got = [(y.shape[1], y.shape[2]) for y in ops.outputs]
        c0, c1, c2 = (cfg.channels_at(cfg.base_channels * m, w) for m in cfg.channel_mult)
        assert got == expected_ops(c0, c1, c2, cfg.image_size), w
        assert all(y.shape[0] == B and y.shape[2] == y.shape[3] for y in ops.outputs)
    # tiny: base 16, mult (1, 1, 2), groups of 4 channels
    assert [cfg.channels_at(16, w) for w in (0.25, 0.5, 0.75, 1.0)] == [4, 8, 12, 16]
    assert [cfg.channels_at(32, w) for w in (0.25, 0.5, 0.75, 1.0)] == [8, 16, 24, 32]


# -- MACs by hand ------------------------------------------------------------------------------

def conv_macs(hw: int, c_out: int, c_in: int, k: int) -> int:
    return hw * hw * c_out * c_in * k * k


def resblock_macs(hw: int, c_in: int, c_out: int, emb: int, skip_conv: bool) -> int:
    return (emb * c_out                              # emb projection (linear emb -> Cout)
            + conv_macs(hw, c_out, c_in, 3)          # GN-SiLU-conv1
            + conv_macs(hw, c_out, c_out, 3)         # GN-SiLU-conv2
            + (conv_macs(hw, c_out, c_in, 1) if skip_conv else 0))   # 1x1 skip (Cin != Cout or concat)


def attn_macs(hw: int, c: int) -> int:
    n = hw * hw
    return (conv_macs(hw, 3 * c, c, 1)               # qkv 1x1
            + conv_macs(hw, c, c, 1)                 # proj 1x1
            + 2 * n * n * c)                         # QK^T and AV


def tiny_unet_macs(c0: int, c1: int, c2: int) -> int:
    """Hand count for `tiny` (16 px, base 16, emb 64, mult (1, 1, 2), 1 res block, attention at
    level 2) with active level channels (c0, c1, c2). GroupNorm, SiLU, adds and the class-embedding
    lookup are not MACs. The skip-conv structure is fixed by the full-width channels (16, 16, 32)."""
    s, emb, base = 16, 64, 16
    total = base * emb + emb * emb                               # time MLP: base->emb, emb->emb
    total += conv_macs(s, c0, 3, 3)                              # conv_in 3 -> c0 @16
    # encoder
    total += resblock_macs(s, c0, c0, emb, skip_conv=False)      # L0 @16: 16 -> 16 full, identity skip
    total += conv_macs(s // 2, c0, c0, 3)                        # downsample stride 2 -> @8
    total += resblock_macs(s // 2, c0, c1, emb, skip_conv=False)  # L1 @8: 16 -> 16 full, identity skip
    total += conv_macs(s // 4, c1, c1, 3)                        # downsample stride 2 -> @4
    total += resblock_macs(s // 4, c1, c2, emb, skip_conv=True)  # L2 @4: 16 -> 32, 1x1 skip
    total += attn_macs(s // 4, c2)                               # L2 attention
    # middle @4
    total += resblock_macs(s // 4, c2, c2, emb, skip_conv=False)
    total += attn_macs(s // 4, c2)
    total += resblock_macs(s // 4, c2, c2, emb, skip_conv=False)
    # decoder: input = cat(h, skip), popped from the encoder in reverse; always a 1x1 skip conv
    total += resblock_macs(s // 4, c2 + c2, c2, emb, skip_conv=True)   # L2: h(c2) + enc L2 res (c2)
    total += attn_macs(s // 4, c2)
    total += resblock_macs(s // 4, c2 + c1, c2, emb, skip_conv=True)   # L2: h(c2) + downsample@4 (c1)
    total += attn_macs(s // 4, c2)
    total += conv_macs(s // 2, c2, c2, 3)                              # upsample: nearest x2, 3x3 @8
    total += resblock_macs(s // 2, c2 + c1, c1, emb, skip_conv=True)   # L1: h(c2) + enc L1 res (c1)
    total += resblock_macs(s // 2, c1 + c0, c1, emb, skip_conv=True)   # L1: h(c1) + downsample@8 (c0)
    total += conv_macs(s, c1, c1, 3)                                   # upsample: nearest x2, 3x3 @16
    total += resblock_macs(s, c1 + c0, c0, emb, skip_conv=True)        # L0: h(c1) + enc L0 res (c0)
    total += resblock_macs(s, c0 + c0, c0, emb, skip_conv=True)        # L0: h(c0) + conv_in (c0)
    total += conv_macs(s, 3, c0, 3)                                    # GN-SiLU-conv_out c0 -> 3, unslimmed
    return total


@pytest.mark.parametrize("width, channels", [(1.0, (16, 16, 32)), (0.5, (8, 8, 16)), (0.25, (4, 4, 8))])
def test_hand_mac_count_tiny(unet, inputs, cfg, width, channels):
    x, t, labels = inputs
    _, ops = run(unet, x, t, labels, width)
    expected = tiny_unet_macs(*channels)
    assert ops.counter.per_sample.tolist() == [expected] * B


def test_hand_mac_count_tiny_literal():
    # The same count, as a number, so a change in the helper above cannot hide a change in both.
    assert tiny_unet_macs(16, 16, 32) == 10_011_648


def test_gate_macs_by_hand(cfg):
    gate = Gate(cfg)
    # tiny: patch 2 -> one stride-2 3x3 conv 9 -> 8 channels, 16 px -> 8 px (the patch grid)
    conv = 8 * 8 * 8 * 9 * 3 * 3
    film = 8 * 16                       # linear gate_channels -> 2 * gate_channels
    head = 8 * 8 * (8 * 8 + 8 * 1)      # 1x1 head1 (8 -> 8), head2 (8 -> 1) at 8x8
    assert gate.macs() == conv + film + head == 46_208
    # and the gate is tiny next to the U-Net
    assert gate.macs() <= 0.03 * tiny_unet_macs(16, 16, 32)
    out = gate(torch.randn(2, 3, 16, 16), torch.tensor([5.0, 900.0]), torch.randn(2, 3, 16, 16),
               torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 8, 8) and (out >= 0).all()


def test_gate_under_three_percent_emoji32():
    # The design's <= 3% bound, on the shipped preset (one batch-1 forward of emoji32).
    cfg = preset("emoji32")
    torch.manual_seed(0)
    model = NitroGenModel(cfg)
    ops = DenseOps(1)
    with torch.no_grad():
        model.unet(torch.zeros(1, 3, 32, 32), torch.zeros(1), torch.zeros(1, dtype=torch.long), 1.0, ops)
    assert model.gate.macs() <= 0.03 * int(ops.counter.per_sample[0])


# -- per-width GroupNorm affines -----------------------------------------------------------------

def test_groupnorm_affine_is_per_width(unet, inputs, cfg):
    x, t, labels = inputs
    base_full, _ = run(unet, x, t, labels, 1.0)
    base_half, _ = run(unet, x, t, labels, 0.5)
    edited = copy.deepcopy(unet)
    row = cfg.widths.index(0.5)
    norms = [m for m in edited.modules() if isinstance(m, SlimGroupNorm)]
    assert norms
    with torch.no_grad():
        for norm in norms:
            assert norm.weight.shape == (len(cfg.widths), sum(norm.segments))
            norm.weight[row] += 0.5
            norm.bias[row] -= 0.3
    full, _ = run(edited, x, t, labels, 1.0)
    half, _ = run(edited, x, t, labels, 0.5)
    assert torch.equal(full, base_full)                 # the w=1.0 row is untouched
    assert (half - base_half).abs().max() > 1e-3        # the w=0.5 row is used by the w=0.5 forward


def test_unknown_width_rejected(unet, inputs):
    x, t, labels = inputs
    with pytest.raises(ValueError, match="0.3"):
        unet(x, t, labels, 0.3)


# -- classifier-free guidance null class ---------------------------------------------------------

def test_null_class_accepted_and_changes_output(unet, inputs, cfg):
    x, t, _ = inputs
    real = torch.tensor([1, 1])
    null = torch.full((B,), cfg.num_classes)
    out_real, _ = run(unet, x, t, real, 1.0)
    out_null, _ = run(unet, x, t, null, 1.0)
    assert torch.isfinite(out_null).all()
    assert (out_real - out_null).abs().max() > 1e-4
