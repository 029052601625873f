"""The age-aware gate (config.gate_age): it reads each patch's steps since computed, the sampler
hands it exactly that, decisions stay per image, and old configs and checkpoints keep their
9-input gate."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from conftest import perturbed
from nitrogen_core.config import NitroGenConfig, preset
from nitrogen_core.model import NitroGenModel
from nitrogen_core.model.gate import Gate
from nitrogen_core.sampler import SamplerSettings, make_noise, sample


@pytest.fixture(scope="module")
def age_cfg() -> NitroGenConfig:
    return dataclasses.replace(preset("tiny"), gate_age=True)


@pytest.fixture(scope="module")
def age_model(age_cfg) -> NitroGenModel:
    torch.manual_seed(0)
    model = perturbed(NitroGenModel(age_cfg)).eval()
    perturbed(model.gate, seed=2, scale=0.3)               # predictions that differ between images and patches
    return model


def test_config_reads_gate_age_and_old_configs_default_to_without():
    cfg = dataclasses.replace(preset("tiny"), gate_age=True)
    assert NitroGenConfig.from_dict(cfg.to_dict()).gate_age is True
    old = {k: v for k, v in cfg.to_dict().items() if k != "gate_age"}        # a checkpoint from before the field
    assert NitroGenConfig.from_dict(old).gate_age is False
    with pytest.raises(ValueError, match="config key 'gate_age' must be bool, got 1"):
        NitroGenConfig.from_dict({**cfg.to_dict(), "gate_age": 1})
    with pytest.raises(ValueError, match="config key 'base_channels' must be int, got True"):
        NitroGenConfig.from_dict({**cfg.to_dict(), "base_channels": True})


def test_age_gate_reads_age(age_cfg):
    torch.manual_seed(0)
    gate, plain = perturbed(Gate(age_cfg), scale=0.3).eval(), Gate(preset("tiny"))
    S, g, c = age_cfg.image_size, age_cfg.image_size // age_cfg.patch_size, age_cfg.gate_channels
    x = torch.randn(2, 3, S, S)
    t = torch.tensor([100.0, 700.0])
    ones = torch.ones(2, g, g)
    with torch.no_grad():
        young, old = gate(x, t, x, x, ones), gate(x, t, x, x, 3 * ones)
    assert young.shape == (2, g, g) and (young >= 0).all()
    assert not torch.allclose(young, old)
    aged = ones.clone()
    aged[0, 0, 0] = 3                                         # one patch older: its own prediction moves
    with torch.no_grad():
        moved = (gate(x, t, x, x, aged) - young).abs()
    assert moved[0, 0, 0] > 0 and moved[1].max() == 0          # the other image is untouched
    with pytest.raises(ValueError, match="reads each patch's age"):
        gate(x, t, x, x)
    plain(x, t, x, x, 3 * ones)                               # a 9-input gate ignores age
    assert gate.macs() - plain.macs() == (S // 2) ** 2 * c * 9   # one more input channel in the first conv


class AgeSpy(nn.Module):
    """The real gate, recording the age it is handed at every call."""

    def __init__(self, gate):
        super().__init__()
        self.gate, self.ages = gate, []

    def forward(self, x_t, t, eps_cached, eps_delta, age=None):
        self.ages.append(age.clone())
        return self.gate(x_t, t, eps_cached, eps_delta, age)

    def macs(self) -> int:
        return self.gate.macs()


def test_sampler_hands_the_gate_each_patchs_steps_since_computed(age_model, monkeypatch):
    spy = AgeSpy(age_model.gate)
    monkeypatch.setattr(age_model, "gate", spy)
    noise, labels = make_noise(age_model.config, 3, seed=4), torch.tensor([0, 1, 2])
    st = SamplerSettings(steps=8, cfg=2.0, threshold=0.3, warmup=2, refresh_every=0, max_skips=3,
                         exit_patience=0, dense_above=1.0, image_skip=0.0)
    result = sample(age_model, noise, labels, st)
    masks = [torch.tensor(s.mask) for s in result.record.steps]           # (B, Hp, Wp) computed patches
    assert len(spy.ages) == 6                                                # one call per gated step
    since = torch.zeros_like(masks[0], dtype=torch.long)                     # steps since computed, replayed
    for i, m in enumerate(masks):
        if i >= 2:
            torch.testing.assert_close(spy.ages[i - 2].long().cpu(), since + 1)
        since = torch.where(m, torch.zeros_like(since), since + 1)
    assert any(bool((a > 1).any()) for a in spy.ages)                      # not vacuous: some patches were stale


def test_age_gate_threshold_zero_is_full_and_batch_invariant(age_model):
    noise, labels = make_noise(age_model.config, 6, seed=11), torch.tensor([0, 1, 2, 0, 1, 2])
    full = sample(age_model, noise[:2], labels[:2], SamplerSettings(steps=6, mode="full"))
    zero = sample(age_model, noise[:2], labels[:2], SamplerSettings(steps=6, threshold=0.0))
    assert torch.equal(full.images, zero.images)
    st = SamplerSettings(steps=8, cfg=2.0, threshold=0.5, warmup=2, refresh_every=3, max_skips=2, exit_patience=1,
                         dense_above=0.5, image_skip=0.02, forecast=1.0)
    whole = sample(age_model, noise, labels, st)
    macs = [tuple(int(s.macs[b]) for s in whole.record.steps) for b in range(6)]
    assert len(set(macs)) > 1                                                # images were decided differently
    singles = [sample(age_model, noise[b:b + 1], labels[b:b + 1], st) for b in range(6)]
    images = torch.cat([s.images for s in singles])
    assert ((images - whole.images).square().flatten(1).mean(1) <= 4e-10).all()
    for b, s in enumerate(singles):
        assert [int(r.macs[0]) for r in s.record.steps] == list(macs[b])
