"""The sparse executor (SIGE-style gather / conv / scatter on active blocks) against its dense
references: the plain dense forward (all blocks active), `masked_dense_forward` (the exact
semantics of a sparse step), the cost model `step_costs`, and the documented approximation."""
from __future__ import annotations

import pytest
import torch

from nitrogen_core.model import DenseOps
from conftest import structured_masks
from nitrogen_core.sparse import dense_forward, masked_dense_forward, sparse_forward, step_costs

ATOL = 1e-5


@pytest.fixture(scope="module")
def nb(cfg) -> int:
    return cfg.image_size // cfg.block_size          # tiny: 16 px / 4 px blocks = 4x4 blocks


def make_inputs(cfg, batch: int, seed: int, step: float | None = 0.3):
    """x1, and x2 = x1 moved like one sampler step (`step` * noise), or independent noise when
    step is None; distinct t and labels per sample."""
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    noise = torch.randn(x1.shape, generator=gen)
    x2 = noise if step is None else x1 + step * noise
    t = torch.linspace(50, 950, batch)
    labels = torch.arange(batch) % (cfg.num_classes + 1)      # includes the null class
    return x1, x2, t, labels


def pixel_mask(block_mask: torch.Tensor, block: int) -> torch.Tensor:
    return block_mask.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, None]   # (B, 1, H, W)


def dense(unet, x, t, labels, width):
    ops = DenseOps(x.shape[0])
    with torch.no_grad():
        out = unet(x, t, labels, width, ops)
    return out, ops.counter.per_sample


# -- all blocks active: exact ---------------------------------------------------------------------

@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_all_blocks_equals_dense(unet, cfg, nb, width):
    x1, x2, t, labels = make_inputs(cfg, 2, seed=3)
    _, cache, dense_macs = dense_forward(unet, x1, t, labels, width)
    truth, truth_macs = dense(unet, x2, t, labels, width)
    assert torch.equal(dense_macs, truth_macs)
    out, macs = sparse_forward(unet, x2, t, labels, cache, torch.ones(2, nb, nb, dtype=torch.bool))
    torch.testing.assert_close(out, truth, atol=ATOL, rtol=0)
    assert torch.equal(macs, truth_macs)
    # the cache now holds the new forward's activations
    _, fresh, _ = dense_forward(unet, x2, t, labels, width)
    for a, b in zip(cache.outputs, fresh.outputs):
        torch.testing.assert_close(a.buf, b.buf, atol=ATOL, rtol=0)


# -- a subset of blocks: equal to the masked dense reference ---------------------------------

@pytest.mark.parametrize("seed, width", [(0, 1.0), (1, 1.0), (2, 0.5), (3, 0.25)])
def test_subset_matches_masked_dense(unet, cfg, nb, seed, width):
    x1, x2, t, labels = make_inputs(cfg, 4, seed=seed)
    prev, cache, _ = dense_forward(unet, x1, t, labels, width)
    mask = structured_masks(nb, seed)
    ref_cache = cache.clone()
    out, macs = sparse_forward(unet, x2, t, labels, cache, mask)
    ref = masked_dense_forward(unet, x2, t, labels, ref_cache, mask)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    for a, b in zip(cache.outputs, ref_cache.outputs):          # every cached activation agrees too
        torch.testing.assert_close(a.buf, b.buf, atol=ATOL, rtol=0)
    # outside the active blocks: exactly the previous output
    keep = ~pixel_mask(mask, cfg.block_size).expand_as(out)
    assert torch.equal(out[keep], prev[keep])
    assert int(macs[0]) == 0                                    # sample 0 had no block
    assert torch.equal(out[0], prev[0])
    # a second sparse step on top of the first, with another mask, still agrees
    mask2 = structured_masks(nb, seed + 100).roll(1, dims=0)
    out2 = sparse_forward(unet, x1, t, labels, cache, mask2)[0]
    ref2 = masked_dense_forward(unet, x1, t, labels, ref_cache, mask2)
    torch.testing.assert_close(out2, ref2, atol=ATOL, rtol=0)


def test_chained_sparse_steps_match_masked_dense(unet, cfg, nb):
    """A sampler-like chain of sparse steps on one cache (new input, new mask each step): the
    executor's state carried between steps (cached activations and anything derived from them,
    e.g. GroupNorm statistics) must keep matching the dense reference step after step."""
    gen = torch.Generator().manual_seed(11)
    x, _, t, labels = make_inputs(cfg, 3, seed=11)
    _, cache, _ = dense_forward(unet, x, t, labels, 0.75)
    ref_cache = cache.clone()
    for step in range(8):
        x = x + 0.2 * torch.randn(x.shape, generator=gen)
        mask = torch.rand(3, nb, nb, generator=gen) < (0.2 + 0.1 * step)
        if step == 5:
            mask[:] = True                          # an all-blocks step in the middle of the chain
        out, _ = sparse_forward(unet, x, t, labels, cache, mask)
        ref = masked_dense_forward(unet, x, t, labels, ref_cache, mask)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0, msg=lambda m: f"step {step}: {m}")


def test_single_corner_and_edge_blocks(unet, cfg, nb):
    """One block per sample, at each corner and mid-edge (the halo reads the zero border)."""
    spots = [(0, 0), (0, nb - 1), (nb - 1, 0), (nb - 1, nb - 1), (0, 1), (nb - 1, 2), (1, 0), (2, nb - 1)]
    mask = torch.zeros(len(spots), nb, nb, dtype=torch.bool)
    for i, (y, x) in enumerate(spots):
        mask[i, y, x] = True
    x1, x2, t, labels = make_inputs(cfg, len(spots), seed=7)
    _, cache, _ = dense_forward(unet, x1, t, labels, 1.0)
    ref_cache = cache.clone()
    out, _ = sparse_forward(unet, x2, t, labels, cache, mask)
    ref = masked_dense_forward(unet, x2, t, labels, ref_cache, mask)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_no_block_active(unet, cfg, nb):
    x1, x2, t, labels = make_inputs(cfg, 2, seed=4)
    prev, cache, _ = dense_forward(unet, x1, t, labels, 1.0)
    before = [p.buf.clone() for p in cache.outputs]
    out, macs = sparse_forward(unet, x2, t, labels, cache, torch.zeros(2, nb, nb, dtype=torch.bool))
    assert torch.equal(out, prev)
    assert macs.tolist() == [0, 0]
    assert all(torch.equal(a, p.buf) for a, p in zip(before, cache.outputs))   # cache untouched


# -- MACs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [0.5, 1.0])
def test_sparse_macs_follow_cost_model(unet, cfg, nb, width):
    costs = step_costs(unet, width)
    x1, x2, t, labels = make_inputs(cfg, nb * nb + 1, seed=5)
    _, cache, dense_macs = dense_forward(unet, x1, t, labels, width)
    assert costs.dense == int(dense_macs[0])
    assert costs.blocks == nb * nb
    # sample k has k active blocks, scattered by a fixed permutation
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(nb * nb + 1, nb * nb, dtype=torch.bool)
    for k in range(nb * nb + 1):
        mask[k, torch.randperm(nb * nb, generator=gen)[:k]] = True
    mask = mask.view(-1, nb, nb)
    _, macs = sparse_forward(unet, x2, t, labels, cache, mask)
    counts = mask.flatten(1).sum(1)
    assert torch.equal(macs, costs.of(counts))
    assert int(macs[0]) == 0
    # linear in the block count: constant increments, and all blocks cost exactly the dense step
    steps = macs[2:] - macs[1:-1]
    assert (steps == costs.per_block).all() and costs.per_block > 0
    assert int(macs[-1]) == costs.dense
    # a quarter of the blocks costs less than a dense step (and not more than base + a quarter)
    quarter = nb * nb // 4
    assert int(macs[quarter]) < costs.dense
    assert int(macs[quarter]) == costs.base + quarter * costs.per_block


# -- the approximation ---------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0.3, None], ids=["x2=x1+0.3noise", "x2=independent"])
def test_approximation_error_on_active_blocks(unet, cfg, nb, step):
    """Sparse recompute vs the true dense forward of the new input, on the active blocks only.
    Stale context (inactive neighbours, mixed GroupNorm statistics) makes it an approximation;
    it must still move the active blocks towards the truth compared with reusing the cache."""
    rows = []
    for seed in range(3):
        x1, x2, t, labels = make_inputs(cfg, 4, seed=10 + seed, step=step)
        prev, cache, _ = dense_forward(unet, x1, t, labels, 1.0)
        gen = torch.Generator().manual_seed(seed)
        mask = torch.rand(4, nb, nb, generator=gen) < 0.5
        mask[:, 0, 0] = True                                     # at least one block per sample
        out, _ = sparse_forward(unet, x2, t, labels, cache, mask)
        truth, _ = dense(unet, x2, t, labels, 1.0)
        active = pixel_mask(mask, cfg.block_size).expand_as(out)
        err_sparse = (out - truth)[active]
        err_reuse = (prev - truth)[active]
        assert torch.isfinite(err_sparse).all()
        rms_sparse = err_sparse.pow(2).mean().sqrt().item()
        rms_reuse = err_reuse.pow(2).mean().sqrt().item()
        rms_truth = truth[active].pow(2).mean().sqrt().item()
        rows.append((seed, mask.float().mean().item(), rms_sparse, rms_reuse, rms_truth))
        assert rms_sparse < rms_reuse
    what = "x2 = x1 + 0.3 noise" if step is not None else "x2 independent of x1"
    print(f"\nsparse approximation on active blocks (tiny, width 1.0, {what}):")
    for seed, frac, s, r, n in rows:
        print(f"  seed {seed}: active {frac:.2f}, RMS err sparse {s:.3e}, reuse cache {r:.3e}, "
              f"|truth| {n:.3e}, ratio {s / r:.3f}")
