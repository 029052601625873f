"""The default-threshold calibration (bench/tau.py): labels in proportion to the data, noise disjoint
from the benchmark's, the tail rule, and the command's one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import perturbed
from nitrogen_core.bench.evaluate import BENCH_SEED
from nitrogen_core.bench.tau import (CALIBRATION_SEED, CONFIRMATION_SEED, TailRule, calibration_noise, choose_threshold,
                                     confirm_threshold, markdown, proportional_labels, threshold_sweep)
from nitrogen_core.config import preset
from nitrogen_core.model import NitroGenModel
from nitrogen_core.sampler import make_noise

REPO = Path(__file__).resolve().parent.parent


def test_labels_follow_the_class_counts():
    labels = proportional_labels([24, 64, 20, 22, 29, 24, 22, 29, 15], 540)
    counts = torch.bincount(labels, minlength=9).tolist()
    assert sum(counts) == 540
    exact = [c * 540 / 249 for c in [24, 64, 20, 22, 29, 24, 22, 29, 15]]
    assert all(abs(c - e) < 1 for c, e in zip(counts, exact)), (counts, exact)
    assert proportional_labels([1, 0, 1], 4).tolist() == [0, 0, 2, 2]


def test_calibration_noise_is_not_the_benchmarks():
    cfg = preset("tiny")
    calib = calibration_noise(cfg, 16)
    bench = make_noise(cfg, 64, seed=BENCH_SEED)
    assert not any(torch.equal(c, b) for c in calib for b in bench)
    # image k depends on k alone, so a prefix is the same images
    assert torch.equal(calibration_noise(cfg, 4), calib[:4])
    assert torch.equal(calib[3:4], make_noise(cfg, 1, CALIBRATION_SEED + 3))


def test_rule_reads_the_tail_not_the_mean():
    rule = TailRule(32.0, 25.0)
    assert rule.holds({"psnr_mean": 30.0, "psnr_p1": 32.0, "psnr_min": 25.0})
    assert not rule.holds({"psnr_mean": 60.0, "psnr_p1": 31.9, "psnr_min": 40.0})
    assert not rule.holds({"psnr_mean": 60.0, "psnr_p1": 40.0, "psnr_min": 24.9})


def test_sweep_reports_mean_p1_and_worst(tmp_path):
    torch.manual_seed(0)
    model = perturbed(NitroGenModel(preset("tiny"))).eval()
    labels = proportional_labels([2, 1, 1], 8)
    rows = threshold_sweep(model, (1.0,), 4, 1.5, labels, taus=(0.0, 0.5, 5.0))
    zero, mid, huge = rows
    assert zero["mac_ratio"] == 1.0 and zero["psnr_min"] > 120          # tau 0 is full compute
    assert huge["mac_ratio"] < 1.0
    for r in rows:
        assert r["psnr_min"] <= r["psnr_p1"] <= max(r["psnr_mean"], r["psnr_p1"])
    chosen = choose_threshold(rows, TailRule(32.0, 25.0))
    assert chosen in (0.0, 0.5, 5.0)
    text = markdown({"command": "cmd", "images": 8, "label_counts": {}, "steps": 4, "cfg": 1.5, "ckpt": "x",
                     "rule": {"p1_psnr": 32.0, "worst_psnr": 25.0}, "rule_text": TailRule().text(),
                     "rows": rows, "threshold": chosen})
    assert "1st-percentile PSNR to full >= 32 dB and worst image >= 25 dB" in text
    assert "refresh_every 0" in markdown({"command": "cmd", "images": 8, "label_counts": {}, "steps": 4, "cfg": 1.5,
                                          "ckpt": "x", "rule": {"p1_psnr": 32.0, "worst_psnr": 25.0},
                                          "rule_text": "", "rows": rows, "threshold": chosen,
                                          "sampler": {"refresh_every": 0}})
    assert text.count("| holds |") + text.count("| fails |") == 3


def test_sweep_stops_at_the_first_failure_and_uses_the_base_settings(monkeypatch):
    """With a stop rule nothing past the first failing tau is sampled; `base` reaches the sampler."""
    torch.manual_seed(0)
    model = perturbed(NitroGenModel(preset("tiny"))).eval()
    labels = proportional_labels([1, 1, 1], 3)
    import nitrogen_core.bench.tau as tau_mod
    seen = []
    real = tau_mod._sample_all

    def spy(model, noise, labels, settings, schedule, progress):
        seen.append(settings)
        return real(model, noise, labels, settings, schedule, progress)

    monkeypatch.setattr(tau_mod, "_sample_all", spy)
    impossible = TailRule(200.0, 200.0)                 # even tau 0 (bit-identical) caps PSNR below 200 dB
    rows = threshold_sweep(model, (1.0,), 4, 1.5, labels, taus=(0.5, 0.0, 5.0), stop_rule=impossible,
                           base={"refresh_every": 0, "dense_above": 1.0})
    assert [r["threshold"] for r in rows] == [0.0]      # ascending, and stopped at the first failure
    full, adaptive = seen
    assert full.mode == "full" and adaptive.mode == "adaptive"
    assert adaptive.refresh_every == 0 and adaptive.dense_above == 1.0 and adaptive.threshold == 0.0
    assert len(threshold_sweep(model, (1.0,), 4, 1.5, labels, taus=(0.5, 0.0, 5.0))) == 3   # no rule: all


@pytest.mark.parametrize("args, needle", [(["--images", "100"], "--images 100 is out of range"),
                                          (["--taus", "0.01,x"], "--taus '0.01,x' must be comma-separated"),
                                          (["--taus", "-1"], "every threshold must be in 0..100"),
                                          (["--json", "docs"], "--json 'docs' is a directory"),
                                          (["--refresh-every", "-1"], "--refresh-every -1 is out of range")])
def test_cli_errors_are_one_line(args, needle):
    proc = subprocess.run([sys.executable, "-m", "nitrogen_core", "bench", "tau", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
    assert needle in proc.stderr


def test_confirmation_steps_down_to_a_tau_that_holds_on_other_seeds():
    torch.manual_seed(0)
    model = perturbed(NitroGenModel(preset("tiny"))).eval()
    labels = proportional_labels([2, 1, 1], 8)
    other = calibration_noise(model.config, 8, seed=CONFIRMATION_SEED)
    assert not any(torch.equal(a, b) for a in other for b in calibration_noise(model.config, 8))
    passing = {"psnr_mean": 99.0, "psnr_p1": 99.0, "psnr_min": 99.0, "mac_ratio": 0.5, "share_below_30db": 0.0}
    # a sweep that (wrongly) accepted tau 5: on other seeds it fails, and tau 0 (full compute) holds
    rows = [{**passing, "threshold": 0.0}, {**passing, "threshold": 5.0}]
    tau, tried = confirm_threshold(model, (1.0,), 4, 1.5, labels, rows, TailRule(32.0, 25.0))
    assert [r["threshold"] for r in tried] == [5.0, 0.0] and tau == 0.0
    assert tried[0]["psnr_p1"] < 32.0 and tried[1]["psnr_min"] > 120
    # a rule tau 5 meets on any images is confirmed at once
    tau, tried = confirm_threshold(model, (1.0,), 4, 1.5, labels, rows, TailRule(-1.0, -1.0))
    assert tau == 5.0 and len(tried) == 1
    # nothing accepted: nothing to confirm
    assert confirm_threshold(model, (1.0,), 4, 1.5, labels, [{**passing, "threshold": 0.5, "psnr_p1": 0.0}]) == (0.0, [])
