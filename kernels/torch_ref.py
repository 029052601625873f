"""Torch reference of the sparse ops: the CPU path, and the ground truth for other backends.

Block ops (U-Net, channels-last pixel buffers): `gather`, `scatter`. Token ops (the transformer's
token-sparse executor, rows of active tokens from several samples): `ln_modulate`, `gated_add`.

Buffers are channels-last (B, H, W, C) with a zero border, so one pixel is one contiguous row
of C values. A window is then a gather of pixel rows (`index_select`), which on CPU is ~50x
faster than advanced indexing into an NCHW `unfold` view (measured: 0.2 ms vs 12 ms for 128
windows of 10x10x96), and the conv consumes the result as a channels-last NCHW view.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def window_rows(img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *, size: int, step: int, offset: int,
                height: int, width: int) -> torch.Tensor:
    """Flat pixel-row indices (n*size*size,) of the windows into a (B*height*width, C) view."""
    r = torch.arange(size, device=img.device)
    rows = offset + by[:, None] * step + r                                  # (n, size)
    cols = offset + bx[:, None] * step + r                                  # (n, size)
    return ((img[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]).reshape(-1)


def gather(src: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *, size: int, step: int,
           offset: int, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
           border: int = 1) -> torch.Tensor:
    """Copy square windows out of a bordered (B, Hs, Ws, C) buffer, optionally with a fused affine
    norm + SiLU.

    img, by, bx (n,) int64. Window i covers rows offset + by[i]*step + [0, size) and the same
    for columns, of sample img[i]. With scale/shift (B, C):
    out = silu(out * scale[img] + shift[img]), then set to 0 outside the interior (the `border`
    outermost rows and columns): the conv's zero padding applies after the norm.
    Any strides work; channels-last contiguous is the fast path.
    Returns (n, C, size, size), a channels-last view.
    """
    B, Hs, Ws, C = src.shape
    if not src.is_contiguous():
        src = src.contiguous()                               # e.g. an NCHW tensor seen as (B, H, W, C)
    idx = window_rows(img, by, bx, size=size, step=step, offset=offset, height=Hs, width=Ws)
    out = src.view(-1, C).index_select(0, idx).view(-1, size * size, C)           # (n, s*s, C)
    if scale is not None:
        out = torch.addcmul(shift[img][:, None, :], out, scale[img][:, None, :])
        F.silu(out, inplace=True)
        inside = _inside(by, bx, size=size, step=step, offset=offset, height=Hs, width=Ws, border=border)
        out.mul_(inside.view(-1, size * size, 1))
    return out.view(-1, size, size, C).permute(0, 3, 1, 2)


def _inside(by: torch.Tensor, bx: torch.Tensor, *, size: int, step: int, offset: int, height: int, width: int,
            border: int) -> torch.Tensor:
    """(n, size, size) bool: window positions inside the buffer's interior."""
    r = torch.arange(size, device=by.device)
    rows = offset + by[:, None] * step + r                                  # (n, size)
    cols = offset + bx[:, None] * step + r
    row_ok = (rows >= border) & (rows < height - border)
    col_ok = (cols >= border) & (cols < width - border)
    return row_ok[:, :, None] & col_ok[:, None, :]


def scatter(dst: torch.Tensor, y: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *,
            offset: int, residual: torch.Tensor | None = None) -> None:
    """Write blocks into a (B, Hd, Wd, C) buffer in place, optionally adding a residual first.

    y and residual (n, C, b, b) in any memory format. Block i lands at rows
    offset + by[i]*b + [0, b) and the same for columns, of sample img[i]. Blocks must not overlap.
    Any strides work for dst; channels-last contiguous is the fast path.
    """
    B, Hd, Wd, C = dst.shape
    b = y.shape[-1]
    if residual is not None:
        y = y + residual
    idx = window_rows(img, by, bx, size=b, step=b, offset=offset, height=Hd, width=Wd)
    rows = y.permute(0, 2, 3, 1).reshape(-1, C).to(dst.dtype)
    if dst.is_contiguous():
        dst.view(-1, C).index_copy_(0, idx, rows)
    else:
        flat = dst.contiguous()
        flat.view(-1, C).index_copy_(0, idx, rows)
        dst.copy_(flat)


# -- token ops: rows of active tokens, row i belonging to sample img[i] -------------------------------

def ln_modulate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, img: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm of each row with an affine, then adaLN modulation by the row's sample.

    x (n, D); weight, bias (D,); img (n,) int64; shift, scale (B, D) or both None. Returns (n, D):
    y = LN(x) * weight + bias, then y * (1 + scale[img]) + shift[img]. Computed in fp32 and
    rounded once to x's dtype (what the Triton kernel does).
    """
    D = x.shape[-1]
    y = F.layer_norm(x.float(), (D,), weight.float(), bias.float(), eps)
    if scale is not None:
        y = torch.addcmul(shift.float().index_select(0, img), y, (1 + scale.float()).index_select(0, img))
    return y.to(x.dtype)


def gated_add(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Gated residual add in place: h += (1 + gate[img]) * y. h, y (n, D); gate (B, D); img (n,).
    fp32 arithmetic, one rounding to h's dtype. Returns h."""
    g = (1 + gate.float()).index_select(0, img)                              # (n, D)
    if h.dtype == torch.float32:
        return h.addcmul_(y.float(), g)
    return h.copy_(torch.addcmul(h.float(), y.float(), g))
