"""Torch reference of the sparse ops: the CPU path, and the ground truth for other backends.

Windows are read through `unfold` views of a zero-bordered buffer, so a gather copies
only the active windows and never pads the whole tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gather(src: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *, size: int, step: int,
           offset: int, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
           valid: torch.Tensor | None = None) -> torch.Tensor:
    """Copy square windows out of `src`, optionally applying a fused affine norm + SiLU.

    src (B, C, Hs, Ws); img, by, bx (n,) int64. Window i is
    src[img[i], :, offset + by[i]*step : +size, offset + bx[i]*step : +size].
    With scale/shift (B, C): out = silu(out * scale[img] + shift[img]) * valid, where
    valid (n, 1, size, size) zeroes the positions outside the image (the conv's zero padding
    applies after the norm, so the border must be re-zeroed after it).
    Returns (n, C, size, size).
    """
    windows = src[:, :, offset:, offset:].unfold(2, size, step).unfold(3, size, step)  # (B, C, nby, nbx, s, s)
    out = windows[img, :, by, bx]                                                     # (n, C, s, s)
    if scale is None:
        return out
    out = torch.addcmul(shift[img][:, :, None, None], out, scale[img][:, :, None, None])
    out = F.silu(out)
    return out * valid if valid is not None else out


def scatter(dst: torch.Tensor, y: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *,
            offset: int, residual: torch.Tensor | None = None) -> None:
    """Write blocks into `dst` in place, optionally adding a residual first.

    dst (B, C, Hd, Wd); y and residual (n, C, b, b). Block i lands at
    dst[img[i], :, offset + by[i]*b : +b, offset + bx[i]*b : +b]. Blocks must not overlap.
    """
    b = y.shape[-1]
    if residual is not None:
        y = y + residual
    blocks = dst[:, :, offset:, offset:].unfold(2, b, b).unfold(3, b, b)                # (B, C, nby, nbx, b, b)
    blocks[img, :, by, bx] = y
