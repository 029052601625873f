"""Token-sparse execution of the transformer (token_sparse.py) against its dense references: the
dense forward (every unit active), `masked_dense_forward` (the exact semantics of a sparse step),
MAC accounting (formula, torch's FLOP counter, costs()), batch invariance of the executor, and
the sampler on a DiT model (tau = 0 is full compute; batch = sub-batches = singles)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import perturbed, structured_masks
from nitrogen_core._kernels import load_kernels
from nitrogen_core.config import preset
from nitrogen_core.model import NitroGenModel
from nitrogen_core.model.dit import DiT
from nitrogen_core.sampler import SamplerSettings, make_noise, sample
from nitrogen_core.token_sparse import (DiTExecutor, dense_forward, masked_dense_forward, sparse_forward,
                                        step_costs)
from test_dit import counted_macs
from test_kernels import assert_close, needs_triton

ATOL = 1e-5


@pytest.fixture(scope="module", params=[0, 1], ids=["disjoint", "overlap1"])
def dcfg(request):
    # 16 px, 2 px tokens, 4 px units: 4x4 units of 4 tokens; tokens' windows disjoint or reaching 1 px
    # past their edges (sparse steps then blend fresh and cached output windows)
    return preset("tiny-dit", dit_overlap=request.param)


@pytest.fixture(scope="module")
def dit(dcfg) -> DiT:
    torch.manual_seed(0)
    return perturbed(DiT(dcfg)).eval()


@pytest.fixture(scope="module")
def nb(dcfg) -> int:
    return dcfg.image_size // dcfg.block_size


def make_inputs(cfg, batch: int, seed: int, step: float = 0.3):
    """x1, and x2 = x1 moved like one sampler step; distinct t and labels (null class included)."""
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    x2 = x1 + step * torch.randn(x1.shape, generator=gen)
    return x1, x2, torch.linspace(50, 950, batch), torch.arange(batch) % (cfg.num_classes + 1)


def pixel_mask(blocks: torch.Tensor, block: int, reach: int = 0) -> torch.Tensor:
    """(B, nb, nb) units -> (B, 1, H, W) their pixels, grown by `reach` px (overlapping output windows)."""
    pix = blocks.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, None]
    if reach:
        pix = F.max_pool2d(pix.float(), 2 * reach + 1, stride=1, padding=reach) > 0
    return pix


# -- every unit active: exact -----------------------------------------------------------------------

@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_all_active_equals_dense(dit, dcfg, nb, width):
    x1, x2, t, labels = make_inputs(dcfg, 3, seed=1)
    _, cache, _ = dense_forward(dit, x1, t, labels, width)
    with torch.no_grad():
        truth = dit(x2, t, labels, width)
    out, macs = sparse_forward(dit, x2, t, labels, cache, torch.ones(3, nb, nb, dtype=torch.bool))
    torch.testing.assert_close(out, truth, atol=ATOL, rtol=0)
    assert macs.tolist() == [dit.macs(width, (dcfg.image_size // dcfg.token_size) ** 2)] * 3
    _, fresh, _ = dense_forward(dit, x2, t, labels, width)          # the cache now holds x2's forward
    for a, b in zip([*cache.kv, cache.out], [*fresh.kv, fresh.out]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    # The token path itself (a whole batch fully active takes the dense path): sample 0 fully
    # active beside a sample with one unit.
    _, cache, _ = dense_forward(dit, x1, t, labels, width)
    blocks = torch.zeros(3, nb, nb, dtype=torch.bool)
    blocks[0], blocks[1, 0, 0] = True, True
    out, macs = sparse_forward(dit, x2, t, labels, cache, blocks)
    torch.testing.assert_close(out[0], truth[0], atol=ATOL, rtol=0)
    assert int(macs[0]) == dit.macs(width, (dcfg.image_size // dcfg.token_size) ** 2)


# -- some units active: the masked dense reference ----------------------------------------------------

@pytest.mark.parametrize("seed, width", [(0, 1.0), (1, 1.0), (2, 0.5), (3, 0.25)])
def test_subset_matches_masked_dense(dit, dcfg, nb, seed, width):
    x1, x2, t, labels = make_inputs(dcfg, 4, seed=seed)
    prev, cache, _ = dense_forward(dit, x1, t, labels, width, keep_inputs=True)
    mask = structured_masks(nb, seed, uneven=True)
    ref_cache = cache.clone()
    out, _ = sparse_forward(dit, x2, t, labels, cache, mask)
    ref = masked_dense_forward(dit, x2, t, labels, ref_cache, mask)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    for name in ("kv", "inputs"):
        for i, (a, b) in enumerate(zip(getattr(cache, name), getattr(ref_cache, name))):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"{name}[{i}]")
    torch.testing.assert_close(cache.out, ref_cache.out, atol=ATOL, rtol=0)
    # beyond the active units' output windows the output is the cached one, bit for bit; inside it changed
    reach = pixel_mask(mask, dcfg.block_size, dcfg.dit_overlap).expand_as(out)
    assert torch.equal(out[~reach], prev[~reach])
    pix = pixel_mask(mask, dcfg.block_size).expand_as(out)
    assert not torch.allclose(out[pix], prev[pix])


def test_repeated_sparse_steps_follow_the_reference(dit, dcfg, nb):
    """Three sparse steps in a row with different masks (cache state carries over)."""
    x, _, t, labels = make_inputs(dcfg, 2, seed=5)
    _, cache, _ = dense_forward(dit, x, t, labels, 1.0, keep_inputs=True)
    ref_cache = cache.clone()
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        x = x + 0.2 * torch.randn(x.shape, generator=gen)
        mask = torch.rand(2, nb, nb, generator=gen) < 0.3
        out, _ = sparse_forward(dit, x, t, labels, cache, mask)
        torch.testing.assert_close(out, masked_dense_forward(dit, x, t, labels, ref_cache, mask), atol=ATOL, rtol=0)


def test_stale_context_is_the_only_approximation(dit, dcfg, nb):
    """Against the true dense forward of x2, a sparse step on a cache of x1 errs only through stale
    keys/values: less than reusing the cache, and nothing when the input did not change."""
    x1, x2, t, labels = make_inputs(dcfg, 2, seed=7, step=0.1)
    prev, cache, _ = dense_forward(dit, x1, t, labels, 1.0)
    mask = torch.zeros(2, nb, nb, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    with torch.no_grad():
        truth = dit(x2, t, labels, 1.0)
    out, _ = sparse_forward(dit, x2, t, labels, cache.clone(), mask)
    pix = pixel_mask(mask, dcfg.block_size).expand_as(out)
    assert (out - truth)[pix].abs().max() < 0.5 * (prev - truth)[pix].abs().max()
    same, _ = sparse_forward(dit, x1, t, labels, cache.clone(), mask)
    torch.testing.assert_close(same, prev, atol=ATOL, rtol=0)


# -- MACs --------------------------------------------------------------------------------------------

def test_sparse_macs_by_hand(dit, dcfg, nb):
    """Per sample: the fixed cost once if anything runs, then the per-token cost (queries see all
    N = 64 keys) per active token, 4 tokens per unit. The tiny config's numbers written out
    (D 32, 4 heads of 8, MLP 64, depth 2, C p p = 12):
    fixed = 2*32*32 (time MLP) + 2*32*64 (per block: time terms) + 32*128 (shared adaLN) + 32*64 (final) = 12288
    per token = 12*32 + 2*(3*32*32 + 2*64*32 + 32*32 + 2*32*64) + 32*12 = 25344;
    with overlap 1 the windows are 4 px: C k k = 48, per token 48*32 + 24576 + 32*48 = 27648."""
    per_token = {0: 25344, 1: 27648}[dcfg.dit_overlap]
    x1, x2, t, labels = make_inputs(dcfg, 4, seed=8)
    _, cache, dense = dense_forward(dit, x1, t, labels, 1.0)
    assert dense.tolist() == [12288 + 64 * per_token] * 4
    mask = structured_masks(nb, 8, uneven=True)
    _, macs = sparse_forward(dit, x2, t, labels, cache, mask)
    units = mask.flatten(1).sum(1)
    assert macs.tolist() == [0 if n == 0 else 12288 + 4 * int(n) * per_token for n in units]


def test_sparse_macs_are_what_runs(dit, dcfg, nb):
    """torch's FLOP counter over a sparse step (equal counts: no padded queries) equals the reported MACs."""
    x1, x2, t, labels = make_inputs(dcfg, 3, seed=9)
    mask = torch.zeros(3, nb * nb, dtype=torch.bool)
    mask[:, :5] = True
    for width in (0.25, 1.0):
        _, cache, _ = dense_forward(dit, x1, t, labels, width)
        _, macs = sparse_forward(dit, x2, t, labels, cache.clone(), mask.view(3, nb, nb))
        counted = counted_macs(lambda: sparse_forward(dit, x2, t, labels, cache, mask.view(3, nb, nb)))
        assert counted == int(macs.sum())


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_costs_match_what_step_counts(dit, dcfg, nb, width):
    costs = step_costs(dit, width)
    assert costs.blocks == nb * nb and costs.base + costs.blocks * costs.per_block == costs.dense
    ex = DiTExecutor(dit, record=True)
    x1, x2, t, labels = make_inputs(dcfg, 4, seed=10)
    everyone = torch.ones(4, dtype=torch.bool)
    _, macs = ex.step(x1, t, labels, width, everyone, torch.ones(4, nb, nb, dtype=torch.bool))
    assert macs.tolist() == [costs.dense] * 4
    mask = structured_masks(nb, 10, uneven=True)
    _, macs = ex.step(x2, t, labels, width, torch.zeros(4, dtype=torch.bool), mask)
    assert torch.equal(macs, costs.of(mask.flatten(1).sum(1)))
    assert torch.equal(costs.max_blocks(macs), mask.flatten(1).sum(1))


# -- the executor ----------------------------------------------------------------------------------------

def run_steps(dit, x, t, labels, plan, kv_forecast: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Drive one executor through `plan`: (x shift, width, dense_rows, blocks) per step."""
    ex = DiTExecutor(dit, record=True, kv_forecast=kv_forecast)
    outs, macs = [], []
    for shift, width, dense_rows, blocks in plan:
        out, m = ex.step(x + shift, t, labels, width, dense_rows, blocks)
        outs.append(out.clone())
        macs.append(m.clone())
    return outs, macs


@pytest.mark.parametrize("kv_forecast", [0.0, 1.0])
def test_batch_invariance(dit, dcfg, nb, kv_forecast):
    """Batch 4 = 2 x 2 = singles: outputs within float noise, MACs equal, over dense steps, steps that
    mix dense and sparse rows, sparse steps with uneven counts and rows with nothing to do; with
    stale or forecast keys/values."""
    B = 4
    x, _, t, labels = make_inputs(dcfg, B, seed=11)
    gen = torch.Generator().manual_seed(12)
    plan = [(0.0, 1.0, torch.ones(B, dtype=torch.bool), torch.ones(B, nb, nb, dtype=torch.bool))]
    for k in range(4):
        shift = 0.2 * torch.randn(x.shape, generator=gen)
        dense_rows = torch.tensor([k == 1, False, k == 3, False])
        blocks = torch.rand(B, nb, nb, generator=gen) < torch.tensor([0.1, 0.3, 0.6, 0.0])[:, None, None]
        plan.append((shift, 1.0, dense_rows, blocks | dense_rows[:, None, None]))
    whole, whole_macs = run_steps(dit, x, t, labels, plan, kv_forecast)
    for groups in ([[0, 1], [2, 3]], [[0], [1], [2], [3]]):
        for rows in groups:
            r = torch.tensor(rows)
            sub_plan = [(s if isinstance(s, float) else s[r], w, d[r], b[r]) for s, w, d, b in plan]
            outs, macs = run_steps(dit, x[r], t[r], labels[r], sub_plan, kv_forecast)
            for i, (o, m) in enumerate(zip(outs, macs)):
                torch.testing.assert_close(o, whole[i][r], atol=ATOL, rtol=0, msg=f"step {i} rows {rows}")
                assert torch.equal(m, whole_macs[i][r])


def test_executor_holds_one_cache_and_frees_it_on_rebuild(dit, dcfg, nb, monkeypatch):
    x, _, t, labels = make_inputs(dcfg, 2, seed=13)
    every, none = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    ex = DiTExecutor(dit, record=True)
    assert ex.width is None and ex.nbytes == 0
    ex.step(x, t, labels, 1.0, every, torch.ones(2, nb, nb, dtype=torch.bool))
    N, iw, depth, ckk = 64, 32, dcfg.dit_depth, 3 * (2 + 2 * dcfg.dit_overlap) ** 2
    assert ex.width == 1.0
    assert ex.nbytes == 4 * (depth * 2 * N * 2 * iw + 2 * N * ckk + x.numel())  # kv, out windows, last output
    seen = []
    import nitrogen_core.token_sparse as ts
    real = ts.dense_forward
    monkeypatch.setattr(ts, "dense_forward", lambda *a, **k: seen.append(ex.cache) or real(*a, **k))
    ex.step(x, t, labels, 0.5, every, torch.ones(2, nb, nb, dtype=torch.bool))   # width change: rebuilt
    assert seen == [None] and ex.width == 0.5 and ex.nbytes < 4 * (depth * 2 * N * 2 * iw + 2 * N * ckk + x.numel())
    with pytest.raises(RuntimeError, match="dense rows at width 1.0 into a cache at width 0.5"):
        ex.step(x, t, labels, 1.0, torch.tensor([True, False]), torch.ones(2, nb, nb, dtype=torch.bool))
    fresh = DiTExecutor(dit, record=True)
    with pytest.raises(RuntimeError, match="needs the cache of an earlier dense step"):
        fresh.step(x, t, labels, 1.0, none, torch.ones(2, nb, nb, dtype=torch.bool))
    norec = DiTExecutor(dit, record=False)
    norec.step(x, t, labels, 1.0, every, torch.ones(2, nb, nb, dtype=torch.bool))
    assert norec.cache is None and norec.nbytes == x.numel() * 4


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_kv_forecast_continues_each_tokens_line(dit, dcfg, nb, strength):
    """Two dense steps, then partial ones: a sparse step attends to last + f * age * slope for the
    tokens it leaves out (slope from each token's last two computations), and to fresh keys/values
    for the tokens it computes. Checked against sparse_forward on a cache holding that forecast."""
    x, _, t, labels = make_inputs(dcfg, 2, seed=21)
    gen = torch.Generator().manual_seed(22)
    xs = [x + 0.1 * k * torch.randn(x.shape, generator=gen) for k in range(5)]
    every, none = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    all_units = torch.ones(2, nb, nb, dtype=torch.bool)
    kv = [dense_forward(dit, xs[k], t, labels, 1.0)[1].kv for k in (0, 1)]      # each step's fresh keys/values
    ex, plain = DiTExecutor(dit, record=True, kv_forecast=strength), DiTExecutor(dit, record=True)
    for k in (0, 1):
        ex.step(xs[k], t, labels, 1.0, every, all_units)
        plain.step(xs[k], t, labels, 1.0, every, all_units)
    assert ex.nbytes == plain.nbytes + 2 * sum(4 * a.numel() for a in kv[1])     # last and slope per block
    g = dcfg.block_size // dcfg.token_size
    masks = [torch.rand(2, nb, nb, generator=gen) < 0.4 for _ in range(2)]
    last, slope, age = kv[1], [b - a for a, b in zip(kv[0], kv[1])], torch.zeros(2, nb * nb * g * g, 1)
    for k, mask in zip((2, 3), masks):
        want_cache = ex.cache.clone()
        for i in range(len(last)):
            want_cache.kv[i].copy_(last[i] + strength * (age + 1) * slope[i])
        want, _ = sparse_forward(dit, xs[k], t, labels, want_cache, mask)
        got, _ = ex.step(xs[k], t, labels, 1.0, none, mask)
        computed = mask.reshape(2, -1).repeat_interleave(g * g, 1)[..., None]      # (B, N, 1)
        assert computed.any() and not computed.all()
        torch.testing.assert_close(got[mask.repeat_interleave(dcfg.block_size, 1)
                                       .repeat_interleave(dcfg.block_size, 2)[:, None].expand_as(got)],
                                   want[mask.repeat_interleave(dcfg.block_size, 1)
                                        .repeat_interleave(dcfg.block_size, 2)[:, None].expand_as(want)],
                                   atol=ATOL, rtol=0)
        fresh = want_cache.kv                                                     # computed tokens' new keys/values
        slope = [torch.where(computed, (f - l) / (age + 1), s) for f, l, s in zip(fresh, last, slope)]
        last = [torch.where(computed, f, l) for f, l in zip(fresh, last)]
        age = torch.where(computed, torch.zeros_like(age), age + 1)


def test_kv_forecast_is_the_transformers_only(dcfg):
    from nitrogen_core.errors import NitroGenInputError
    unet = NitroGenModel(preset("tiny")).eval()
    noise, labels = make_noise(unet.config, 1, 0), torch.tensor([0])
    with pytest.raises(NitroGenInputError) as info:
        sample(unet, noise, labels, SamplerSettings(steps=4, kv_forecast=1.0))
    assert "kv_forecast=1.0 applies to the transformer backbone" in str(info.value)
    assert "\n" not in str(info.value)


def test_model_executor_is_the_token_executor(dcfg):
    assert isinstance(NitroGenModel(dcfg).executor(True), DiTExecutor)


@needs_triton
@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_sparse_dit_is_the_same_through_either_backend(dit, dcfg, nb, monkeypatch, fraction):
    """The executor's fused pieces go through kernels/: switching the backend changes no result."""
    x1, x2, t, labels = make_inputs(dcfg, 2, seed=14)
    _, cache, _ = dense_forward(dit, x1, t, labels, 1.0)
    mask = torch.rand(2, nb, nb, generator=torch.Generator().manual_seed(15)) < fraction
    triton_ops, calls = load_kernels().backends()["triton"], []
    real = triton_ops.ln_modulate
    monkeypatch.setattr(triton_ops, "ln_modulate", lambda *a, **k: calls.append(1) or real(*a, **k))
    outs = {}
    for name in ("torch", "triton"):
        monkeypatch.setenv("NITROGEN_KERNELS", name)
        c = cache.clone()
        outs[name] = (sparse_forward(dit, x2, t, labels, c, mask)[0], c)
    assert calls and not mask.all()                # a fully active batch takes the dense path
    assert_close(outs["triton"][0], outs["torch"][0], torch.float32, f"DiT output at {fraction}")
    for i, (a, b) in enumerate(zip(outs["triton"][1].kv, outs["torch"][1].kv)):
        assert_close(a, b, torch.float32, f"cached kv {i} at {fraction}")


# -- the sampler on a DiT model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dit_model(dcfg) -> NitroGenModel:
    torch.manual_seed(0)
    return perturbed(NitroGenModel(dcfg)).eval()


def test_sampler_threshold_zero_is_full_compute(dit_model):
    noise, labels = make_noise(dit_model.config, 3, 0), torch.tensor([0, 1, 2])
    full = sample(dit_model, noise, labels, SamplerSettings(steps=6, mode="full"))
    zero = sample(dit_model, noise, labels, SamplerSettings(steps=6, threshold=0.0))
    assert torch.equal(full.images, zero.images)
    assert zero.record.macs_used == zero.record.macs_full
    # every token computed: the forecasts have nothing to do
    both = sample(dit_model, noise, labels, SamplerSettings(steps=6, threshold=0.0, forecast=1.0, kv_forecast=1.0))
    assert torch.equal(full.images, both.images)


@pytest.mark.parametrize("forecast", [0.0, 1.0])
def test_sampler_batch_invariance_on_dit(dit_model, forecast):
    """Adaptive sampling with sparse steps, a width schedule and a budget: batch 4 = 2 x 2 = singles;
    with and without the eps and key/value forecasts."""
    settings = SamplerSettings(steps=8, threshold=0.05, budget=0.7, dense_above=0.6, forecast=forecast,
                               kv_forecast=forecast)
    noise, labels = make_noise(dit_model.config, 4, 1), torch.tensor([0, 1, 2, 1])
    whole = sample(dit_model, noise, labels, settings, width_schedule=(0.5, 1.0))
    assert any(not s.dense.all() and s.mask.any() for s in whole.record.steps)              # sparse steps ran
    for groups in ([[0, 1], [2, 3]], [[0], [1], [2], [3]]):
        for rows in groups:
            r = torch.tensor(rows)
            part = sample(dit_model, noise[r], labels[r], settings, width_schedule=(0.5, 1.0))
            torch.testing.assert_close(part.images, whole.images[r], atol=1e-4, rtol=0)
            for a, b in zip(part.record.steps, whole.record.steps):
                assert (a.mask == b.mask[rows]).all() and (a.macs == b.macs[rows]).all()


def test_bench_kernels_transformer_table_runs(capsys):
    """`bench kernels --preset tiny-dit`: one row per active fraction, MACs in proportion (no timing asserted)."""
    from nitrogen_core.bench import sparse_speed
    result = sparse_speed.main(["--preset", "tiny-dit", "--batch", "2", "--repeats", "1", "--json"])
    assert result["backbone"] == "dit" and [r["active"] for r in result["rows"]] == list(sparse_speed.FRACTIONS)
    for r in result["rows"]:
        assert abs(r["mac_ratio"] - r["active"]) < 0.05 and r["target"] == pytest.approx(1.15 * r["active"])
    assert result["rows"][0]["rms_err_sparse"] < 1e-5                   # every unit active: exact
    assert capsys.readouterr().out.count("{") >= 1
