"""`python -m nitrogen_core` end to end, in a subprocess from the repo root: the happy paths, and
bad input ending as exit code 2 with one `error:` line on stderr and no traceback (DESIGN §6)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nitrogen_core import __main__ as cli
from nitrogen_core import checkpoint as ckpt_mod
from nitrogen_core.checkpoint import read_header

REPO = Path(__file__).resolve().parent.parent
REQUIRED_KEYS = {"macs_full", "macs_used", "seconds", "steps", "threshold", "out", "heatmap",
                 "mode", "label", "seed", "batch", "budget", "saved_fraction", "mac_composition"}


def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitrogen_core", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def assert_input_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    assert proc.stdout == "", proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    proc = run("init", "--preset", "tiny", "--out", path, "--labels", "cat,dog,Smile", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    return path


# -- init / info -----------------------------------------------------------------------------

def test_init_then_info(tiny_ckpt):
    h = read_header(tiny_ckpt)
    assert h["kind"] == "student" and h["labels"] == ["cat", "dog", "Smile"]
    assert h["config"]["num_classes"] == 3 and h["train"]["seed"] == 1 and h["train"]["steps"] == 0

    text = run("info", tiny_ckpt)
    assert text.returncode == 0, text.stderr
    for needle in ("student", "cat", "Smile", "width schedule", "MB", "parameters", "image_size"):
        assert needle in text.stdout

    js = run("info", tiny_ckpt, "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["kind"] == "student" and data["format"] == 1
    assert data["labels"] == ["cat", "dog", "Smile"] and data["width_schedule"] == [1.0]
    assert data["config"] == h["config"] and data["train"] == h["train"]
    assert data["n_params"] > 0 and data["size_bytes"] == tiny_ckpt.stat().st_size


def test_init_default_labels_and_overwrite(tmp_path):
    out = tmp_path / "t.safetensors"
    first = run("init", "--preset", "tiny", "--out", out, "--kind", "teacher")
    assert first.returncode == 0, first.stderr
    h = read_header(out)
    assert h["kind"] == "teacher"
    assert h["labels"] == [f"class{i}" for i in range(h["config"]["num_classes"])]

    before = out.read_bytes()
    again = run("init", "--preset", "tiny", "--out", out, "--seed", "5")
    assert_input_error(again, str(out), "exists", "--force")
    assert out.read_bytes() == before

    forced = run("init", "--preset", "tiny", "--out", out, "--seed", "5", "--force")
    assert forced.returncode == 0, forced.stderr
    assert read_header(out)["train"]["seed"] == 5 and read_header(out)["kind"] == "student"


@pytest.mark.parametrize("args, needles", [
    (("--preset", "huge"), ("'huge'", "tiny")),
    (("--preset", "tiny", "--labels", "a,,b"), ("--labels", "non-empty")),
    (("--preset", "tiny", "--labels", "a,b,a"), ("--labels", "unique", "'a'")),
    (("--preset", "tiny", "--seed", "-1"), ("--seed -1",)),
])
def test_init_bad_input(tmp_path, args, needles):
    out = tmp_path / "x.safetensors"
    assert_input_error(run("init", "--out", out, *args), *needles)
    assert not out.exists()


def test_init_refuses_non_safetensors_out(tmp_path):
    assert_input_error(run("init", "--preset", "tiny", "--out", tmp_path / "x.pt"), "x.pt", ".safetensors")


def test_info_bad_files(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04junk")
    assert_input_error(run("info", pt), "model.pt", "pickle")
    assert_input_error(run("info", tmp_path / "missing.safetensors"), "missing.safetensors", "no such file")
    assert_input_error(run("info", tmp_path), "directory")


# -- generate --------------------------------------------------------------------------------

def test_generate_json(tiny_ckpt, tmp_path):
    out, heat = tmp_path / "img" / "grid.png", tmp_path / "heat" / "h.png"
    proc = run("generate", "--ckpt", tiny_ckpt, "--steps", 3, "--batch", 2, "--label", "smile", "--seed", 7,
               "--out", out, "--heatmap", heat, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)        # exactly one JSON object: json.loads refuses trailing text
    assert isinstance(data, dict) and proc.stdout.strip().count("\n") == 0
    assert REQUIRED_KEYS <= set(data)
    assert isinstance(data["macs_full"], int) and isinstance(data["macs_used"], int)
    assert 0 < data["macs_used"] <= data["macs_full"]
    assert data["steps"] == 3 and data["batch"] == 2 and data["seed"] == 7
    assert data["label"] == "Smile" and data["mode"] == "adaptive" and data["budget"] == 1.0
    assert data["saved_fraction"] == pytest.approx(1 - data["macs_used"] / data["macs_full"])
    assert sum(data["mac_composition"].values()) == pytest.approx(1 - data["saved_fraction"], abs=1e-6)
    assert data["seconds"] >= 0
    assert Path(data["out"]) == out and Path(data["heatmap"]) == heat
    assert out.is_file() and heat.is_file()
    size = read_header(tiny_ckpt)["config"]["image_size"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.height == size and im.width == 2 * size + 2   # 2 images side by side, 2 px gap
    with Image.open(heat) as im:
        assert im.format == "PNG" and im.width > im.height       # two heatmaps side by side


def test_generate_text_summary_full_mode(tiny_ckpt, tmp_path):
    out = tmp_path / "one.png"
    proc = run("generate", "--ckpt", tiny_ckpt, "--steps", 2, "--mode", "full", "--label", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "'dog'" in proc.stdout and proc.stdout.count("\n") == 1
    with Image.open(out) as im:
        size = read_header(tiny_ckpt)["config"]["image_size"]
        assert im.size == (size, size)                             # a single image at native resolution


@pytest.mark.parametrize("args, needles", [
    (("--steps", "0"), ("steps", "0")),
    (("--steps", "100000"), ("steps", "100000")),
    (("--threshold", "-1"), ("threshold", "-1")),
    (("--budget", "0"), ("budget", "0")),
    (("--budget", "1.5"), ("budget", "1.5")),
    (("--mode", "turbo"), ("mode", "turbo")),
    (("--batch", "0"), ("--batch 0", "1..64")),
    (("--batch", "1000"), ("--batch 1000", "1..64")),
    (("--label", "nosuchclass"), ("nosuchclass", "cat", "dog", "Smile")),
    (("--label", "99"), ("99", "0..2")),
    (("--seed", "-3"), ("--seed -3",)),
    (("--out", "x.jpg"), ("x.jpg", ".png")),
    (("--device", "quantum"), ("quantum",)),
])
def test_generate_bad_input(tiny_ckpt, tmp_path, args, needles):
    args = tuple(a.replace("x.jpg", str(tmp_path / "x.jpg")) for a in args)
    full = ("--out", tmp_path / "o.png", *args) if "--out" not in args else args
    assert_input_error(run("generate", "--ckpt", tiny_ckpt, *full), *needles)
    assert not (tmp_path / "o.png").exists()


def test_generate_pickle_ckpt(tmp_path):
    pt = tmp_path / "weights.pt"
    pt.write_bytes(b"\x80\x04not a pickle at all")
    assert_input_error(run("generate", "--ckpt", pt, "--out", tmp_path / "o.png"), "weights.pt", "pickle")


@pytest.mark.parametrize("flag", ["--threshold", "--cfg", "--budget"])
def test_generate_non_finite_float_is_an_argparse_error(tiny_ckpt, flag):
    proc = run("generate", "--ckpt", tiny_ckpt, flag, "nan")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "finite" in proc.stderr and "'nan'" in proc.stderr


def test_generate_without_bundled_checkpoint(monkeypatch, tmp_path, capsys):
    # In process: the bundled file may exist in a trained checkout, so point the default elsewhere.
    monkeypatch.setattr(ckpt_mod, "BUNDLED_CHECKPOINT", tmp_path / "absent.safetensors")
    assert cli.main(["generate", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "absent.safetensors" in err and "--ckpt" in err and "init" in err
