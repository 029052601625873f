"""Shared fixtures: the `tiny` config and a perturbed tiny U-Net."""
from __future__ import annotations

import os

# Triton reads this when a kernel is decorated, so it must be set before anything imports the
# Triton ops: with it, tests/test_kernels.py runs them interpreted on the CPU (no GPU here).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from nitrogen_core.config import preset
from nitrogen_core.model import UNet


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
