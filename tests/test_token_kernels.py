"""kernels/ token ops (the transformer's token-sparse executor): `ln_modulate` and `gated_add`, the
torch reference against plain formulas, and Triton (interpreted on the CPU, TRITON_INTERPRET=1 from
conftest.py) against the torch reference over odd shapes, dtypes, strided rows and empty inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nitrogen_core._kernels import load_kernels
from test_kernels import DTYPES, assert_close, needs_triton

K = load_kernels()
ref = K.torch_ref

SHAPES = [(0, 5), (1, 1), (7, 5), (33, 48), (70, 130)]        # (rows, channels): odd, > one tile, non-pow2


def rows_data(n: int, D: int, B: int, dtype: torch.dtype, seed: int, strided: bool):
    """x (n, D) (a column slice of a wider tensor when strided), img (n,) sorted samples, and
    affine/modulation parameters."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(n, D + 3 if strided else D, generator=gen)
    x = wide[:, 1:D + 1] if strided else wide
    img = torch.sort(torch.randint(0, B, (n,), generator=gen)).values
    params = [torch.randn(D, generator=gen), torch.randn(D, generator=gen),
              torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)]
    return (x.to(dtype), img, *(p.to(dtype) for p in params))


def test_ln_modulate_reference_is_the_formula():
    x, img, w, b, shift, scale = rows_data(9, 6, 3, torch.float32, 0, False)
    got = ref.ln_modulate(x, w, b, img=img, shift=shift, scale=scale, eps=1e-6)
    for i in range(9):
        row = (x[i] - x[i].mean()) / torch.sqrt(x[i].var(unbiased=False) + 1e-6) * w + b
        torch.testing.assert_close(got[i], row * (1 + scale[img[i]]) + shift[img[i]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.ln_modulate(x, w, b), F.layer_norm(x, (6,), w, b, 1e-6))


def test_gated_add_reference_is_the_formula():
    x, img, _, _, gate, _ = rows_data(9, 6, 3, torch.float32, 1, False)
    h = torch.randn(9, 6)
    want = h + (1 + gate[img]) * x
    assert ref.gated_add(h, x, gate, img) is h
    torch.testing.assert_close(h, want)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("modulate", [False, True], ids=["affine", "modulated"])
@pytest.mark.parametrize("strided", [False, True], ids=["rows", "strided"])
def test_triton_ln_modulate_matches_torch(dtype, shape, modulate, strided):
    n, D = shape
    x, img, w, b, shift, scale = rows_data(n, D, 3, dtype, 2, strided)
    kw = dict(img=img, shift=shift, scale=scale) if modulate else {}
    want = ref.ln_modulate(x, w, b, **kw)
    got = K.backends()["triton"].ln_modulate(x, w, b, **kw)
    assert got.dtype == dtype
    assert_close(got, want, dtype, f"ln_modulate {shape} modulate={modulate} strided={strided}")


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("strided", [False, True], ids=["rows", "strided-y"])
def test_triton_gated_add_matches_torch(dtype, shape, strided):
    n, D = shape
    y, img, _, _, gate, _ = rows_data(n, D, 4, dtype, 3, strided)
    h0 = torch.randn(n, D, generator=torch.Generator().manual_seed(4)).to(dtype)
    want, got = h0.clone(), h0.clone()
    ref.gated_add(want, y, gate, img)
    assert K.backends()["triton"].gated_add(got, y, gate, img) is got          # in place
    assert_close(got, want, dtype, f"gated_add {shape} strided={strided}")


@needs_triton
def test_triton_gated_add_refuses_strided_destination():
    h = torch.zeros(4, 6)[:, ::2]
    with pytest.raises(ValueError, match="contiguous channels"):
        K.backends()["triton"].gated_add(h, torch.zeros(4, 3), torch.zeros(1, 3), torch.zeros(4, dtype=torch.long))


@needs_triton
def test_triton_gather_takes_strided_index_vectors():
    """The token executor passes (row, col) columns of a coordinate table: strided index vectors."""
    x = torch.randn(2, 3, 8, 8)
    coords = torch.tensor([[0, 1], [3, 2], [1, 1]])
    img = torch.tensor([0, 1, 1])
    kw = dict(size=2, step=2, offset=0)
    want = ref.gather(x.permute(0, 2, 3, 1), img, coords[:, 0], coords[:, 1], **kw)
    got = K.backends()["triton"].gather(x.permute(0, 2, 3, 1), img, coords[:, 0], coords[:, 1], **kw)
    assert_close(got, want, torch.float32, "gather with strided indices")
