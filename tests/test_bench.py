"""`python -m nitrogen_core bench`: the evidence benchmark end to end on a tiny model and judge.

Checks the JSON schema the issue fixes, that every mode appears, that the MAC bookkeeping is
right (full = 1, uniform k = k/N, slim below full), that quality columns behave (full against
itself is perfect), the matched-uniform rows, the plot, and the one-line errors. No timing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from nitrogen_core.bench.judge import train_judge
from nitrogen_core.checkpoint import save_checkpoint
from nitrogen_core.config import preset
from nitrogen_core.model import NitroGenModel

from conftest import perturbed, write_disc_dataset

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("blue", "green", "red")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = write_disc_dataset(root / "data", 4, lambda i: (5 + 2 * i, 8),
                              {"blue": (40, 60, 220), "green": (40, 180, 60), "red": (220, 40, 40)})
    judge = root / "judge.safetensors"
    train_judge(data, judge, steps=2, progress=False)
    torch.manual_seed(0)
    model = perturbed(NitroGenModel(preset("tiny", num_classes=3))).eval()
    ckpt = save_checkpoint(root / "tiny.safetensors", model, kind="student", labels=list(CLASSES),
                           width_schedule=(1.0,), sampler={"steps": 6, "cfg": 1.5, "threshold": 0.3})
    return {"root": root, "judge": judge, "ckpt": ckpt}


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitrogen_core", "bench", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_quick_bench_json_plot_and_bookkeeping(setup):
    out_json, out_plot = setup["root"] / "b.json", setup["root"] / "b.png"
    proc = run_bench("--quick", "--ckpt", str(setup["ckpt"]), "--judge", str(setup["judge"]),
                     "--seeds", "2", "--json", str(out_json), "--plot", str(out_plot))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert {"rows", "ckpt", "seeds", "device"} <= set(result)
    assert result["seeds"] == 2 and result["device"] == "cpu" and result["images"] == 6
    rows = result["rows"]
    for row in rows:
        assert isinstance(row["mode"], str) and isinstance(row["steps"], int)
        assert row["threshold"] is None or isinstance(row["threshold"], float)
        assert isinstance(row["macs_per_image"], int) and row["macs_per_image"] > 0
        for key in ("seconds_per_image", "psnr_to_full", "fid", "ssim_to_full", "kid"):
            assert isinstance(row[key], float), (key, row)
    assert {r["mode"] for r in rows} == {"full", "adaptive", "uniform", "cache", "slim"}
    full = rows[0]
    assert full["mode"] == "full" and full["mac_ratio"] == 1.0 and full["ssim_to_full"] == pytest.approx(1.0)
    assert full["psnr_to_full"] >= 99.0
    for r in rows:
        if r["mode"] == "uniform":                      # k of N dense steps cost k/N of full
            assert r["mac_ratio"] == pytest.approx(r["steps"] / full["steps"])
            assert r["steps"] < full["steps"]
        if r["mode"] == "slim":
            assert r["width"] == 0.5 and r["mac_ratio"] < 0.5
        if r["mode"] in ("adaptive", "cache"):
            assert r["steps"] == full["steps"] and r["mac_ratio"] <= 1.0
    # every adaptive point has a uniform row at its MACs (to the nearest step)
    uniform_steps = {r["steps"] for r in rows if r["mode"] == "uniform"}
    for r in rows:
        if r["mode"] == "adaptive":
            k = max(1, min(full["steps"] - 1, round(r["mac_ratio"] * full["steps"])))
            assert k in uniform_steps, (r, uniform_steps)
    with Image.open(out_plot) as im:
        assert im.size[0] >= 800
    assert "default tau" in proc.stdout or "mode" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], r"--seeds 0 is out of range"),
    (["--judge", "/nonexistent/judge.safetensors"], r"/nonexistent/judge.safetensors"),
])
def test_bench_bad_input_is_one_line(setup, args, message):
    import re
    proc = run_bench("--quick", "--ckpt", str(setup["ckpt"]), *args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and re.search(message, lines[-1]), proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_refuses_a_judge_for_other_classes(setup, tmp_path):
    model = NitroGenModel(preset("tiny", num_classes=3)).eval()
    other = save_checkpoint(tmp_path / "other.safetensors", model, kind="student", labels=["a", "b", "c"])
    proc = run_bench("--quick", "--ckpt", str(other), "--judge", str(setup["judge"]))
    assert proc.returncode == 2 and "was trained on classes" in proc.stderr
