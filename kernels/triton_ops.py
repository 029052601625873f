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
NOTE (token ops): one program handles BLOCK_R whole rows (BLOCK_D >= D channels), so the
LayerNorm's row statistics need no second pass; rows may have any row stride, channels are
contiguous. Their speed on a GPU is unmeasured, like the block ops'.
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


@triton.jit
def _ln_modulate_kernel(x_ptr, out_ptr, w_ptr, b_ptr, img_ptr, shift_ptr, scale_ptr,
                        n, D, x_row, out_row, eps,
                        HAS_MOD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # x_ptr: (n, D) rows, stride x_row; out_ptr: (n, D), stride out_row; w_ptr, b_ptr: (D,) affine;
    # img_ptr: (n,) sample of each row; shift_ptr, scale_ptr: (B, D) contiguous modulation
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_D)
    r_ok = r < n
    c_ok = c < D
    mask = r_ok[:, None] & c_ok[None, :]
    r64 = r.to(tl.int64)
    x = tl.load(x_ptr + r64[:, None] * x_row + c[None, :], mask=mask, other=0.0).to(tl.float32)   # (R, D)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D                             # biased, as F.layer_norm
    y = xc * tl.rsqrt(var + eps)[:, None]
    w = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    y = y * w[None, :] + b[None, :]
    if HAS_MOD:
        img = tl.load(img_ptr + r, mask=r_ok, other=0).to(tl.int64)
        mod = img[:, None] * D + c[None, :]
        scale = tl.load(scale_ptr + mod, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + mod, mask=mask, other=0.0).to(tl.float32)
        y = y * (1.0 + scale) + shift
    tl.store(out_ptr + r64[:, None] * out_row + c[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_add_kernel(h_ptr, y_ptr, gate_ptr, img_ptr, n, D, h_row, y_row,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # h_ptr: (n, D) updated in place, stride h_row; y_ptr: (n, D), stride y_row;
    # gate_ptr: (B, D) contiguous; img_ptr: (n,) sample of each row
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < n
    mask = r_ok[:, None] & (c < D)[None, :]
    r64 = r.to(tl.int64)
    img = tl.load(img_ptr + r, mask=r_ok, other=0).to(tl.int64)
    g = tl.load(gate_ptr + img[:, None] * D + c[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + r64[:, None] * y_row + c[None, :], mask=mask, other=0.0).to(tl.float32)
    h_at = h_ptr + r64[:, None] * h_row + c[None, :]
    h = tl.load(h_at, mask=mask, other=0.0).to(tl.float32)
    tl.store(h_at, (h + (1.0 + g) * y).to(h_ptr.dtype.element_ty), mask=mask)


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


def _row_tiles(D: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(max(D, 1))
    return max(1, min(64, 4096 // block_d)), block_d


def _launch_ln_modulate(x, out, weight, bias, img, shift, scale, eps):
    n, D = x.shape
    block_r, block_d = _row_tiles(D)
    has_mod = scale is not None
    _ln_modulate_kernel[(triton.cdiv(n, block_r),)](
        x, out, weight, bias, img if has_mod else x, shift if has_mod else x, scale if has_mod else x,
        n, D, x.stride(0), out.stride(0), eps, HAS_MOD=has_mod, BLOCK_R=block_r, BLOCK_D=block_d)


def _launch_gated_add(h, y, gate, img):
    n, D = h.shape
    block_d = min(256, triton.next_power_of_2(max(D, 1)))
    block_r = max(1, min(64, 4096 // block_d))
    grid = (triton.cdiv(n, block_r), triton.cdiv(D, block_d))
    _gated_add_kernel[grid](h, y, gate, img, n, D, h.stride(0), y.stride(0), BLOCK_R=block_r, BLOCK_D=block_d)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A (n, D) view whose channels are contiguous (a copy only if they are not)."""
    return t if t.stride(-1) == 1 else t.contiguous()


# -- wrappers (the backend's public ops; signatures match torch_ref) ---------------------------------

def gather(src: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *, size: int, step: int,
           offset: int, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
           border: int = 1) -> torch.Tensor:
    """See torch_ref.gather. src (B, Hs, Ws, C), any strides; returns (n, C, size, size) channels-last."""
    n, C = img.numel(), src.shape[3]
    out = torch.empty(n, size, size, C, device=src.device, dtype=src.dtype)
    if n:
        img, by, bx = img.contiguous(), by.contiguous(), bx.contiguous()     # the kernel reads them densely
        if scale is not None:
            scale, shift = scale.contiguous(), shift.contiguous()
        _launch_gather(src, out, img, by, bx, scale, shift, size, step, offset, border)
    return out.permute(0, 3, 1, 2)


def scatter(dst: torch.Tensor, y: torch.Tensor, img: torch.Tensor, by: torch.Tensor, bx: torch.Tensor, *,
            offset: int, residual: torch.Tensor | None = None) -> None:
    """See torch_ref.scatter. dst (B, Hd, Wd, C), any strides; y, residual (n, C, b, b)."""
    if img.numel() == 0:
        return
    img, by, bx = img.contiguous(), by.contiguous(), bx.contiguous()
    y = y.permute(0, 2, 3, 1).contiguous()                  # (n, b, b, C): free for channels-last y
    if residual is not None:
        residual = residual.permute(0, 2, 3, 1).contiguous()
    _launch_scatter(dst, y, residual, img, by, bx, offset)


def ln_modulate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, img: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                eps: float = 1e-6) -> torch.Tensor:
    """See torch_ref.ln_modulate. x (n, D), rows of any stride; returns a new contiguous (n, D)."""
    if x.dim() != 2:
        raise ValueError(f"ln_modulate takes rows (n, D), got shape {tuple(x.shape)}")
    x = _rows(x)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if x.shape[0]:
        if scale is not None:
            shift, scale, img = shift.contiguous(), scale.contiguous(), img.contiguous()
        _launch_ln_modulate(x, out, weight.contiguous(), bias.contiguous(), img, shift, scale, float(eps))
    return out


def gated_add(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """See torch_ref.gated_add. h (n, D) with contiguous channels (updated in place); returns h."""
    if h.dim() != 2 or h.stride(-1) != 1:
        raise ValueError(f"gated_add updates rows (n, D) with contiguous channels in place, got shape "
                         f"{tuple(h.shape)} strides {h.stride()}")
    if h.shape[0]:
        _launch_gated_add(h, _rows(y), gate.contiguous(), img.contiguous())
    return h
