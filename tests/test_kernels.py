"""kernels/: the Triton ops against the torch reference (Triton interpreted on the CPU), the torch
reference against plain indexing, the dispatch, and the whole sparse U-Net through either backend.

TRITON_INTERPRET=1 is set in conftest.py before anything imports triton. Shapes are small: the
interpreter runs every program in Python.
"""
from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nitrogen_core._kernels import load_kernels
from nitrogen_core.sparse import dense_forward, sparse_forward

K = load_kernels()
ref = K.torch_ref
HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (pip install triton)")
REPO = Path(__file__).resolve().parent.parent

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}   # atol, rtol


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Per-dtype tolerance; on failure, name the first mismatching indices and values."""
    atol, rtol = TOL[dtype]
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.float(), want.float()
    bad = ((g - w).abs() > atol + rtol * w.abs()) | (g.isnan() != w.isnan())
    if bad.any():
        idx = bad.nonzero()[:8].tolist()
        pairs = ", ".join(f"{tuple(i)}: {g[tuple(i)].item():.6g} vs {w[tuple(i)].item():.6g}" for i in idx)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} values differ ({dtype}); first: {pairs}")


def bordered(B: int, H: int, C: int, dtype: torch.dtype, seed: int, layout: str) -> torch.Tensor:
    """A (B, H+2, H+2, C) buffer with a zero border: channels-last memory, or an NCHW tensor's view."""
    gen = torch.Generator().manual_seed(seed)
    inner = torch.randn(B, C, H, H, generator=gen).to(dtype)
    nchw = F.pad(inner, (1, 1, 1, 1))                                     # (B, C, H+2, H+2)
    view = nchw.permute(0, 2, 3, 1)                                       # logical (B, H+2, H+2, C)
    return view.contiguous() if layout == "nhwc" else view


def blocks(B: int, nb: int, which: str, seed: int) -> tuple[torch.Tensor, ...]:
    """Active block indices (img, by, bx): none, all, or a random half (which covers borders too)."""
    if which == "none":
        mask = torch.zeros(B, nb, nb, dtype=torch.bool)
    elif which == "all":
        mask = torch.ones(B, nb, nb, dtype=torch.bool)
    else:
        mask = torch.rand(B, nb, nb, generator=torch.Generator().manual_seed(seed)) < 0.5
        mask[0, 0, 0] = mask[0, nb - 1, nb - 1] = mask[B - 1, 0, nb - 1] = mask[B - 1, nb - 1, 0] = True  # corners
    return mask.nonzero(as_tuple=True)


# Window geometries the executor uses, for an interior of H pixels cut into blocks of `block`:
# 3x3 conv (size block+2, step block, offset 0), stride-2 conv (2*block+1, 2*block, 0),
# a block itself (block, block, 1). Blocks per side: H // block, or H // (2*block) for stride 2.
GEOMETRIES = {"conv3x3": lambda b: (b + 2, b, 0, 1), "stride2": lambda b: (2 * b + 1, 2 * b, 0, 2),
              "block": lambda b: (b, b, 1, 1)}


def test_torch_gather_matches_plain_indexing():
    src = bordered(2, 8, 5, torch.float32, 0, "nhwc")
    img, by, bx = blocks(2, 2, "half", 1)
    scale, shift = torch.randn(2, 5), torch.randn(2, 5)
    got = ref.gather(src, img, by, bx, size=6, step=4, offset=0, scale=scale, shift=shift)
    for i in range(len(img)):
        r0, c0 = int(by[i]) * 4, int(bx[i]) * 4
        win = src[img[i], r0:r0 + 6, c0:c0 + 6]                               # (6, 6, C)
        want = F.silu(win * scale[img[i]] + shift[img[i]])
        rows, cols = torch.arange(r0, r0 + 6), torch.arange(c0, c0 + 6)
        inside = ((rows >= 1) & (rows < 9))[:, None] & ((cols >= 1) & (cols < 9))[None, :]
        want = want * inside[..., None]
        assert torch.allclose(got[i].permute(1, 2, 0), want, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("which", ["none", "half", "all"])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm+silu"])
def test_triton_gather_matches_torch(dtype, geometry, which, layout, norm):
    block, C, B = 4, 5, 2                                                  # C not a multiple of 8
    size, step, offset, per = GEOMETRIES[geometry](block)
    H = 12                                                                 # 3 blocks of 4 per side
    nb = H // (block * per) if per == 2 else H // block
    src = bordered(B, H, C, dtype, 3, layout)
    img, by, bx = blocks(B, nb, which, 4)
    kw = dict(size=size, step=step, offset=offset)
    if norm:
        gen = torch.Generator().manual_seed(5)
        kw.update(scale=torch.randn(B, C, generator=gen).to(dtype), shift=torch.randn(B, C, generator=gen).to(dtype))
    want = ref.gather(src, img, by, bx, **kw)
    got = K.backends()["triton"].gather(src, img, by, bx, **kw)
    assert got.dtype == dtype
    assert_close(got, want, dtype, f"gather {geometry} {which} {layout} norm={norm}")


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("which", ["none", "half", "all"])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_triton_scatter_matches_torch(dtype, which, layout, residual):
    block, C, B, H = 4, 12, 2, 12
    triton_ops = K.backends()["triton"]
    img, by, bx = blocks(B, H // block, which, 6)
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(len(img), C, block, block, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    res = torch.randn(len(img), C, block, block, generator=gen).to(dtype) if residual else None
    want, got = bordered(B, H, C, dtype, 8, layout), bordered(B, H, C, dtype, 8, layout)
    ref.scatter(want, y, img, by, bx, offset=1, residual=res)
    triton_ops.scatter(got, y, img, by, bx, offset=1, residual=res)
    assert_close(got, want, dtype, f"scatter {which} {layout} residual={residual}")
    if which == "none":
        assert torch.equal(got, bordered(B, H, C, dtype, 8, layout))      # nothing active: untouched


@needs_triton
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
def test_sparse_unet_is_the_same_through_either_backend(unet, monkeypatch, fraction):
    """The executor goes through kernels/ only: switching the backend changes no output."""
    torch.manual_seed(0)
    B = 2
    x, t, labels = torch.randn(B, 3, 16, 16), torch.full((B,), 400.0), torch.tensor([0, 2])
    _, cache, _ = dense_forward(unet, x, t, labels, 1.0)
    x2 = x + 0.1 * torch.randn_like(x)
    nb = unet.cfg.image_size // unet.cfg.block_size
    mask = torch.rand(B, nb, nb, generator=torch.Generator().manual_seed(1)) < fraction
    triton_ops, calls = K.backends()["triton"], []
    real_gather = triton_ops.gather
    monkeypatch.setattr(triton_ops, "gather", lambda *a, **k: calls.append(1) or real_gather(*a, **k))
    outs = {}
    for name in ("torch", "triton"):
        monkeypatch.setenv("NITROGEN_KERNELS", name)
        c = cache.clone()
        outs[name] = (sparse_forward(unet, x2, t, labels, c, mask)[0], [p.buf for p in c.outputs])
    # the triton run really used it (all-active steps run dense ops, so 0.9 must leave one out)
    assert (len(calls) > 0) == bool(mask.any()) and not mask.all()
    assert_close(outs["triton"][0], outs["torch"][0], torch.float32, f"U-Net output at {fraction}")
    for k, (a, b) in enumerate(zip(outs["triton"][1], outs["torch"][1])):
        assert_close(a, b, torch.float32, f"cached op {k} at {fraction}")


# -- dispatch -----------------------------------------------------------------------------------------

def test_dispatch_defaults_and_override(monkeypatch):
    monkeypatch.delenv("NITROGEN_KERNELS", raising=False)
    assert K.backend_for("cpu") is ref
    monkeypatch.setenv("NITROGEN_KERNELS", "torch")
    assert K.backend_for("cuda") is ref
    monkeypatch.setenv("NITROGEN_KERNELS", "cutlass")
    with pytest.raises(ValueError, match=r"NITROGEN_KERNELS='cutlass' is not one of \['torch', 'triton'\]"):
        K.backend_for("cpu")


@needs_triton
def test_dispatch_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("NITROGEN_KERNELS", "triton")
    assert K.backend_for("cpu") is K.backends()["triton"]                  # TRITON_INTERPRET=1 (conftest)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        K.backend_for("cpu")


def test_kernels_import_and_fall_back_without_triton():
    """With triton unimportable, the package imports, CPU gets torch, and asking for triton says why."""
    code = textwrap.dedent(f"""
        import importlib.abc, json, os, sys
        class NoTriton(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("No module named 'triton' (blocked by the test)")
        sys.meta_path.insert(0, NoTriton())
        sys.path.insert(0, {str(REPO)!r})
        from nitrogen_core._kernels import load_kernels
        k = load_kernels()
        out = {{"cpu": k.backend_for("cpu").__name__, "cuda": k.backend_for("cuda").__name__,
               "triton": k.backends()["triton"]}}
        os.environ["NITROGEN_KERNELS"] = "triton"
        try:
            k.backend_for("cuda")
        except RuntimeError as err:
            out["error"] = str(err)
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cpu"].endswith("torch_ref") and out["cuda"].endswith("torch_ref") and out["triton"] is None
    assert "unavailable" in out["error"] and "pip install triton" in out["error"]


def test_gather_and_scatter_cover_every_block_position():
    """Sanity of the shared geometry: scattering every block of a buffer's gathered interior back
    reproduces it exactly (both use the same row arithmetic)."""
    src = bordered(2, 8, 3, torch.float32, 9, "nhwc")
    img, by, bx = blocks(2, 2, "all", 0)
    y = ref.gather(src, img, by, bx, size=4, step=4, offset=1)
    dst = torch.zeros_like(src)
    ref.scatter(dst, y, img, by, bx, offset=1)
    assert torch.equal(dst, src)
    assert sorted(itertools.product(range(2), range(2))) == sorted(set(zip(by.tolist(), bx.tolist())))
