"""Image-quality metrics shared by training calibration and the benchmarks."""
from __future__ import annotations

import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [-1, 1] (peak-to-peak 2); identical images -> about 126 dB (MSE floor 1e-12)."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1).clamp(min=1e-12)
    return 10 * torch.log10(4.0 / mse)
