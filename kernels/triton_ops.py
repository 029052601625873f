"""Triton versions of the sparse ops, for CUDA (consumer RTX cards); same names and semantics as
torch_ref.py, which is their ground truth. Verified on CPU under TRITON_INTERPRET=1 only: their
speed on a GPU is unmeasured.

Written in the tutorial order: kernels, then launchers, then the wrappers the executor calls.

NOTE (layout): a cached activation is a logical (B, H, W, C) tensor with a one-pixel zero
border. The kernels take its four strides, so the same code reads channels-last buffers (C
contiguous, what the executor stores) and plain NCHW tensors (W contiguous) alike.
NOTE (borders): a window may reach the zero border. Without a fused norm the border reads as
the zero padding of the conv. With one, norm + SiLU would turn that zero into silu(shift), so
the kernel masks every position outside the interior to 0 by its coordinates: no padded copy
and no validity tensor.
NOTE (precision): values are loaded in the buffer's dtype (fp32, fp16 or bf16), the norm, SiLU
and residual add run in fp32, and the result is rounded once on store. bf16 arithmetic is
never done in bf16 (the interpreter cannot, and fp32 is what a GPU would do anyway).
NOTE (indices): offsets are computed in int64, so a buffer may exceed 2^31 elements.
NOTE (tiles): one program handles BLOCK_P window pixels x BLOCK_C channels of one window;
pixels along dim 0 and channels along dim 1 make channels-last loads contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# -- kernels ----------------------------------------------------------------------------------------


@triton.jit
def _gather_kernel(src_ptr, out_ptr, img_ptr, by_ptr, bx_ptr, scale_ptr, shift_ptr,
                   s_b, s_h, s_w, s_c, H, W, C, step, offset, border,
                   SIZE: tl.constexpr, HAS_NORM: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    i = tl.program_id(0)                                  # window
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)   # pixel within the window, row-major
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < SIZE * SIZE
    c_ok = c < C
    img = tl.load(img_ptr + i).to(tl.int64)
    row = offset + tl.load(by_ptr + i).to(tl.int64) * step + p // SIZE           # (BLOCK_P,)
    col = offset + tl.load(bx_ptr + i).to(tl.int64) * step + p % SIZE
    mask = p_ok[:, None] & c_ok[None, :]
    src = src_ptr + img * s_b + row[:, None] * s_h + col[:, None] * s_w + c[None, :].to(tl.int64) * s_c
    v = tl.load(src, mask=mask, other=0.0).to(tl.float32)                         # (BLOCK_P, BLOCK_C)
    if HAS_NORM:
        scale = tl.load(scale_ptr + img * C + c, mask=c_ok, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + img * C + c, mask=c_ok, other=0.0).to(tl.float32)
        v = v * scale[None, :] + shift[None, :]
        v = v * tl.sigmoid(v)                                                     # SiLU
        inside = (row >= border) & (row < H - border) & (col >= border) & (col < W - border)
        v = tl.where(inside[:, None], v, 0.0)
    out = out_ptr + (i.to(tl.int64) * SIZE * SIZE + p)[:, None] * C + c[None, :]
    tl.store(out, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scatter_kernel(dst_ptr, y_ptr, res_ptr, img_ptr, by_ptr, bx_ptr,
                    d_b, d_h, d_w, d_c, C, offset,
                    EDGE: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    i = tl.program_id(0)                                  # block
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (p < EDGE * EDGE)[:, None] & (c < C)[None, :]
    src = (i.to(tl.int64) * EDGE * EDGE + p)[:, None] * C + c[None, :]           # y, res: (n, EDGE, EDGE, C)
    v = tl.load(y_ptr + src, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        v += tl.load(res_ptr + src, mask=mask, other=0.0).to(tl.float32)
    img = tl.load(img_ptr + i).to(tl.int64)
    row = offset + tl.load(by_ptr + i).to(tl.int64) * EDGE + p // EDGE
    col = offset + tl.load(bx_ptr + i).to(tl.int64) * EDGE + p % EDGE
    dst = dst_ptr + img * d_b + row[:, None] * d_h + col[:, None] * d_w + c[None, :].to(tl.int64) * d_c
    tl.store(dst, v.to(dst_ptr.dtype.element_ty), mask=mask)


# -- launchers --------------------------------------------------------------------------------------

def _tiles(pixels: int, channels: int) -> tuple[int, int]:
    block_c = min(64, triton.next_power_of_2(max(channels, 1)))
    block_p = min(triton.next_power_of_2(pixels), max(1, 4096 // block_c))
    return block_p, block_c


def _launch_gather(src, out, img, by, bx, scale, shift, size, step, offset, border):
    n, C = img.numel(), src.shape[3]
    block_p, block_c = _tiles(size * size, C)
    grid = (n, triton.cdiv(size * size, block_p), triton.cdiv(C, block_c))
    has_norm = scale is not None
    _gather_kernel[grid](src, out, img, by, bx, scale if has_norm else out, shift if has_norm else out,
                         *src.stride(), src.shape[1], src.shape[2], C, step, offset, border,
                         SIZE=size, HAS_NORM=has_norm, BLOCK_P=block_p, BLOCK_C=block_c)


def _launch_scatter(dst, y, res, img, by, bx, offset):
    n, edge, C = y.shape[0], y.shape[1], y.shape[3]
    block_p, block_c = _tiles(edge * edge, C)
    grid = (n, triton.cdiv(edge * edge, block_p), triton.cdiv(C, block_c))
    _scatter_kernel[grid](dst, y, res if res is not None else y, img, by, bx, *dst.stride(), C, offset,
                          EDGE=edge, HAS_RES=res is not None, BLOCK_P=block_p, BLOCK_C=block_c)


# -- wrappers (the backend's public ops; signatures match torch_ref) ---------------------------------

def gather(src: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *, size: int, step: int,
           offset: int, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
           border: int = 1) -> torch.Tensor:
    """See torch_ref.gather. src (B, Hs, Ws, C), any strides; returns (n, C, size, size) channels-last."""
    n, C = img.numel(), src.shape[3]
    out = torch.empty(n, size, size, C, device=src.device, dtype=src.dtype)
    if n:
        if scale is not None:
            scale, shift = scale.contiguous(), shift.contiguous()
        _launch_gather(src, out, img, by, bx, scale, shift, size, step, offset, border)
    return out.permute(0, 3, 1, 2)


def scatter(dst: torch.Tensor, y: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *,
            offset: int, residual: torch.Tensor | None = None) -> None:
    """See torch_ref.scatter. dst (B, Hd, Wd, C), any strides; y, residual (n, C, b, b)."""
    if img.numel() == 0:
        return
    y = y.permute(0, 2, 3, 1).contiguous()                  # (n, b, b, C): free for channels-last y
    if residual is not None:
        residual = residual.permute(0, 2, 3, 1).contiguous()
    _launch_scatter(dst, y, residual, img, by, bx, offset)
