"""`bench bound` on either backbone (tiny U-Net and tiny DiT): the oracle gate returns the true residual,
the exact executor keeps the wrapped executor's cache and MACs and gives computed units the dense eps,
the variants swap and restore cleanly, and the command writes its rows and refuses bad flags in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nitrogen_core.bench.bound import ExactExecutor, OracleGate, variant
from nitrogen_core.checkpoint import save_checkpoint
from nitrogen_core.config import preset
from nitrogen_core.diffusion import Schedule, split_prediction
from nitrogen_core.model import NitroGenModel
from nitrogen_core.sampler import SamplerSettings, make_noise, sample

from conftest import perturbed, record_sampler_settings

REPO = Path(__file__).resolve().parent.parent
CFG_SCALE = 1.5
PRESETS = ("tiny", "tiny-dit")


@pytest.fixture(scope="module", params=PRESETS)
def model(request):
    torch.manual_seed(0)
    return perturbed(NitroGenModel(preset(request.param, num_classes=3))).eval()


def fresh_guided_eps(model, x, t, labels):
    """The guided eps at width 1.0, (B, C, H, W): the reference the oracle must reproduce."""
    cfg = model.config
    model_labels = torch.cat([labels, torch.full_like(labels, cfg.num_classes)])
    with torch.no_grad():
        out = model.net(torch.cat([x, x]), torch.full((2 * len(x),), float(t)), model_labels, 1.0)
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
    # with a forecast, a skip would use the forecast eps, not the cached one: the residual is to it
    oracle.select_images(rows, eps[rows] + 0.25)
    r = oracle(x[rows], torch.full((2,), 500.0), eps[rows], torch.zeros_like(x[rows]))
    assert r.min().item() == pytest.approx(0.25, abs=1e-5) and r.max().item() == pytest.approx(0.25, abs=1e-5)


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


def test_exact_executor_keeps_the_cache_and_macs_and_returns_dense_output(model):
    """One dense step, then a step with a dense sample, a sparse sample and an idle one: the wrapper
    reports the wrapped executor's MACs, leaves its cache as an unwrapped executor's, and gives the
    sparse sample a dense forward's output (the others are untouched)."""
    cfg = model.config
    nb = cfg.image_size // cfg.block_size
    x0, x1 = make_noise(cfg, 3, seed=6), make_noise(cfg, 3, seed=7)
    t0, t1 = torch.full((3,), 700.0), torch.full((3,), 650.0)
    labels = torch.tensor([0, 1, 2])
    everyone = torch.ones(3, dtype=torch.bool)
    dense_rows = torch.tensor([True, False, False])
    blocks = torch.zeros(3, nb, nb, dtype=torch.bool)
    blocks[0] = True
    blocks[1, 0, 0] = blocks[1, nb - 1, 1] = True                             # sample 1: two units, sample 2: none

    def two_steps(executor):
        executor.step(x0, t0, labels, 1.0, everyone, everyone[:, None, None].expand(3, nb, nb))
        return executor.step(x1, t1, labels, 1.0, dense_rows, blocks)

    plain = model.executor(record=True)
    out_plain, macs_plain = two_steps(plain)
    wrapped = ExactExecutor(model.executor(record=True), model.net)
    out_exact, macs_exact = two_steps(wrapped)
    assert torch.equal(macs_exact, macs_plain)
    assert wrapped.width == 1.0 and wrapped.costs(1.0) == plain.costs(1.0)
    assert wrapped.nbytes == plain.nbytes
    with torch.no_grad():
        dense = model.net(x1, t1, labels, 1.0)
    assert torch.allclose(out_exact[1], dense[1], atol=1e-5)                 # the sparse sample: exact
    assert not torch.allclose(out_plain[1], dense[1], atol=1e-4)             # ... where the shipped one is stale
    assert torch.equal(out_exact[0], out_plain[0]) and torch.equal(out_exact[2], out_plain[2])
    assert torch.equal(wrapped.inner.out, plain.out)                         # the wrapped state is the shipped one


def test_variants_restore_the_gate_and_executor_even_on_error(model):
    trained = model.gate
    with pytest.raises(ValueError):
        with variant(model, "oracle + exact", torch.tensor([0]), CFG_SCALE):
            assert isinstance(model.gate, OracleGate)
            assert isinstance(model.executor(record=True), ExactExecutor)
            raise ValueError("boom")
    assert model.gate is trained and "executor" not in vars(model)
    assert not isinstance(model.executor(record=True), ExactExecutor)
    with variant(model, "gate + exact", torch.tensor([0]), CFG_SCALE):      # executor only
        assert model.gate is trained and isinstance(model.executor(record=False), ExactExecutor)
    assert "executor" not in vars(model)
    with pytest.raises(ValueError, match="is not one of"):
        with variant(model, "oracle", torch.tensor([0]), CFG_SCALE):
            pass


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    out = {}
    for name in PRESETS:
        torch.manual_seed(0)
        net = perturbed(NitroGenModel(preset(name, num_classes=3))).eval()
        out[name] = save_checkpoint(tmp_path_factory.mktemp("bound") / f"{name}.safetensors", net, kind="student",
                                    labels=["a", "b", "c"], width_schedule=(1.0,),
                                    sampler={"steps": 6, "cfg": CFG_SCALE, "refresh_every": 0})
    return out


def run_bound(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitrogen_core", "bench", "bound", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name, backbone", [("tiny", "unet"), ("tiny-dit", "dit")])
def test_bound_command_writes_rows(ckpts, tmp_path, name, backbone):
    out, readme = tmp_path / "bound.json", tmp_path / "README.md"
    readme.write_text(f"# x\n<!-- bound-{backbone}:begin -->\n<!-- bound-{backbone}:end -->\n")
    proc = run_bound("--ckpt", str(ckpts[name]), "--seeds", "1", "--taus", "0.01,0.1", "--json", str(out),
                     "--readme", str(readme), "--block", f"bound-{backbone}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["images"] == 3 and result["steps"] == 6 and result["backbone"] == backbone
    variants = [(r["mode"], r["threshold"]) for r in result["rows"]]
    for v in ("gate", "gate + exact", "oracle gate", "oracle + exact"):
        assert (v, 0.01) in variants and (v, 0.1) in variants
    assert any(v == "cache" for v, _ in variants)
    for r in result["rows"]:
        assert r["backbone"] == backbone
        assert 0 < r["mac_ratio"] <= 1.0 + 1e-9
        assert r["psnr_to_full_min"] <= r["psnr_to_full_p1"] <= r["psnr_to_full"] + 1e-6
        assert sum(r["mac_composition"].values()) == pytest.approx(r["mac_ratio"])
    assert "oracle + exact" in proc.stdout
    assert "scheduled / chosen dense / sparse" in readme.read_text()
    assert f"backbone **{backbone}**" in readme.read_text() and f"--block bound-{backbone}" in result["command"]
    assert "mean / 1st percentile / worst" in readme.read_text()
    # --from-json re-renders the same block and rows without sampling
    block, again = readme.read_text(), tmp_path / "again.md"
    again.write_text(f"# x\n<!-- bound-{backbone}:begin -->\n<!-- bound-{backbone}:end -->\n")
    proc = run_bound("--from-json", str(out), "--readme", str(again), "--block", f"bound-{backbone}")
    assert proc.returncode == 0, proc.stderr
    assert again.read_text() == block and "oracle + exact" in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (("--taus", "abc"), "error: --taus 'abc' must be comma-separated numbers"),
    (("--taus", "0.01,-1"), "error: --taus '0.01,-1': -1 is out of range"),
    (("--seeds", "0"), "error: --seeds 0 is out of range"),
    (("--block", "no spaces"), "error: --block 'no spaces' must be"),
    (("--ckpt", "missing.safetensors"), "missing.safetensors"),
    (("--from-json", "missing.json"), "error: --from-json missing.json does not exist"),
    (("--from-json", "README.md"), "error: --from-json README.md is not JSON"),
    (("--from-json", "docs/quality.json"), "has no \"rows\" list"),
    (("--from-json", "docs/bench.json"), "lacks seeds"),
])
def test_bound_bad_flags_are_one_line_errors(flags, message):
    proc = run_bound(*flags)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_bound_samples_in_chunks_and_gives_the_oracle_each_chunks_labels(ckpts, monkeypatch):
    """More images than one sampler call takes: every chunk runs, and the oracle is told its labels
    (it refuses a batch it was not set up for)."""
    from nitrogen_core.bench import bound, evaluate
    monkeypatch.setattr(evaluate, "CHUNK", 2)                                  # the shared chunked sampling loop
    seen = record_sampler_settings(monkeypatch, bound)
    result = bound.run_bound(str(ckpts["tiny-dit"]), seeds=1, taus=(0.05,), log=lambda msg: None)
    assert result["images"] == 3
    # the adaptive variants run with the checkpoint's recommended guards (no dense refresh here)
    assert {s.refresh_every for s in seen if s.mode == "adaptive"} == {0}
    assert {r["mode"] for r in result["rows"]} == {"gate", "gate + exact", "oracle gate", "oracle + exact", "cache"}
    # where the MACs went is the mean over all images, whatever the chunks (sizes 2 and 1 here)
    for r in result["rows"]:
        assert sum(r["mac_composition"].values()) == pytest.approx(r["mac_ratio"])
