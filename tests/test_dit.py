"""The transformer backbone (model/dit.py): shapes at every width and resolution, what a width
really runs (MACs by formula and by torch's own FLOP counter), slimming semantics, the TMSA
simplifications, the config's `backbone` field, and checkpoints of either backbone."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from conftest import perturbed
from nitrogen_core.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint, read_header, save_checkpoint
from nitrogen_core.config import NitroGenConfig, preset
from nitrogen_core.errors import NitroGenInputError
from nitrogen_core.model import NitroGenModel
from nitrogen_core.model import dit as dit_module
from nitrogen_core.model.dit import DiT, attend, patchify, token_coords, unpatchify


@pytest.fixture(scope="module")
def dcfg() -> NitroGenConfig:
    return preset("tiny-dit")


@pytest.fixture(scope="module")
def dit(dcfg) -> DiT:
    torch.manual_seed(0)
    return perturbed(DiT(dcfg)).eval()


def inputs(cfg, batch: int, size: int | None = None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = size or cfg.image_size
    x = torch.randn(batch, cfg.in_channels, size, size, generator=gen)
    return x, torch.linspace(10, 990, batch), torch.arange(batch) % (cfg.num_classes + 1)   # null class included


def counted_macs(net, *args) -> int:
    """MACs by torch's FLOP counter (linears, and SDPA through the CPU kernel's entry point)."""
    sdpa_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    mapping = {sdpa_cpu: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        net(*args)
    return counter.get_total_flops() // 2


# -- shapes, resolution, order ----------------------------------------------------------------------

@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("size", [16, 12, 10])            # 10: not whole 4 px units, raster token order
def test_shapes_at_every_width_and_resolution(dit, dcfg, width, size):
    x, t, labels = inputs(dcfg, 3, size)
    out = dit(x, t, labels, width)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_untrained_net_predicts_zero(dcfg):
    x, t, labels = inputs(dcfg, 2)
    assert torch.equal(DiT(dcfg)(x, t, labels), torch.zeros_like(x))     # zero-init head


@pytest.mark.parametrize("g", [1, 2, 4])
def test_patchify_round_trip_and_coordinates(g):
    x = torch.randn(2, 3, 16, 16)
    tokens = patchify(x, 2, g)                                            # (2, 64, 12)
    assert tokens.shape == (2, 64, 12)
    assert torch.equal(unpatchify(tokens, 3, 16, 16, 2, g), x)
    coords = token_coords(16, 16, 2, g).long()                            # (64, 2) row, col
    for n in (0, 5, 17, 63):
        r, c = coords[n].tolist()
        assert torch.equal(tokens[:, n], x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(2, -1))


def test_token_order_changes_no_result(dit, dcfg, monkeypatch):
    """Unit-major order is an execution detail: raster order gives the same prediction."""
    x, t, labels = inputs(dcfg, 2)
    grouped = dit(x, t, labels, 1.0)
    monkeypatch.setattr(dit_module, "unit_group", lambda cfg, h, w: 1)
    torch.testing.assert_close(dit(x, t, labels, 1.0), grouped, atol=1e-5, rtol=0)


# -- MACs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlap", [1, 2])
@pytest.mark.parametrize("g", [1, 2])
def test_overlapping_windows_reassemble_the_image(overlap, g):
    """tokens_in then image_out is the identity: every pixel's blend weights sum to 1, the border
    included, and both ends use the same token order."""
    net = DiT(preset("tiny-dit", dit_overlap=overlap))
    x = torch.randn(2, 3, 16, 16)
    tokens = net.tokens_in(x, g)                                          # (2, 64, 3 k k)
    k = 2 + 2 * overlap
    assert tokens.shape == (2, 64, 3 * k * k)
    assert torch.allclose(net.image_out(tokens, 16, 16, g), x, atol=1e-6)


def test_overlapping_window_reads_the_neighbours():
    """A token's window holds its own pixels in the middle and its neighbours' around them."""
    net = DiT(preset("tiny-dit", dit_overlap=1))
    x = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    tokens = net.tokens_in(x, 1)                                          # raster order with g = 1
    window = tokens[0, 1 * 8 + 1].reshape(3, 4, 4)[0]                     # token (row 1, col 1): px 2-3
    assert torch.equal(window, x[0, 0, 1:5, 1:5])
    corner = tokens[0, 0].reshape(3, 4, 4)[0]                             # token (0, 0): zero padding
    assert torch.equal(corner[0], torch.zeros(4)) and torch.equal(corner[1:, 1:], x[0, 0, :3, :3])


def test_mac_formula_by_hand():
    """One small config, the formula written out. D=32, 4 heads of 8, MLP 64, depth 2, 2 px tokens,
    16 px image: N = 64 tokens, C p p = 12, sincos input dim 32."""
    cfg = preset("tiny-dit")
    net = DiT(cfg)
    D, N, P, depth, hid = 32, 64, 12, 2, 64
    for width, heads in [(1.0, 4), (0.75, 3), (0.5, 2), (0.25, 1)]:
        I, H = 8 * heads, round(width * hid)
        per_sample = (D * D + D * D                    # time MLP
                      + depth * D * 2 * I              # per block: q and v time terms
                      + D * 4 * D                      # shared adaLN: gates + MLP modulation of every block
                      + D * 2 * D)                     # final adaLN
        per_token = (P * D                             # patch embedding
                     + depth * (3 * D * I              # q, k, v
                                + 2 * N * I            # QK^T and AV over all N keys
                                + I * D                # output projection
                                + 2 * D * H)           # MLP
                     + D * P)                          # head
        assert net.sample_macs(width) == per_sample
        assert net.token_macs(width, N) == per_token
        assert net.macs(width, N) == per_sample + N * per_token
    # overlap 1: 4 px windows, C k k = 48 in and out; nothing else changes
    wide = DiT(preset("tiny-dit", dit_overlap=1))
    assert wide.token_macs(1.0, N) == net.token_macs(1.0, N) + 2 * (48 - P) * D


def test_macs_are_what_runs_and_narrower_runs_fewer(dit, dcfg):
    """torch's FLOP counter over a real forward equals the formula, per width; widths are ordered."""
    x, t, labels = inputs(dcfg, 2)
    N = (dcfg.image_size // dcfg.token_size) ** 2
    counted = {}
    for width in dcfg.widths:
        counted[width] = counted_macs(dit, x, t, labels, width)
        assert counted[width] == 2 * dit.macs(width, N), width
    ws = sorted(dcfg.widths)
    assert all(counted[a] < counted[b] for a, b in zip(ws, ws[1:]))
    assert counted[0.25] < 0.4 * counted[1.0]


# -- slimming ----------------------------------------------------------------------------------------

def test_width_uses_first_heads_and_hidden_units_only(dcfg):
    """At width 0.25 (1 of 4 heads, 16 of 64 MLP units) the other heads' and units' weights are unused;
    at width 1.0 they matter."""
    torch.manual_seed(1)
    net = perturbed(DiT(dcfg)).eval()
    x, t, labels = inputs(dcfg, 2)
    before = {w: net(x, t, labels, w) for w in (0.25, 1.0)}
    with torch.no_grad():
        for block in net.blocks:
            hd, inner = block.attn.head_dim, block.attn.heads * block.attn.head_dim
            for part in range(3):                                         # q, k, v rows of heads 2..4
                block.attn.qkv.weight[part * inner + hd:(part + 1) * inner] += 1.0
            block.attn.time.weight[hd:inner] += 1.0
            block.attn.proj.weight[:, hd:] += 1.0
            block.mlp.fc1.weight[16:] += 1.0
            block.mlp.fc2.weight[:, 16:] += 1.0
    assert torch.equal(net(x, t, labels, 0.25), before[0.25])
    assert not torch.allclose(net(x, t, labels, 1.0), before[1.0])


def test_heads_rounding_and_per_width_norms(dcfg):
    attn = DiT(preset("tiny-dit", dit_heads=3, dit_dim=48)).blocks[0].attn
    assert [attn.heads_at(w) for w in (0.25, 0.5, 0.75, 1.0)] == [1, 2, 3, 3]          # ceil(w * heads)
    net = DiT(dcfg)
    assert net.norm_out.weight.shape == (len(dcfg.widths), dcfg.dit_dim)
    with pytest.raises(ValueError, match="width 0.3 is not one of"):
        net(*inputs(dcfg, 1), 0.3)


# -- TMSA's two simplifications ------------------------------------------------------------------------

def test_key_time_term_cancels_and_value_time_term_adds():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 16, generator=gen) for _ in range(3))
    kt, vt = torch.randn(2, 1, 16, generator=gen), torch.randn(2, 1, 16, generator=gen)   # per sample
    base = attend(q, k, v, heads=4)
    torch.testing.assert_close(attend(q, k + kt, v, heads=4), base, atol=1e-5, rtol=0)
    torch.testing.assert_close(attend(q, k, v + vt, heads=4), base + vt, atol=1e-5, rtol=0)


# -- config and model seam -------------------------------------------------------------------------------

def test_backbone_selects_the_network(dcfg):
    m = NitroGenModel(dcfg)
    assert m.net is m.dit and not hasattr(m, "unet")
    assert {k.split(".")[0] for k in m.state_dict()} == {"dit", "gate"}
    u = NitroGenModel(preset("tiny"))
    assert u.net is u.unet and not hasattr(u, "dit")


@pytest.mark.parametrize("overrides, message", [
    (dict(backbone="vit"), "backbone='vit' is not one of"),
    (dict(backbone="dit", token_size=3), "token_size=3 must be >= 1 and divide"),
    (dict(backbone="dit", token_size=8, block_size=4, patch_size=4), "token_size=8"),
    (dict(backbone="dit", dit_dim=30, dit_heads=3), "dit_dim=30 must be a multiple of 4"),
    (dict(backbone="dit", dit_dim=32, dit_heads=3), "dit_dim=32 must be a multiple of 4 .* and of dit_heads=3"),
    (dict(backbone="dit", dit_depth=0), "dit_depth=0"),
])
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        NitroGenConfig(**overrides)


def test_dit_config_ignores_unet_fields():
    """U-Net-only checks do not apply to the transformer (and the reverse)."""
    cfg = NitroGenConfig(backbone="dit", image_size=24, token_size=4, block_size=8, patch_size=8,
                         channel_mult=(1, 2, 2, 2, 2))     # 24 is not divisible by 2**4: U-Net only
    assert cfg.backbone == "dit"
    with pytest.raises(ValueError, match="image_size=24 is not divisible"):
        NitroGenConfig(image_size=24, block_size=8, patch_size=8, channel_mult=(1, 2, 2, 2, 2))


def test_emoji32_dit_preset_fits_the_checkpoint_limit():
    cfg = preset("emoji32-dit")
    m = NitroGenModel(cfg)
    n = sum(p.numel() for p in m.parameters())
    assert cfg.backbone == "dit" and 3e6 <= n and 4 * n <= 16e6          # fp32 checkpoint <= 16 MB


def test_gate_under_three_percent_of_the_emoji32_dit_forward():
    # issue 13: one prediction per unit for <= 3% of a full forward's MACs (dit.macs is pinned to the
    # counted FLOPs of a real forward by test_macs_are_what_runs_and_narrower_runs_fewer)
    cfg = preset("emoji32-dit")
    m = NitroGenModel(cfg)
    tokens = (cfg.image_size // cfg.token_size) ** 2
    assert 0 < m.gate.macs() <= 0.03 * m.dit.macs(1.0, tokens)


# -- checkpoints --------------------------------------------------------------------------------------

def test_dit_checkpoint_round_trip(dit, dcfg, tmp_path):
    model = NitroGenModel(dcfg)
    model.dit.load_state_dict(dit.state_dict())
    path = save_checkpoint(tmp_path / "dit.safetensors", model, kind="student", labels=["a", "b", "c"],
                           width_schedule=(0.5, 1.0))
    head = read_header(path)
    assert head["config"]["backbone"] == "dit" and any(k.startswith("dit.") for k in head["tensors"])
    ck = load_checkpoint(path)
    assert ck.config == dcfg and isinstance(ck.model.net, DiT)
    for (ka, a), (kb, b) in zip(model.state_dict().items(), ck.model.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    x, t, labels = inputs(dcfg, 2)
    assert torch.equal(ck.model.net(x, t, labels, 0.5), dit(x, t, labels, 0.5))


def test_dit_checkpoint_with_wrong_backbone_is_refused(dcfg, tmp_path):
    """A U-Net's tensors under a config that says "dit": a one-line error naming the mismatch."""
    import json
    from safetensors.torch import load_file, save_file
    src = save_checkpoint(tmp_path / "u.safetensors", NitroGenModel(preset("tiny")), kind="student",
                          labels=["a", "b", "c"])
    head = read_header(src)
    meta = {f"nitrogen.{k}": json.dumps(head[k]) for k in ("format", "kind", "labels", "width_schedule", "train")}
    meta["nitrogen.config"] = json.dumps({**head["config"], "backbone": "dit", "token_size": 2,
                                          "dit_dim": 32, "dit_depth": 2, "dit_heads": 4, "dit_mlp_ratio": 2})
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(src)), str(bad), metadata=meta)
    with pytest.raises(NitroGenInputError, match="does not match its config: missing .* tensor") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


def test_bundled_unet_checkpoint_still_loads():
    """Written before the `backbone` key existed: it loads as a U-Net, unchanged."""
    head = read_header(BUNDLED_CHECKPOINT)
    ck = load_checkpoint(BUNDLED_CHECKPOINT)
    assert ck.config.backbone == "unet" and ck.model.net is ck.model.unet
    assert set(ck.model.state_dict()) == set(head["tensors"])
    assert math.isclose(ck.n_params, head["n_elements"])


# -- training: the same two commands train either backbone --------------------------------------------

def test_teacher_and_student_train_a_dit(tmp_path):
    """`train teacher --preset tiny-dit`, then `train student`: a few steps each, a loadable DiT
    student whose weights moved, with a width schedule, a trained gate and a threshold."""
    from conftest import write_disc_dataset
    from nitrogen_core.train.student import StudentSettings, train_student
    from nitrogen_core.train.teacher import TeacherSettings, train_teacher
    data = write_disc_dataset(tmp_path / "data", 4, lambda i: (5 + 2 * i, 8))
    teacher = train_teacher(TeacherSettings(data=str(data), out_dir=str(tmp_path / "t"), preset="tiny-dit", steps=2,
                                            batch=4, warmup=1, sample_every=10_000, save_every=1))
    assert teacher["done"] and isinstance(teacher["net"], DiT)
    t_ck = load_checkpoint(tmp_path / "t" / "teacher.safetensors")
    assert t_ck.config.backbone == "dit" and t_ck.kind == "teacher"
    assert not torch.equal(t_ck.model.dit.head.weight, torch.zeros_like(t_ck.model.dit.head.weight))  # it trained
    result = train_student(StudentSettings(teacher=str(tmp_path / "t" / "teacher.safetensors"), data=str(data),
                                           out_dir=str(tmp_path / "s"), steps=1, batch=4, warmup=1,
                                           sample_every=10_000, gate_trajectories=2, gate_steps=2,
                                           sample_steps=4, tau_images=3))
    s_ck = load_checkpoint(tmp_path / "s" / "student.safetensors")
    assert s_ck.config.backbone == "dit" and s_ck.kind == "student" and isinstance(result["net"], DiT)
    assert len(s_ck.width_schedule) == 4 and "threshold" in s_ck.sampler
    moved = [not torch.equal(a, b) for a, b in zip(s_ck.model.dit.parameters(), t_ck.model.dit.parameters())]
    assert any(moved)
