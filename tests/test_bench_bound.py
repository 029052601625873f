"""`bench bound`: the oracle gate returns the true residual, the variants swap and restore
cleanly, and the command writes its rows and refuses bad flags in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nitrogen_core import sparse as sparse_module
from nitrogen_core.bench.bound import OracleGate, variant
from nitrogen_core.checkpoint import save_checkpoint
from nitrogen_core.config import preset
from nitrogen_core.diffusion import Schedule, split_prediction
from nitrogen_core.model import NitroGenModel
from nitrogen_core.sampler import SamplerSettings, make_noise, sample
from nitrogen_core.sparse import dense_forward

from conftest import perturbed

REPO = Path(__file__).resolve().parent.parent
CFG_SCALE = 1.5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturbed(NitroGenModel(preset("tiny", num_classes=3))).eval()


def fresh_guided_eps(model, x, t, labels):
    """The guided eps at width 1.0, (B, C, H, W): the reference the oracle must reproduce."""
    cfg = model.config
    model_labels = torch.cat([labels, torch.full_like(labels, cfg.num_classes)])
    out, _, _ = dense_forward(model.unet, torch.cat([x, x]), torch.full((2 * len(x),), float(t)), model_labels,
                              1.0, record=False)
    cond, uncond = out.float().chunk(2)
    alpha, sigma = Schedule(cfg.train_timesteps).alpha_sigma(t)
    return split_prediction(uncond + CFG_SCALE * (cond - uncond), x, alpha, sigma, cfg.prediction)[0]


def test_oracle_gate_is_the_true_per_patch_residual(model):
    cfg = model.config
    labels = torch.tensor([0, 2])
    x, t = make_noise(cfg, 2, seed=3), 500
    eps = fresh_guided_eps(model, x, t, labels)
    oracle = OracleGate(model, labels, CFG_SCALE)
    t_batch = torch.full((2,), float(t))
    zeros = torch.zeros_like(x)
    # the cached eps is exact: nothing to gain anywhere
    assert oracle(x, t_batch, eps, zeros).abs().max() < 1e-5
    # off by c in one patch of image 1 only: residual c there, 0 elsewhere
    p, c = cfg.patch_size, 0.25
    cached = eps.clone()
    cached[1, :, p:2 * p, 0:p] += c
    r = oracle(x, t_batch, cached, zeros)                                    # (2, Hp, Wp)
    assert r.shape == (2, cfg.image_size // p, cfg.image_size // p)
    assert r[1, 1, 0].item() == pytest.approx(c, abs=1e-5)
    r[1, 1, 0] = 0
    assert r.abs().max() < 1e-5
    assert oracle.macs() == model.gate.macs()                                # accounted as the trained gate


def test_oracle_gate_sees_the_rows_the_sampler_selects(model):
    """The sampler gates a subset of the batch when images sit a step out: the oracle must use
    those images' labels, and refuse a batch that does not match."""
    labels = torch.tensor([0, 1, 2])
    x = make_noise(model.config, 3, seed=4)
    eps = fresh_guided_eps(model, x, 500, labels)
    oracle = OracleGate(model, labels, CFG_SCALE)
    rows = torch.tensor([0, 2])
    oracle.select_images(rows)
    r = oracle(x[rows], torch.full((2,), 500.0), eps[rows], torch.zeros_like(x[rows]))
    assert r.abs().max() < 1e-5                          # right labels: the cached eps is exact
    with pytest.raises(RuntimeError, match="oracle gate called on 2 images, set up for 3"):
        oracle(x[rows], torch.full((2,), 500.0), eps[rows], torch.zeros_like(x[rows]))


def test_oracle_with_a_tiny_threshold_follows_full_compute(model):
    """The oracle sees every nonzero residual, so at a tiny tau every step recomputes every patch and
    the trajectory is full compute's; only the last step, which cannot afford a dense pass after the
    gate's MACs within budget 1.0, may be trimmed."""
    labels = torch.tensor([0, 1, 2])
    noise = make_noise(model.config, 3, seed=5)
    base = dict(steps=6, cfg=CFG_SCALE)

    def run(settings):
        previews = []
        res = sample(model, noise, labels, settings, callback=lambda i, n, x0: previews.append(x0.clone()))
        return res, previews

    _, full_previews = run(SamplerSettings(mode="full", **base))
    for name in ("oracle gate", "oracle + exact"):
        with variant(model, name, labels, CFG_SCALE):
            res, previews = run(SamplerSettings(threshold=1e-9, **base))
        assert all(st.mask.all() for st in res.record.steps[:-1]), name
        for k in range(len(previews) - 1):
            assert torch.allclose(previews[k], full_previews[k], atol=1e-5), (name, k)


def test_variants_restore_the_gate_and_executor_even_on_error(model):
    trained, executor = model.gate, sparse_module.sparse_forward
    with pytest.raises(ValueError):
        with variant(model, "oracle + exact", torch.tensor([0]), CFG_SCALE):
            assert isinstance(model.gate, OracleGate) and sparse_module.sparse_forward is not executor
            raise ValueError("boom")
    assert model.gate is trained and sparse_module.sparse_forward is executor
    with variant(model, "gate + exact", torch.tensor([0]), CFG_SCALE):      # executor only
        assert model.gate is trained and sparse_module.sparse_forward is not executor
    assert sparse_module.sparse_forward is executor


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, model):
    return save_checkpoint(tmp_path_factory.mktemp("bound") / "tiny.safetensors", model, kind="student",
                           labels=["a", "b", "c"], width_schedule=(1.0,), sampler={"steps": 6, "cfg": CFG_SCALE})


def run_bound(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitrogen_core", "bench", "bound", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_bound_command_writes_rows(tiny_ckpt, tmp_path):
    out = tmp_path / "bound.json"
    proc = run_bound("--ckpt", str(tiny_ckpt), "--seeds", "1", "--taus", "0.01,0.1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["images"] == 3 and result["steps"] == 6
    variants = [(r["mode"], r["threshold"]) for r in result["rows"]]
    for name in ("gate", "gate + exact", "oracle gate", "oracle + exact"):
        assert (name, 0.01) in variants and (name, 0.1) in variants
    assert any(v == "cache" for v, _ in variants)
    for r in result["rows"]:
        assert 0 < r["mac_ratio"] <= 1.0 + 1e-9 and r["psnr_to_full_min"] <= r["psnr_to_full"] + 1e-6
    assert "oracle + exact" in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (("--taus", "abc"), "error: --taus 'abc' must be comma-separated numbers"),
    (("--taus", "0.01,-1"), "error: --taus '0.01,-1': -1 is out of range"),
    (("--seeds", "0"), "error: --seeds 0 is out of range"),
    (("--ckpt", "missing.safetensors"), "missing.safetensors"),
])
def test_bound_bad_flags_are_one_line_errors(flags, message):
    proc = run_bound(*flags)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_bound_samples_in_chunks_and_gives_the_oracle_each_chunks_labels(tiny_ckpt, monkeypatch):
    """More images than one sampler call takes: every chunk runs, and the oracle is told its labels
    (it refuses a batch it was not set up for)."""
    from nitrogen_core.bench import bound, evaluate
    monkeypatch.setattr(evaluate, "CHUNK", 2)                                  # the shared chunked sampling loop
    result = bound.run_bound(str(tiny_ckpt), seeds=1, taus=(0.05,), log=lambda msg: None)
    assert result["images"] == 3
    assert {r["mode"] for r in result["rows"]} == {"gate", "gate + exact", "oracle gate", "oracle + exact", "cache"}
