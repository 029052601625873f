"""The DDIM sampler, full and adaptive: tau = 0 reproduces full, determinism, the compute budget
(whatever the gate says), the compute record, the shared CFG mask, the callback, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import nitrogen_core.sampler as sampler_mod
import nitrogen_core.sparse as sparse_mod
from conftest import perturbed
from nitrogen_core.config import preset
from nitrogen_core.errors import NitroGenInputError
from nitrogen_core.model import NitroGenModel
from nitrogen_core.sampler import SamplerSettings, make_noise, sample
from nitrogen_core.sparse import step_costs

B = 2
STEPS = 6
# With the perturbed tiny model below the gate predicts ~0.5..0.75 everywhere. Times the image
# weight of 6-step sampling (0.74 at step 2, then 0.43, 0.31, 0.28) a threshold of 0.5 makes
# some patches recompute and others skip; test_adaptive_record checks such a mix over 8 steps.
MID = 0.5


@pytest.fixture(scope="module")
def model() -> NitroGenModel:
    torch.manual_seed(0)
    return perturbed(NitroGenModel(preset("tiny"))).eval()


@pytest.fixture(scope="module")
def noise(model) -> torch.Tensor:
    return make_noise(model.config, B, seed=0)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.tensor([0, 2])


def settings(**kw) -> SamplerSettings:
    # dense_above=1.0: partial steps stay sparse, so these tests see the sparse machinery;
    # image_skip=0: no image sits a step out unless a test asks for it
    base = dict(steps=STEPS, cfg=1.0, mode="adaptive", threshold=MID, warmup=2, refresh_every=0,
                max_skips=2, exit_patience=2, dense_above=1.0, image_skip=0.0)
    base.update(kw)
    return SamplerSettings(**base)


def masks(record) -> np.ndarray:
    return np.stack([s.mask for s in record.steps])                  # (S, B, Hp, Wp)


class ConstantGate(nn.Module):
    """Stands in for the gate: predicts `value` for every patch; costs what the real gate costs."""

    def __init__(self, real_gate, value: float):
        super().__init__()
        self.cfg, self.value, self._macs = real_gate.cfg, value, real_gate.macs()
        self.calls = 0

    def forward(self, x_t, t, eps_cached, eps_delta, age=None):
        self.calls += 1
        g = self.cfg.image_size // self.cfg.patch_size
        return torch.full((x_t.shape[0], g, g), self.value)

    def macs(self) -> int:
        return self._macs


# -- threshold 0 == full ------------------------------------------------------------------------

@pytest.mark.parametrize("guidance, schedule", [(1.0, (1.0,)), (2.0, (1.0,)), (2.0, (0.5, 1.0)), (1.0, (0.5, 1.0))])
def test_threshold_zero_reproduces_full(model, noise, labels, guidance, schedule):
    full = sample(model, noise, labels, settings(cfg=guidance, mode="full"), width_schedule=schedule)
    zero = sample(model, noise, labels, settings(cfg=guidance, threshold=0.0), width_schedule=schedule)
    assert (full.images - zero.images).abs().max().item() <= 1e-5
    assert torch.equal(full.images, zero.images)               # designed to be exactly equal
    assert zero.record.widths == full.record.widths
    assert masks(zero.record).all() and all(s.dense.all() for s in zero.record.steps)
    assert np.array_equal(zero.record.macs_used_per_image, full.record.macs_used_per_image)
    assert full.images.shape == noise.shape and torch.isfinite(full.images).all()
    assert full.record.widths == (1.0,) * STEPS                 # full compute ignores the width schedule


@pytest.mark.parametrize("image_skip", [0.0, 100.0])
def test_width_schedule_applies_to_gated_runs(model, noise, labels, image_skip):
    """A width change is one dense pass over the batch: no image may sit it out."""
    rec = sample(model, noise, labels, settings(cfg=2.0, image_skip=image_skip), width_schedule=(0.5, 1.0)).record
    assert rec.widths == (0.5,) * (STEPS // 2) + (1.0,) * (STEPS // 2)
    assert rec.steps[STEPS // 2].dense.all() and rec.steps[STEPS // 2].mask.all()


# -- determinism ------------------------------------------------------------------------------------

def test_deterministic(model, labels):
    s = settings(cfg=2.0)
    a = sample(model, make_noise(model.config, B, 7), labels, s)
    b = sample(model, make_noise(model.config, B, 7), labels, s)
    assert torch.equal(a.images, b.images)
    assert np.array_equal(masks(a.record), masks(b.record))
    assert np.array_equal(a.record.exited_at, b.record.exited_at)
    assert all(np.array_equal(x.macs, y.macs) for x, y in zip(a.record.steps, b.record.steps))
    c = sample(model, make_noise(model.config, B, 8), labels, s)
    assert not torch.equal(a.images, c.images)


def test_make_noise(model):
    a, b = make_noise(model.config, 3, 5), make_noise(model.config, 3, 5)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, make_noise(model.config, 3, 6))


# -- the compute budget -----------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [0.2, 0.35, 0.5, 0.8])
def test_budget_holds_when_gate_wants_everything(model, noise, labels, budget):
    # a threshold far below every prediction, no exits: the gate asks for every patch every step
    s = settings(budget=budget, threshold=1e-4, exit_patience=0, refresh_every=2)
    rec = sample(model, noise, labels, s).record
    limit = math.floor(budget * rec.macs_full)
    assert (rec.macs_used_per_image <= limit).all(), (rec.macs_used_per_image, limit)
    assert rec.macs_used_per_image.min() > 0


@pytest.mark.parametrize("budget, guidance, schedule", [(0.3, 2.0, (1.0,)), (0.4, 2.0, (0.5, 1.0)), (0.2, 1.0, (1.0,))])
def test_budget_holds_with_gate_forced_on(model, noise, labels, monkeypatch, budget, guidance, schedule):
    gate = ConstantGate(model.gate, 1e9)
    monkeypatch.setattr(model, "gate", gate)
    s = settings(steps=8, budget=budget, cfg=guidance, refresh_every=3)
    res = sample(model, noise, labels, s, width_schedule=schedule)
    rec = res.record
    assert gate.calls > 0
    assert (rec.macs_used_per_image <= math.floor(budget * rec.macs_full)).all()
    assert len(rec.steps) == 8
    assert torch.isfinite(res.images).all() and res.images.shape == noise.shape
    assert (rec.exited_at == -1).all()                     # nothing is ever below the threshold


def test_budget_below_one_is_refused_in_full_mode(model, noise, labels):
    # Full mode computes everything by definition; a budget there is a user error, not a silent trim.
    with pytest.raises(NitroGenInputError, match="budget=0.5") as info:
        sample(model, noise, labels, settings(mode="full", budget=0.5))
    assert "\n" not in str(info.value)


def test_budget_below_one_full_width_step_runs_narrower(model, noise, labels):
    """One full-width step is 1/steps of full compute; a budget below it runs every step at the
    widest width whose dense step fits (the slimmable U-Net's cheaper first step), never over."""
    widest_fitting = {w: step_costs(model.unet, w).dense / step_costs(model.unet, 1.0).dense for w in (0.5, 0.75)}
    budget = 0.2                                                  # 4 steps: one full-width step is 0.25
    rec = sample(model, noise, labels, settings(steps=4, budget=budget, threshold=0.0)).record
    cap = max(w for w, share in widest_fitting.items() if share / 4 <= budget)
    assert set(rec.widths) == {cap}
    assert (rec.macs_used_per_image <= math.floor(budget * rec.macs_full)).all()
    assert rec.steps[0].dense.all() and rec.steps[0].mask.all()


def test_budget_below_the_cheapest_step(model, noise, labels):
    least = step_costs(model.unet, min(model.config.widths)).dense / step_costs(model.unet, 1.0).dense / 4
    with pytest.raises(NitroGenInputError, match="budget=0.01 .*cheapest first step .*width 0.25") as info:
        sample(model, noise, labels, settings(steps=4, budget=0.01))
    assert "\n" not in str(info.value)
    assert f"use a budget >= {math.ceil(least * 1000) / 1000}" in str(info.value)


def test_budget_below_one_dense_step_full_mode(model, noise, labels):
    with pytest.raises(NitroGenInputError, match="budget"):
        sample(model, noise, labels, settings(steps=4, budget=0.2, mode="full"))


# -- the compute record --------------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_full_mode_record(model, noise, labels, guidance):
    rec = sample(model, noise, labels, settings(mode="full", cfg=guidance)).record
    halves = 2 if guidance != 1.0 else 1
    assert rec.macs_full == STEPS * step_costs(model.unet, 1.0).dense * halves
    assert (rec.macs_used_per_image == rec.macs_full).all()
    assert rec.mode == "full" and rec.batch == B and len(rec.steps) == STEPS
    assert masks(rec).all() and all(s.dense.all() for s in rec.steps)
    assert masks(rec).shape == (STEPS, B, 8, 8)                # tiny: 16 px / 2 px patches
    assert (rec.exited_at == -1).all()
    ts = [s.timestep for s in rec.steps]
    assert ts == sorted(ts, reverse=True) and ts[0] == 999


def test_adaptive_record(model, noise, labels):
    # 8-step image weights: 0.50 at step 3, then 0.33, 0.25, 0.22, 0.21; remaining 1.5 .. 0.21.
    s = settings(steps=8, warmup=3, cfg=2.0, exit_patience=2, threshold=0.32)
    rec = sample(model, noise, labels, s).record
    m = masks(rec)
    gate_macs = model.gate.macs()
    dense = step_costs(model.unet, 1.0).dense * 2
    assert rec.macs_full == 8 * dense
    # warm-up steps are dense, with every patch, and cost exactly a dense step
    for st in rec.steps[:3]:
        assert st.dense.all() and st.mask.all() and (st.macs == dense).all()
    # a mid threshold gives partial steps, and saves compute
    partial = [st for st in rec.steps if not st.mask.all()]
    assert partial and any(st.mask.any() for st in partial)
    assert all(not st.dense.any() for st in partial)
    assert (rec.macs_used_per_image < rec.macs_full).all()
    # gate steps cost the gate plus the sparse step of their blocks (per_block charged per CFG half)
    costs = step_costs(model.unet, 1.0)
    per_block = (model.config.block_size // model.config.patch_size) ** 2
    for st in rec.steps[3:]:
        n_blocks = st.mask.reshape(B, -1).sum(1) // per_block
        expected = gate_macs + 2 * costs.of(torch.as_tensor(n_blocks)).numpy()
        assert np.array_equal(st.macs, expected), (st.index, st.macs, expected)
    # exits happen, and an exited patch is never recomputed later
    assert (rec.exited_at >= 0).any()
    for k in range(len(rec.steps)):
        later = k > rec.exited_at
        assert not (m[k] & later & (rec.exited_at >= 0)).any()


def test_cfg_halves_share_one_mask(model, noise, labels, monkeypatch):
    seen = []
    real = sparse_mod.sparse_forward
    step_costs(model.unet, 1.0)                  # memoised now, so the spy sees the sampler's calls only

    def spy(unet, x, t, lab, cache, block_mask):
        seen.append(block_mask.clone())
        return real(unet, x, t, lab, cache, block_mask)

    monkeypatch.setattr(sparse_mod, "sparse_forward", spy)
    sample(model, noise, labels, settings(cfg=2.0, exit_patience=0, max_skips=1))
    assert seen
    for mask in seen:
        assert mask.shape[0] == 2 * B
        assert torch.equal(mask[:B], mask[B:])
    assert any(0 < m.float().mean() < 1 for m in seen)


# -- callback --------------------------------------------------------------------------------------

def test_callback_every_step(model, noise, labels):
    calls = []
    sample(model, noise, labels, settings(cfg=2.0), callback=lambda i, n, x0: calls.append((i, n, x0.shape)))
    assert calls == [(i, STEPS, (B, 3, 16, 16)) for i in range(STEPS)]


class Interrupted(Exception):
    """Like ComfyUI's InterruptProcessingException: an ordinary Exception subclass."""


def test_callback_exception_aborts(model, noise, labels):
    calls = []

    def cb(i, n, x0):
        calls.append(i)
        if i == 2:
            raise Interrupted("stop")

    with pytest.raises(Interrupted, match="stop"):
        sample(model, noise, labels, settings(), callback=cb)
    assert calls == [0, 1, 2]


# -- bad input -------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ("steps", 0), ("steps", 1001), ("steps", 2.5),
    ("threshold", -0.1), ("threshold", float("nan")), ("threshold", float("inf")),
    ("budget", 0), ("budget", -1), ("budget", 1.5),
    ("cfg", -1), ("cfg", 100),
    ("mode", "fast"),
    ("warmup", 0), ("warmup", -2), ("refresh_every", -1), ("max_skips", -1), ("exit_patience", -1),
    ("steps", True), ("dense_above", -0.1), ("dense_above", 1.5), ("dense_above", float("nan")),
    ("width", 0), ("width", 1.5), ("mode", "slim"), ("image_skip", -0.5), ("image_skip", float("nan")),
    ("forecast", -0.5), ("forecast", 1.5), ("forecast", float("nan")), ("forecast", "1"),
    ("kv_forecast", -0.5), ("kv_forecast", 2.0), ("kv_forecast", float("inf")),
    ("accumulate", -0.1), ("accumulate", 1.5), ("accumulate", float("nan")),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_bad_settings(model, noise, labels, name, value):
    with pytest.raises(NitroGenInputError) as info:
        sample(model, noise, labels, settings(**{name: value}))
    msg = str(info.value)
    assert name in msg and str(value) in msg, msg
    assert "\n" not in msg


def test_warmup_longer_than_steps_is_all_dense(model, noise, labels):
    # warmup > steps is allowed (sampler.py: "all of them if steps <= warmup"): every step is dense
    rec = sample(model, noise, labels, settings(warmup=STEPS + 1, threshold=10.0)).record
    assert all(s.dense.all() for s in rec.steps) and masks(rec).all()
    assert (rec.macs_used_per_image == rec.macs_full).all()


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0], [0, 1, 2]], ids=["too-big", "negative", "wrong-length"])
def test_bad_labels(model, noise, bad):
    with pytest.raises(NitroGenInputError, match="labels") as info:
        sample(model, noise, torch.tensor(bad), settings())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(B, 3, 8, 8), (B, 1, 16, 16), (B, 3, 16, 32)])
def test_bad_noise_shape(model, labels, shape):
    with pytest.raises(NitroGenInputError, match="noise shape") as info:
        sample(model, torch.zeros(shape), labels, settings())
    assert str(shape) in str(info.value)


@pytest.mark.parametrize("schedule", [(0.3,), (0.5, 0.6), ()])
def test_bad_width_schedule(model, noise, labels, schedule):
    with pytest.raises(NitroGenInputError, match="width schedule"):
        sample(model, noise, labels, settings(), width_schedule=schedule)


def test_empty_batch(model):
    with pytest.raises(NitroGenInputError, match="batch 0"):
        sample(model, make_noise(model.config, 0, 0), torch.zeros(0, dtype=torch.long), settings())


@pytest.mark.parametrize("bad", [[0.0, 1.0], [0.5, 1.0], [True, False]], ids=["float", "fractional", "bool"])
def test_non_integer_labels(model, noise, bad):
    with pytest.raises(NitroGenInputError, match="labels"):
        sample(model, noise, torch.tensor(bad), settings())


def test_threshold_zero_with_budget_trims_without_gate(model, noise, labels):
    # No gate runs at threshold 0, so a budget below 1 is met by trimming the stalest blocks.
    rec = sample(model, noise, labels, settings(threshold=0.0, budget=0.5)).record
    assert (rec.macs_used_per_image <= math.floor(0.5 * rec.macs_full)).all()
    assert any(not step.dense.any() for step in rec.steps)


class LeftHalfGate(ConstantGate):
    """Predicts a huge residual on the left half of the patch grid and none on the right."""

    def forward(self, x_t, t, eps_cached, eps_delta, age=None):
        self.calls += 1
        g = self.cfg.image_size // self.cfg.patch_size
        r = torch.zeros(x_t.shape[0], g, g)
        r[:, :, : g // 2] = self.value
        return r


@pytest.mark.parametrize("dense_above, expect_dense", [(0.4, True), (0.5, False), (1.0, False),
                                                       (None, True)])   # None: the U-Net's 0.25
def test_crowded_step_runs_dense(model, noise, labels, monkeypatch, dense_above, expect_dense):
    """Half the blocks wanted: above dense_above the step runs dense and refreshes every block."""
    monkeypatch.setattr(model, "gate", LeftHalfGate(model.gate, 1e9))
    rec = sample(model, noise, labels, settings(steps=4, warmup=2, exit_patience=0, max_skips=10,
                                                dense_above=dense_above)).record
    dense, gate = step_costs(model.unet, 1.0).dense, model.gate.macs()
    first, last = rec.steps[2], rec.steps[3]
    half = first.mask.shape[2] // 2
    assert (first.dense == expect_dense).all()
    if expect_dense:
        assert first.mask.all() and (first.macs == dense + gate).all()
    else:
        assert first.mask[:, :, :half].all() and not first.mask[:, :, half:].any()
        assert (first.macs < dense).all()
    # the last step can never afford a dense pass plus the gate within budget 1.0: it stays sparse
    assert not last.dense.any() and (rec.macs_used_per_image <= rec.macs_full).all()


def test_default_dense_above_is_the_backbones():
    """Unset, dense_above is the executor's break-even: a quarter of the U-Net's blocks, nine
    tenths of the transformer's tokens (a skipped token costs nothing)."""
    assert SamplerSettings().dense_above is None
    assert NitroGenModel(preset("tiny")).executor(record=True).dense_above == 0.25
    assert NitroGenModel(preset("tiny-dit")).executor(record=True).dense_above == 0.9


def test_dense_step_revives_retired_blocks(model, noise, labels, monkeypatch):
    """A dense step computes retired blocks anyway, so they take its fresh eps and come back;
    the next gate call retires them again. exited_at is the final retirement."""
    monkeypatch.setattr(model, "gate", LeftHalfGate(model.gate, 1e9))     # right half settles and exits
    steps = 6
    rec = sample(model, noise, labels, settings(steps=steps, warmup=2, exit_patience=1, dense_above=0.0)).record
    half = rec.steps[2].mask.shape[2] // 2
    dense, gate = step_costs(model.unet, 1.0).dense, model.gate.macs()
    # steps 2..4 want only the left half, which is crowded for dense_above 0: dense, every block computed
    for st in rec.steps[2:steps - 1]:
        assert st.dense.all() and st.mask.all() and (st.macs == dense + gate).all()
    # the last step cannot afford a dense pass within budget 1.0: it runs sparse, and the right
    # half retires there for good
    last = rec.steps[-1]
    assert not last.dense.any() and last.mask[:, :, :half].all() and not last.mask[:, :, half:].any()
    assert (rec.exited_at[:, :, half:] == steps - 1).all() and (rec.exited_at[:, :, :half] == -1).all()


# -- baselines: step caching and slim width ----------------------------------------------------------

@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_cache_mode_threshold_zero_is_full(model, noise, labels, guidance):
    full = sample(model, noise, labels, settings(cfg=guidance, mode="full"))
    cached = sample(model, noise, labels, settings(cfg=guidance, mode="cache", threshold=0.0))
    assert torch.equal(full.images, cached.images)
    assert cached.record.macs_used == full.record.macs_full


def test_cache_mode_skips_whole_steps_per_image(model, noise, labels):
    s = settings(steps=8, cfg=2.0, mode="cache", threshold=100.0, warmup=2, max_skips=2)
    rec = sample(model, noise, labels, s).record
    m = masks(rec)                                                       # (S, B, Hp, Wp)
    per_image = m.reshape(8, B, -1)
    assert (per_image.all(2) | ~per_image.any(2)).all()                  # a step is all or nothing per image
    computed = per_image.all(2)                                          # (S, B)
    assert computed[:2].all()                                            # warm-up
    # tau huge: skip as long as allowed, so runs of exactly max_skips skips between computes
    assert computed[:, 0].tolist() == [True, True, False, False, True, False, False, True]
    dense = step_costs(model.unet, 1.0).dense * 2
    assert (rec.macs_used_per_image == 4 * dense).all()
    full = sample(model, noise, labels, settings(steps=8, cfg=2.0, mode="full")).images
    assert (sample(model, noise, labels, s).images - full).abs().max() > 0   # skipping changed the image


def test_slim_width_runs_every_step_at_that_width(model, noise, labels):
    rec = sample(model, noise, labels, settings(mode="full", width=0.5)).record
    assert list(rec.widths) == [0.5] * STEPS
    assert rec.macs_used == step_costs(model.unet, 0.5).dense * STEPS < rec.macs_full
    with pytest.raises(NitroGenInputError, match=r"width=0.3 is not one of the model's widths"):
        sample(model, noise, labels, settings(mode="full", width=0.3))


# -- whole images sitting a step out (step caching's rule inside the adaptive sampler) -----------------

def test_image_drift_follows_step_cachings_rule():
    d = sampler_mod.ImageDrift(2)
    tau, weight = 1.0, 0.5
    assert not d.skippable(0, weight, tau, max_skips=3).any()                 # no rate measured yet: never
    measured, none = torch.tensor([True, True]), torch.tensor([False, False])
    d.update(0, weight, none, measured, torch.tensor([9.0, 9.0]))             # first measurement: no rate yet
    assert torch.isinf(d.rate).all()
    d.update(2, weight, none, measured, torch.tensor([0.8, 8.0]))             # 2 steps apart: rate 0.4 and 4.0
    assert torch.allclose(d.rate, torch.tensor([0.4, 4.0]))
    # one step after the last measurement: predicted 0.4 * 1 * 0.5 = 0.2 < 1, and 2.0 >= 1
    assert d.skippable(3, weight, tau, max_skips=3).tolist() == [True, False]
    d.update(3, weight, torch.tensor([True, False]), torch.tensor([False, True]), torch.tensor([0.0, 4.0]))
    assert d.drift[0].item() == pytest.approx(0.2) and d.skips.tolist() == [1, 0]
    # the run accumulates: 0.2 + 0.4 * 2 * 0.5 = 0.6 < 1 at step 4; then 0.6 + 0.4 * 3 * 0.5 = 1.2 >= 1
    assert d.skippable(4, weight, tau, max_skips=3)[0]
    d.update(4, weight, torch.tensor([True, False]), torch.tensor([False, True]), torch.tensor([0.0, 4.0]))
    assert not d.skippable(5, weight, tau, max_skips=3)[0]
    assert not d.skippable(5, weight, 100.0, max_skips=2)[0]                 # the cap on skips in a row


def test_images_sit_out_whole_steps_at_no_cost(model, noise, labels, monkeypatch):
    """With a generous image_skip, images sit steps out: no block, no gate, zero MACs that step,
    at most max_skips in a row; the result stays deterministic and within budget."""
    monkeypatch.setattr(model, "gate", ConstantGate(model.gate, 1e9))       # the gate would recompute everything
    s = settings(steps=10, warmup=2, image_skip=100.0, max_skips=2, exit_patience=0)
    rec = sample(model, noise, labels, s).record
    sat_out = [(st.index, b) for st in rec.steps for b in range(B) if not st.mask[b].any()]
    assert sat_out and all(i >= 2 for i, _ in sat_out)
    for i, b in sat_out:
        assert rec.steps[i].macs[b] == 0                                      # not even the gate
    run = np.zeros(B, dtype=int)
    for st in rec.steps:
        run = np.where(st.mask.reshape(B, -1).any(1), 0, run + 1)
        assert (run <= 2).all()
    again = sample(model, noise, labels, s)
    assert np.array_equal(masks(again.record), masks(rec))
    # image_skip 0: the same gate recomputes every image at every step
    never = sample(model, noise, labels, settings(steps=10, warmup=2, image_skip=0.0, exit_patience=0)).record
    assert all(st.mask.reshape(B, -1).any(1).all() for st in never.steps)


def test_a_dense_step_with_images_sitting_out_computes_the_others_whole(model, noise, labels, monkeypatch):
    """refresh_every=1 makes every step dense-due. Image 0 sits out the even steps (no compute);
    image 1 is computed whole by a dense forward every step, whatever image 0 does."""
    monkeypatch.setattr(sampler_mod.ImageDrift, "skippable",
                        lambda self, step, weight, tau, max_skips: torch.tensor([step % 2 == 0, False]))
    rec = sample(model, noise, labels, settings(steps=8, warmup=2, refresh_every=1, image_skip=1.0,
                                                exit_patience=0)).record
    for st in rec.steps[2:]:
        image0, image1 = st.mask.reshape(B, -1)
        if st.index % 2 == 0:
            assert st.dense.tolist() == [False, True] and not image0.any() and image1.all() and st.macs[0] == 0
        else:
            assert st.dense.all() and st.mask.all()


# -- batch invariance: an image's result depends on its own noise, label and settings only ---------

def _per_image(record, b: int) -> dict:
    """Everything the compute record says about image b."""
    return {"mask": np.stack([s.mask[b] for s in record.steps]), "macs": [int(s.macs[b]) for s in record.steps],
            "dense": [bool(s.dense[b]) for s in record.steps], "widths": record.widths,
            "exited_at": record.exited_at[b]}


class PatchNormGate(ConstantGate):
    """Predicts each patch's RMS of x_t: differs between images and patches, deterministically, so
    images in one batch get different decisions (the tiny model's own gate predicts ~0.6 everywhere)."""

    def forward(self, x_t, t, eps_cached, eps_delta, age=None):
        p = self.cfg.patch_size
        return torch.nn.functional.avg_pool2d(x_t.float().square().mean(1, keepdim=True), p)[:, 0].sqrt()


@pytest.mark.parametrize("mode, threshold, budget, schedule, image_skip, dense_above, varied", [
    ("full", 0.0, 1.0, (1.0,), 0.0, 0.25, False),
    ("cache", 0.03, 1.0, (1.0,), 0.0, 0.25, False),
    ("adaptive", 0.0, 0.6, (1.0,), 0.0, 0.25, False),       # budget trims blocks
    ("adaptive", 0.3, 1.0, (1.0,), 0.02, 0.1, True),        # some images want > dense_above, others fewer
    ("adaptive", 0.4, 1.0, (0.5, 1.0), 0.02, 0.25, False),  # a width change
    ("adaptive", 0.5, 0.55, (1.0,), 0.02, 0.1, True),       # budget and gate together
    ("adaptive", 0.5, 1.0, (1.0,), 0.1, 0.25, False),       # whole images sit steps out
    ("cache+forecast", 0.03, 1.0, (1.0,), 0.0, 0.25, False),
    ("adaptive+forecast", 0.5, 0.55, (1.0,), 0.02, 0.1, True),
    ("adaptive+forecast+accumulate", 0.5, 0.55, (1.0,), 0.02, 0.1, True),
])
def test_images_do_not_depend_on_their_batch_mates(model, monkeypatch, mode, threshold, budget, schedule,
                                                   image_skip, dense_above, varied):
    """One batch of 6, two of 3 and six singles give the same images and the same compute record
    per image. The rules that used to look at the whole batch are on: dense_above (a crowded
    batch ran dense), whole-image sit-outs, exits, budgets that trim, width changes."""
    n = 6
    monkeypatch.setattr(model, "gate", PatchNormGate(model.gate, 0.0))
    noise = make_noise(model.config, n, seed=11)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mode, *extras = mode.split("+")
    st = SamplerSettings(steps=8, cfg=2.0, mode=mode, threshold=threshold, budget=budget, warmup=2,
                         refresh_every=3, max_skips=2, exit_patience=1, dense_above=dense_above,
                         image_skip=image_skip, forecast=1.0 if "forecast" in extras else 0.0,
                         accumulate=1.0 if "accumulate" in extras else 0.0)
    whole = sample(model, noise, labels, st, width_schedule=schedule)
    for chunk in (3, 1):
        parts = [sample(model, noise[s:s + chunk], labels[s:s + chunk], st, width_schedule=schedule)
                 for s in range(0, n, chunk)]
        images = torch.cat([p.images for p in parts])
        # Float noise only: the same image in a different batch size may round differently (full
        # mode shows it too), far above 100 dB PSNR.
        mse = (images - whole.images).square().flatten(1).mean(1)
        assert (mse <= 4 * 10 ** -10).all(), (chunk, mse.tolist())
        for b in range(n):
            got = _per_image(parts[b // chunk].record, b % chunk)
            want = _per_image(whole.record, b)
            for key in want:
                assert np.array_equal(got[key], want[key]), (chunk, b, key)
    if varied:                                  # not vacuous: images of one batch were decided differently
        per_image = [tuple(_per_image(whole.record, b)["macs"]) for b in range(n)]
        assert len(set(per_image)) > 1, per_image


# -- memory: the activation cache is held once --------------------------------------------------

def test_sampler_holds_one_activation_cache(model, monkeypatch):
    """Counts the bytes of every live cached buffer (sparse.Padded) whenever one is created: the
    peak over an adaptive run is one activation cache (plus the step input's bordered copy that a
    sparse step makes), never an old and a new cache at once."""
    import weakref

    from nitrogen_core.sparse import Padded, UNetExecutor

    live: list[weakref.ref] = []
    peak = [0]
    real_init = Padded.__init__

    def counting_init(self, buf):
        real_init(self, buf)
        live.append(weakref.ref(buf))
        peak[0] = max(peak[0], sum(b().numel() * b().element_size() for b in live if b() is not None))

    executors = []
    real_executor_init = UNetExecutor.__init__

    def keep_executor(self, *args, **kwargs):
        real_executor_init(self, *args, **kwargs)
        executors.append(self)

    n, cfg = 4, model.config
    noise, labels = make_noise(cfg, n, seed=3), torch.tensor([0, 1, 2, 0])
    step_costs(model.unet, 1.0)                                  # its own small caches are not the sampler's
    monkeypatch.setattr(Padded, "__init__", counting_init)
    monkeypatch.setattr(UNetExecutor, "__init__", keep_executor)
    monkeypatch.setattr(model, "gate", LeftHalfGate(model.gate, 1.0))
    # refresh every 2nd step: dense passes replace the cache while sparse steps update it in place
    rec = sample(model, noise, labels, settings(steps=8, cfg=2.0, threshold=0.3, refresh_every=2,
                                                exit_patience=0, max_skips=10)).record
    assert any(not s.dense.any() and s.mask.any() for s in rec.steps)            # sparse steps ran
    cache = executors[-1].cache
    cache_bytes = sum(p.buf.numel() * p.buf.element_size() for p in cache.outputs)
    input_copy = 2 * n * (cfg.image_size + 2) ** 2 * cfg.in_channels * 4           # (Bm, H+2, W+2, C) fp32
    assert cache_bytes < peak[0] <= cache_bytes + input_copy, (peak[0], cache_bytes)
    # what the README states: every op's output, bordered, per model sample, plus the channel sums
    per_op = [p.buf.shape[1] * p.buf.shape[2] * p.buf.shape[3] * 4 for p in cache.outputs]
    assert cache_bytes == 2 * n * sum(per_op)
    assert executors[-1].nbytes == cache.nbytes + executors[-1].out.numel() * 4


# -- eps forecast for skipped units ------------------------------------------------------------------

def test_eps_forecast_is_exact_on_a_linear_eps():
    """eps = a + b * step, computed at steps 0 and 1, then skipped: strength 1 continues the line
    exactly, 0.5 half of it, 0 reuses the last; a unit computed again takes its fresh eps and its
    slope from the gap since its last computation."""
    a, b = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    line = lambda i: a + b * i
    everywhere, nowhere = torch.ones(1, 1, 1, 1, dtype=torch.bool), torch.zeros(1, 1, 1, 1, dtype=torch.bool)
    for strength in (1.0, 0.5, 0.0):
        f = sampler_mod.EpsForecast(a, strength)
        for i in (0, 1):
            last, eps = f.step(line(i), everywhere)
            assert torch.equal(eps, line(i)) and torch.equal(last, line(i))
        for i in (2, 3):
            last, eps = f.step(torch.full_like(a, float("nan")), nowhere)           # fresh eps unused
            torch.testing.assert_close(eps, line(1) + strength * (i - 1) * b)
            assert torch.equal(last, line(1))                                       # the gate's input
        last, eps = f.step(line(4), everywhere)
        assert torch.equal(eps, line(4))
        torch.testing.assert_close(f.skipped(), line(4) + strength * b)            # slope over the 3-step gap


def test_eps_forecast_is_per_pixel():
    """Units skipped and computed in one step: each keeps its own age and slope."""
    x = torch.zeros(1, 1, 1, 2)
    f = sampler_mod.EpsForecast(x, 1.0)
    left = torch.tensor([[[[True, False]]]])
    f.step(torch.tensor([[[[0.0, 0.0]]]]), torch.ones_like(left))
    f.step(torch.tensor([[[[1.0, 2.0]]]]), torch.ones_like(left))          # slopes 1 and 2 per step
    _, eps = f.step(torch.tensor([[[[5.0, 9.0]]]]), left)                   # right skipped: 2 + 2
    assert eps.flatten().tolist() == [5.0, 4.0]
    _, eps = f.step(torch.tensor([[[[0.0, 9.0]]]]), ~left)                  # left skipped: 5 + 4, right fresh
    assert eps.flatten().tolist() == [9.0, 9.0]


@pytest.mark.parametrize("mode", ["adaptive", "cache"])
def test_forecast_changes_only_skipped_units(model, noise, labels, mode):
    """Threshold 0 computes everything, so the forecast has nothing to do: identical to full.
    With skips it changes the images (the skipped units step with the forecast), deterministically."""
    full = sample(model, noise, labels, settings(mode="full", cfg=2.0))
    zero = sample(model, noise, labels, settings(mode=mode, cfg=2.0, threshold=0.0, forecast=1.0))
    assert torch.equal(full.images, zero.images)
    tau = 100.0 if mode == "cache" else MID
    reuse = sample(model, noise, labels, settings(mode=mode, cfg=2.0, threshold=tau))
    ahead = sample(model, noise, labels, settings(mode=mode, cfg=2.0, threshold=tau, forecast=1.0))
    assert not masks(reuse.record).all()                                  # something was skipped
    assert np.array_equal(masks(reuse.record)[:3], masks(ahead.record)[:3])  # same decisions before any forecast
    assert not torch.equal(reuse.images, ahead.images)
    again = sample(model, noise, labels, settings(mode=mode, cfg=2.0, threshold=tau, forecast=1.0))
    assert torch.equal(ahead.images, again.images)


# -- accumulate: a block's skips since it was computed add up ----------------------------------------

def test_accumulate_recomputes_a_block_once_its_skips_add_up_to_tau(model, noise, labels, monkeypatch):
    """A gate predicting the same residual c everywhere, tau above every single step's c * weight:
    judged alone, no block is ever recomputed after warm-up; with accumulate 1, a block is
    recomputed at the step where its skips since computed, plus this step's, reach tau."""
    from nitrogen_core.diffusion import Schedule
    from nitrogen_core.sampler import image_weights
    monkeypatch.setattr(model, "gate", ConstantGate(model.gate, 0.1))
    steps = 8
    weight, _ = image_weights(Schedule(model.config.train_timesteps),
                              Schedule(model.config.train_timesteps).sampling_timesteps(steps))
    tau = 1.5 * 0.1 * max(weight[2:])                     # every single gated step is below tau
    base = dict(steps=steps, threshold=tau, max_skips=100, exit_patience=0, refresh_every=0)
    alone = sample(model, noise, labels, settings(**base)).record
    summed = sample(model, noise, labels, settings(**base, accumulate=1.0)).record
    assert not masks(alone)[2:].any()
    expected, pending = [], 0.0                           # replay the rule for one block (all agree)
    for i in range(2, steps):
        change = 0.1 * weight[i]
        computed = pending + change >= tau
        expected.append(computed)
        pending = 0.0 if computed else pending + change
    got = masks(summed)[2:]                               # (S-2, B, Hp, Wp)
    assert [bool(m.all()) for m in got] == expected and [bool(m.any()) for m in got] == expected
    assert any(expected) and not all(expected)
    zero = sample(model, noise, labels, settings(**base, accumulate=0.0))
    assert torch.equal(zero.images, sample(model, noise, labels, settings(**base)).images)


# -- the record says which dense steps were scheduled, and where the MACs went ------------------------

def test_record_marks_scheduled_dense_steps_and_splits_the_macs(model, noise, labels, monkeypatch):
    """Warm-up and refresh steps are marked scheduled; a gate wanting every block makes the other
    steps dense by choice (dense_above); a gate wanting none leaves only the scheduled passes and
    the gate calls. The composition sums to the MACs used."""
    s = settings(steps=8, warmup=2, refresh_every=3, exit_patience=0, max_skips=100, dense_above=0.5)
    expected = [True, True, True, False, False, True, False, False]      # 0, 1 warm-up; 2, 5 refresh
    for value in (1e9, 0.0):
        monkeypatch.setattr(model, "gate", ConstantGate(model.gate, value))
        rec = sample(model, noise, labels, s).record
        assert [st.scheduled for st in rec.steps] == expected
        comp = rec.mac_composition()
        assert sum(comp.values()) == pytest.approx(1 - rec.saved_fraction)
        assert comp["scheduled"] == pytest.approx(4 / 8)                    # 4 dense steps of 8, whole
        if value:
            chosen = [st for st in rec.steps if not st.scheduled and st.dense.all()]
            assert [st.index for st in chosen] == [3, 4, 6]
            assert comp["chosen_dense"] == pytest.approx(sum(st.macs.mean() for st in chosen) / rec.macs_full)
            assert comp["chosen_dense"] > 3 / 8                             # a whole pass plus the gate call, each
            assert comp["sparse"] > 0 and comp["sparse"] == pytest.approx(rec.steps[7].macs.mean() / rec.macs_full)
        else:
            gate_share = model.gate.macs() / rec.macs_full                 # one gate call per unscheduled step
            assert comp["chosen_dense"] == 0.0 and comp["sparse"] == pytest.approx(4 * gate_share)
    full = sample(model, noise, labels, settings(steps=8, mode="full")).record
    assert all(st.scheduled for st in full.steps) and full.mac_composition()["scheduled"] == pytest.approx(1.0)
