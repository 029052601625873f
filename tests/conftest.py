"""Shared fixtures: the `tiny` config and a perturbed tiny U-Net."""
from __future__ import annotations

import os

# Triton reads this when a kernel is decorated, so it must be set before anything imports the
# Triton ops: with it, tests/test_kernels.py runs them interpreted on the CPU (no GPU here).
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest
import torch
from PIL import Image

from nitrogen_core.config import preset
from nitrogen_core.model import UNet


def structured_masks(nb: int, seed: int, uneven: bool = False) -> torch.Tensor:
    """(4, nb, nb) unit masks: nothing / everything / the border ring incl. all corners / random.
    `uneven` also forces unit (1, 2) on in the random one, so samples have different active counts."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.zeros(4, nb, nb, dtype=torch.bool)
    m[1] = True
    m[2, 0, :] = m[2, -1, :] = m[2, :, 0] = m[2, :, -1] = True
    m[3] = torch.rand(nb, nb, generator=gen) < 0.4
    if uneven:
        m[3, 1, 2] = True
    return m


def perturbed(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    """The U-Net zero-inits every branch's last conv (an untrained net outputs 0); add noise so
    outputs depend on every parameter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture(scope="module")
def cfg():
    return preset("tiny")


@pytest.fixture(scope="module")
def unet(cfg) -> UNet:
    torch.manual_seed(0)
    return perturbed(UNet(cfg)).eval()


DISC_COLORS = {"blue": (30, 60, 220), "red": (220, 40, 40), "green": (40, 180, 60)}


def record_sampler_settings(monkeypatch, module, name: str = "sample_in_chunks") -> list:
    """Wrap `module.<name>` (bench's chunked sampling loop by default, or the sampler's `sample`),
    a function of (model, noise, labels, settings, ...), so that every call's SamplerSettings is
    appended to the returned list; sampling itself is unchanged."""
    seen, shipped = [], getattr(module, name)

    def recording(model, noise, labels, settings, *args, **kwargs):
        seen.append(settings)
        return shipped(model, noise, labels, settings, *args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return seen


def write_disc_dataset(root: Path, per_class: int, centers, colors=DISC_COLORS, size: int = 16) -> Path:
    """An ImageFolder of coloured discs (radius 4) on white: root/<class>/<i>.png, one per center.

    `centers(i)` gives the (cx, cy) of image i; classes differ only by colour."""
    for name, color in colors.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            im = Image.new("RGB", (size, size), (255, 255, 255))
            px = im.load()
            cx, cy = centers(i)
            for y in range(size):
                for x in range(size):
                    if (x - cx) ** 2 + (y - cy) ** 2 <= 16:
                        px[x, y] = color
            im.save(root / name / f"{i}.png")
    return root


def bench_judge_and_student(root: Path, data: Path, sampler_steps: int) -> tuple[Path, Path]:
    """What the bench tests score with: a 2-step judge trained on `data` and a perturbed tiny
    student (classes blue, green, red; threshold 0.3). Returns (judge file, checkpoint file)."""
    from nitrogen_core.bench.judge import train_judge
    from nitrogen_core.checkpoint import save_checkpoint
    from nitrogen_core.model import NitroGenModel

    judge = root / "judge.safetensors"
    train_judge(data, judge, steps=2, progress=False)
    torch.manual_seed(0)
    model = perturbed(NitroGenModel(preset("tiny", num_classes=3))).eval()
    ckpt = save_checkpoint(root / "tiny.safetensors", model, kind="student", labels=["blue", "green", "red"],
                           width_schedule=(1.0,), sampler={"steps": sampler_steps, "cfg": 1.5, "threshold": 0.3})
    return judge, ckpt
