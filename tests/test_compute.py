"""Tests for nitrogen_core.compute: the frozen compute record, its derived numbers, and the heatmaps.

The main fixture is a hand-built record (B=2, 32 px images, 4 px patches -> 8x8 grid, 4 steps)
whose totals are worked out in the comments, so every expected number below is a hand computation.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch

from nitrogen_core.compute import (
    COLORMAPS,
    ComputeRecord,
    StepRecord,
    apply_colormap,
    colormap_lut,
    heatmap_array,
    render_heatmap,
    summary_text,
)
from nitrogen_core.errors import NitroGenInputError

B, G, S = 2, 8, 4  # batch, patch grid side, steps
MACS_FULL = 400


def _masks() -> np.ndarray:
    """bool (S, B, G, G).

    step 0: dense, everything.
    step 1: image 0 -> top-left 4x4 quadrant; image 1 -> row 0.
    step 2: image 0 -> patch (0, 0);          image 1 -> nothing.
    step 3: image 0 -> patches (0, 0), (7, 7); image 1 -> nothing.
    """
    m = np.zeros((S, B, G, G), dtype=bool)
    m[0] = True
    m[1, 0, :4, :4] = True
    m[1, 1, 0, :] = True
    m[2, 0, 0, 0] = True
    m[3, 0, 0, 0] = True
    m[3, 0, 7, 7] = True
    return m


# per step, per image; totals: image 0 -> 180, image 1 -> 130; mean 155; saved 1 - 155/400 = 0.6125
MACS = [[100, 100], [40, 20], [10, 5], [30, 5]]
WIDTHS = [0.5, 1.0, 1.0, 1.0]


def _exited_at() -> np.ndarray:
    """Image 0: everything outside the quadrant and (7, 7) exits at step 1.
    Image 1: row 0 exits at step 2, the rest at step 1."""
    ex = np.full((B, G, G), 1, dtype=np.int32)
    ex[0, :4, :4] = -1
    ex[0, 7, 7] = -1
    ex[1, 0, :] = 2
    return ex


def _steps(masks=None):
    masks = _masks() if masks is None else masks
    return [StepRecord(i, 999 - 250 * i, WIDTHS[i], i == 0, masks[i], np.array(MACS[i])) for i in range(S)]


@pytest.fixture
def record() -> ComputeRecord:
    return ComputeRecord.build(32, 4, _steps(), MACS_FULL, _exited_at(), "adaptive")


def _single_step_record(mask: np.ndarray, exited_at=None) -> ComputeRecord:
    """One step whose compute share equals its mask: share 1 where True, 0 where False."""
    step = StepRecord(0, 999, 1.0, False, mask, np.full(mask.shape[0], 50))
    return ComputeRecord.build(32, 4, [step], 100, exited_at, "adaptive")


def _centre(y: int, x: int, size: int = 256) -> tuple[int, int]:
    """PIL (x, y) of the centre pixel of patch (y, x) in a size x size heatmap."""
    block = size // G
    return x * block + block // 2, y * block + block // 2


# ---------------------------------------------------------------------------------------------
# Derived numbers
# ---------------------------------------------------------------------------------------------

def test_macs_and_savings_match_hand_computation(record):
    assert record.batch == B and record.grid == G and len(record.steps) == S
    np.testing.assert_array_equal(record.macs_used_per_image, [180, 130])
    assert record.macs_used_per_image.dtype == np.int64
    assert record.macs_used == 155
    assert record.saved_fraction == pytest.approx(1 - 155 / 400)
    np.testing.assert_allclose(record.saved_fraction_per_image, [1 - 180 / 400, 1 - 130 / 400])
    assert record.widths == (0.5, 1.0, 1.0, 1.0)


def test_macs_used_rounds_the_batch_mean():
    steps = [StepRecord(0, 10, 1.0, True, np.ones((3, G, G), bool), np.array([10, 11, 11]))]
    rec = ComputeRecord.build(32, 4, steps, 100, None, "full")
    assert rec.macs_used == 11 and isinstance(rec.macs_used, int)  # mean 10.67


def test_compute_share_at_specific_patches(record):
    share = record.compute_share()
    assert share.shape == (B, G, G) and share.dtype == np.float32
    assert share[0, 0, 0] == 1.0    # steps 0, 1, 2, 3
    assert share[0, 1, 1] == 0.5    # steps 0, 1
    assert share[0, 7, 7] == 0.5    # steps 0, 3
    assert share[0, 5, 2] == 0.25   # step 0 only
    assert share[1, 0, 3] == 0.5    # steps 0, 1
    assert share[1, 4, 4] == 0.25   # step 0 only


def test_negative_savings_are_reported_not_clipped():
    # tau = 0: every patch recomputed plus the gate's overhead costs more than full compute.
    steps = [StepRecord(0, 500, 1.0, False, np.ones((1, G, G), bool), np.array([110]))]
    rec = ComputeRecord.build(32, 4, steps, 100, None, "adaptive")
    assert rec.saved_fraction == pytest.approx(-0.1)


def test_to_dict_is_json_safe_and_correct(record):
    d = record.to_dict()
    json.dumps(d, allow_nan=False)  # raises on numpy scalars or NaN
    assert d["steps"] == S and d["batch"] == B and d["mode"] == "adaptive"
    assert d["image_size"] == 32 and d["patch_size"] == 4
    assert d["macs_full"] == 400 and d["macs_used"] == 155
    assert d["saved_fraction"] == pytest.approx(0.6125)
    assert d["macs_used_per_image"] == [180, 130]
    step1 = d["per_step"][1]
    assert step1 == {"index": 1, "timestep": 749, "width": 1.0, "scheduled": False, "dense_fraction": 0.0,
                     "active_fraction": pytest.approx((16 + 8) / 128), "macs_mean": 30.0}
    assert [s["dense_fraction"] for s in d["per_step"]] == [1.0, 0.0, 0.0, 0.0]
    assert [s["width"] for s in d["per_step"]] == WIDTHS
    assert d["exited_fraction"] == pytest.approx((128 - 16 - 1) / 128)


def test_mac_composition_splits_the_macs_by_kind_of_pass():
    # Per image, full compute is 300. Step 0: scheduled dense (100 each). Step 1: image 0 chose a
    # dense pass (100), image 1 ran sparse (30). Step 2: both sparse (20 and 0: sat out).
    steps = [StepRecord(0, 999, 1.0, True, np.ones((2, G, G), bool), np.array([100, 100]), scheduled=True),
             StepRecord(1, 500, 1.0, np.array([True, False]), np.ones((2, G, G), bool), np.array([100, 30])),
             StepRecord(2, 10, 1.0, False, np.ones((2, G, G), bool), np.array([20, 0]))]
    rec = ComputeRecord.build(32, 4, steps, 300, None, "adaptive")
    comp = rec.mac_composition()
    assert comp == pytest.approx({"scheduled": 200 / 600, "chosen_dense": 100 / 600, "sparse": 50 / 600})
    assert sum(comp.values()) == pytest.approx(1 - rec.saved_fraction)
    assert rec.to_dict()["mac_composition"] == comp
    assert [s["scheduled"] for s in rec.to_dict()["per_step"]] == [True, False, False]


def test_step_record_rejects_a_non_bool_scheduled():
    with pytest.raises(NitroGenInputError, match=r"step 0: scheduled=1 must be a bool"):
        StepRecord(0, 999, 1.0, True, np.ones((1, G, G), bool), np.array([1]), scheduled=1)


def test_summary_text(record):
    text = summary_text(record)
    assert "mode adaptive: 4 steps, batch 2" in text
    assert f"saved {100 * record.saved_fraction:.1f}%" in text
    assert "widths by step: 0.5 x1, 1 x3" in text
    assert "1 dense step(s)" in text
    assert "GMACs" in text
    # the fixture's one dense step is not marked scheduled: its MACs are "dense by choice"
    assert "MACs by kind of pass, % of full compute: 0.0 scheduled dense (warm-up, refresh), 25.0 dense by choice, " \
           "13.8 sparse and gate" in text


# ---------------------------------------------------------------------------------------------
# Immutability
# ---------------------------------------------------------------------------------------------

def test_arrays_are_read_only(record):
    with pytest.raises(ValueError):
        record.exited_at[0, 0, 0] = 3
    with pytest.raises(ValueError):
        record.steps[0].mask[0, 0, 0] = False
    with pytest.raises(ValueError):
        record.steps[0].macs[0] = 0
    with pytest.raises(ValueError):
        colormap_lut("inferno")[0] = 7


def test_dataclasses_are_frozen(record):
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.mode = "full"
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.steps[0].width = 0.25
    assert isinstance(record.steps, tuple)


def test_inputs_are_copied_not_aliased():
    mask = np.ones((1, G, G), dtype=bool)
    macs = np.array([100])
    step = StepRecord(0, 999, 1.0, True, mask, macs)
    mask[:] = False
    macs[:] = 0
    assert step.mask.all() and step.macs[0] == 100


def test_accepts_torch_tensors():
    mask = torch.zeros(2, G, G, dtype=torch.bool)
    mask[0, 3, 3] = True
    step = StepRecord(0, 999, 1.0, False, mask, torch.tensor([7, 9]))
    ex = torch.full((2, G, G), -1, dtype=torch.int64)
    rec = ComputeRecord(32, 4, 2, (step,), 16, ex, "adaptive")
    assert isinstance(rec.exited_at, np.ndarray) and rec.exited_at.dtype == np.int32
    assert step.mask.dtype == np.bool_ and step.macs.dtype == np.int64
    assert rec.compute_share()[0, 3, 3] == 1.0 and rec.macs_used == 8


def test_build_defaults_exited_at_to_never(record):
    rec = ComputeRecord.build(32, 4, _steps(_masks()), MACS_FULL, None, "adaptive")
    assert rec.exited_at.shape == (B, G, G) and (rec.exited_at == -1).all()


# ---------------------------------------------------------------------------------------------
# Validation: one-line NitroGenInputError naming the offender
# ---------------------------------------------------------------------------------------------

def _raises_one_line(fragment: str, fn, *args, **kwargs) -> str:
    with pytest.raises(NitroGenInputError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert fragment in msg, msg
    return msg


def test_mask_with_wrong_rank_names_the_shape():
    _raises_one_line("(2, 8)", StepRecord, 0, 999, 1.0, True, np.ones((2, 8), bool), np.array([1, 1]))


def test_macs_length_must_match_mask_batch():
    _raises_one_line("(3,)", StepRecord, 0, 999, 1.0, True, np.ones((2, G, G), bool), np.array([1, 2, 3]))


def test_negative_or_float_macs_rejected():
    _raises_one_line("non-negative integers", StepRecord, 0, 9, 1.0, True, np.ones((1, G, G), bool), np.array([-1]))
    _raises_one_line("non-negative integers", StepRecord, 0, 9, 1.0, True, np.ones((1, G, G), bool), np.array([1.5]))


def test_width_out_of_range_named():
    _raises_one_line("width=1.5", StepRecord, 0, 999, 1.5, True, np.ones((1, G, G), bool), np.array([1]))


def test_step_grid_inconsistent_with_image_and_patch_size():
    step = StepRecord(0, 999, 1.0, True, np.ones((2, 4, 4), bool), np.array([1, 1]))
    msg = _raises_one_line("(2, 4, 4)", ComputeRecord.build, 32, 4, [step], 100, None, "adaptive")
    assert "(2, 8, 8)" in msg  # and says what was expected


def test_steps_with_different_batch_sizes_rejected():
    a = StepRecord(0, 999, 1.0, True, np.ones((2, G, G), bool), np.array([1, 1]))
    b = StepRecord(1, 500, 1.0, True, np.ones((3, G, G), bool), np.array([1, 1, 1]))
    _raises_one_line("(3, 8, 8)", ComputeRecord.build, 32, 4, [a, b], 100, None, "adaptive")


def test_exited_at_shape_named():
    bad = np.full((B, G, G + 1), -1, dtype=np.int32)
    _raises_one_line("(2, 8, 9)", ComputeRecord.build, 32, 4, _steps(), MACS_FULL, bad, "adaptive")


def test_exited_at_out_of_range():
    ex = _exited_at()
    ex[0, 0, 0] = S  # steps are 0..3
    _raises_one_line("-1..3", ComputeRecord.build, 32, 4, _steps(), MACS_FULL, ex, "adaptive")


def test_exited_patch_recomputed_later_is_rejected():
    ex = _exited_at()
    ex[0, 7, 7] = 1  # but (7, 7) of image 0 is recomputed at step 3
    _raises_one_line("(b=0, y=7, x=7) exited at step 1 but is recomputed at step 3",
                     ComputeRecord.build, 32, 4, _steps(), MACS_FULL, ex, "adaptive")


def test_step_indices_must_be_in_order():
    steps = _steps()
    steps[1], steps[2] = steps[2], steps[1]
    _raises_one_line("steps[1].index=2", ComputeRecord.build, 32, 4, steps, MACS_FULL, None, "adaptive")


def test_patch_size_must_divide_image_size():
    _raises_one_line("patch_size=5", ComputeRecord.build, 32, 5, _steps(), MACS_FULL, None, "adaptive")


def test_macs_full_must_be_positive():
    _raises_one_line("macs_full=0", ComputeRecord.build, 32, 4, _steps(), 0, None, "adaptive")


# ---------------------------------------------------------------------------------------------
# Colormaps
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", COLORMAPS)
def test_luts_are_256x3_uint8(name):
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8


@pytest.mark.parametrize("name", ["inferno", "viridis", "magma"])
def test_perceptual_luts_are_monotone_in_luminance(name):
    luma = colormap_lut(name).astype(np.float64) @ [0.2126, 0.7152, 0.0722]  # Rec. 709 weights
    # 8-bit rounding can hold G on a tie while R drops one unit (-0.21); the fits themselves are
    # monotone, so anything beyond a single quantisation step would be a real error.
    assert np.diff(luma).min() > -0.5
    assert luma[-1] - luma[0] > 150


def test_known_endpoints():
    np.testing.assert_array_equal(colormap_lut("gray")[:, 0], np.arange(256))
    assert tuple(colormap_lut("inferno")[0]) == (0, 0, 0)       # black
    assert tuple(colormap_lut("viridis")[-1])[:2] == (252, 231)  # yellow, as in matplotlib (253, 231, 37)


def test_apply_colormap_clips_and_indexes():
    lut = colormap_lut("viridis")
    out = apply_colormap(np.array([[-1.0, 0.0], [0.5, 2.0]]), "viridis")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], lut[0])
    np.testing.assert_array_equal(out[1, 0], lut[128])
    np.testing.assert_array_equal(out[1, 1], lut[255])


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["share", "exit", "width"])
def test_output_sizes(record, mode):
    plain = render_heatmap(record, mode=mode, size=256, legend=False)
    assert len(plain) == B and all(im.size == (256, 256) and im.mode == "RGB" for im in plain)
    with_legend = render_heatmap(record, mode=mode, size=256)
    assert all(im.width > 256 and im.height == 256 for im in with_legend)


def test_size_snaps_to_nearest_grid_multiple(record):
    assert render_heatmap(record, size=100, legend=False)[0].size == (104, 104)  # 12.5 blocks -> 13
    assert render_heatmap(record, size=99, legend=False)[0].size == (96, 96)


def test_small_size_legend_grows_downward(record):
    im = render_heatmap(record, size=32)[0]
    assert im.height > 32 and im.width > 32


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_share_extremes_get_lut_ends(colormap):
    mask = np.zeros((1, G, G), dtype=bool)
    mask[0, 2, 5] = True
    rec = _single_step_record(mask)
    lut = colormap_lut(colormap)
    im = render_heatmap(rec, mode="share", colormap=colormap, alpha=1.0, legend=False)[0]
    assert im.getpixel(_centre(2, 5)) == tuple(int(c) for c in lut[255])  # share 1.0
    assert im.getpixel(_centre(6, 1)) == tuple(int(c) for c in lut[0])    # share 0.0


def test_exit_mode_values(record):
    lut = colormap_lut("inferno")
    im = render_heatmap(record, mode="exit", legend=False)[1]
    assert im.getpixel(_centre(0, 3)) == tuple(int(c) for c in lut[128])  # exited at step 2: 2/4
    assert im.getpixel(_centre(5, 5)) == tuple(int(c) for c in lut[64])   # exited at step 1: 1/4 -> 63.75
    im0 = render_heatmap(record, mode="exit", legend=False)[0]
    assert im0.getpixel(_centre(1, 1)) == tuple(int(c) for c in lut[255])  # never exited: top


def test_width_strip(record):
    lut = colormap_lut("viridis")
    ims = render_heatmap(record, mode="width", colormap="viridis", legend=False)
    a = np.asarray(ims[0])
    np.testing.assert_array_equal(a, np.asarray(ims[1]))  # same for every batch item
    col0, col3 = 256 // 8, 256 * 7 // 8                    # centres of step 0 (w 0.5) and step 3 (w 1.0)
    np.testing.assert_array_equal(a[250, col0], lut[128])
    np.testing.assert_array_equal(a[100, col0], [255, 255, 255])  # above the half-height bar
    np.testing.assert_array_equal(a[10, col3], lut[255])


def test_overlay_alpha_zero_returns_resized_image(record):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(B, 32, 32, 3), dtype=np.uint8)
    out = heatmap_array(record, image=img, alpha=0.0, legend=False, size=256)
    expected = np.repeat(np.repeat(img, 8, axis=1), 8, axis=2).astype(np.float32) / 255.0
    np.testing.assert_array_equal(out, expected)
    # The same image as a ComfyUI-style float torch tensor gives the same pixels.
    out_t = heatmap_array(record, image=torch.from_numpy(img).float() / 255.0, alpha=0.0, legend=False)
    np.testing.assert_array_equal(out_t, expected)


def test_overlay_blends_linearly(record):
    img = np.zeros((B, 32, 32, 3), dtype=np.uint8)
    heat = np.asarray(render_heatmap(record, legend=False)[0], dtype=np.float64)
    half = np.asarray(render_heatmap(record, image=img, alpha=0.5, legend=False)[0], dtype=np.float64)
    assert np.abs(half - heat / 2).max() <= 0.5


def test_heatmap_array_layout(record):
    arr = heatmap_array(record, mode="share")
    ims = render_heatmap(record, mode="share")
    assert arr.shape == (B, ims[0].height, ims[0].width, 3) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    np.testing.assert_allclose(arr[1], np.asarray(ims[1]) / 255.0)


def test_bad_colormap_named(record):
    _raises_one_line("'jet'", render_heatmap, record, colormap="jet")


@pytest.mark.parametrize("alpha", [1.5, -0.1])
def test_bad_alpha_named(record, alpha):
    _raises_one_line(f"alpha={alpha}", render_heatmap, record, image=np.zeros((B, 32, 32, 3)), alpha=alpha)


def test_batch_mismatch_names_both_sizes(record):
    msg = _raises_one_line("batch size 3", render_heatmap, record, image=np.zeros((3, 32, 32, 3)))
    assert "batch size 2" in msg


def test_bad_mode_and_size_named(record):
    _raises_one_line("'foo'", render_heatmap, record, mode="foo")
    _raises_one_line("size=10000", render_heatmap, record, size=10000)


def test_bad_image_shape_and_values(record):
    _raises_one_line("(2, 32, 32)", render_heatmap, record, image=np.zeros((2, 32, 32)))
    _raises_one_line("must be square", render_heatmap, record, image=np.zeros((2, 32, 16, 3)))
    nan = np.zeros((2, 32, 32, 3))
    nan[0, 0, 0, 0] = np.nan
    _raises_one_line("NaN", render_heatmap, record, image=nan)


def test_width_strip_many_steps_keeps_bar_colours():
    # 200 steps on 256 px: bars are 1-2 px wide, too narrow for outlines; the colour must survive.
    steps = [StepRecord(i, 999 - i, 0.25 if i < 100 else 1.0, False, np.ones((1, G, G), bool), np.array([1]))
             for i in range(200)]
    rec = ComputeRecord.build(32, 4, steps, 200, None, "adaptive")
    a = np.asarray(render_heatmap(rec, mode="width", legend=False)[0])
    lut = colormap_lut("inferno")
    assert (a[255, :120] == lut[64]).all() and (a[0, 136:] == lut[255]).all()


# ---------------------------------------------------------------------------------------------
# Every heatmap of a batch has one shape, whatever its legend text says (they are stacked into one
# IMAGE tensor; a batch mixing "MACs saved: 6.3%" and "24.0%" used to get panels of different widths)
# ---------------------------------------------------------------------------------------------

# Per-image MACs as a share of full: saved 0.0%, 6.3%, 24.0%, 99.95% (prints 100.0%), 100.0% and -0.5%.
_USED_SHARES = (1.0, 0.937, 0.76, 0.0005, 0.0, 1.005)


def _mixed_savings_record(steps: int) -> ComputeRecord:
    macs_full = 2000 * steps
    per_step = [int(round(share * 2000)) for share in _USED_SHARES]
    mask = np.ones((len(_USED_SHARES), G, G), dtype=bool)
    recs = [StepRecord(i, 999 - i % 1000, 1.0 if i % 2 else 0.5, True, mask, np.array(per_step))
            for i in range(steps)]
    return ComputeRecord.build(32, 4, recs, macs_full, None, "adaptive")


@pytest.fixture(scope="module", params=[1, 20, 1000], ids=lambda n: f"{n}steps")
def mixed_record(request):
    return _mixed_savings_record(request.param)


@pytest.mark.parametrize("size", [32, 57, 100, 256, 1024])
@pytest.mark.parametrize("mode", ["share", "exit", "width"])
def test_heatmaps_of_a_batch_share_one_shape(mixed_record, mode, size):
    footers = [f"{100 * s:.1f}%" for s in mixed_record.saved_fraction_per_image]
    assert footers == ["0.0%", "6.3%", "24.0%", "100.0%", "100.0%", "-0.5%"]
    images = render_heatmap(mixed_record, mode=mode, size=size)
    assert len({im.size for im in images}) == 1, [im.size for im in images]
    arr = heatmap_array(mixed_record, mode=mode, size=size)            # np.stack used to raise here
    assert arr.shape == (mixed_record.batch, images[0].height, images[0].width, 3)


@pytest.mark.parametrize("mode", ["share", "exit", "width"])
def test_panel_width_does_not_depend_on_the_saved_figure(mode):
    """Two records that differ only in MACs render to the same size, so a batch of one image never
    changes shape with its seed either."""
    rec = _mixed_savings_record(20)
    sizes = {render_heatmap(ComputeRecord.build(32, 4, [
        StepRecord(s.index, s.timestep, s.width, s.dense[b:b + 1], s.mask[b:b + 1], s.macs[b:b + 1]) for s in rec.steps],
        rec.macs_full, None, "adaptive"), mode=mode)[0].size for b in range(rec.batch)}
    assert len(sizes) == 1, sizes


def test_cli_heatmap_is_equal_panels_side_by_side():
    """The CLI's --heatmap PNG is the batch's heatmaps side by side: equal panels, no ragged edge."""
    from nitrogen_core.__main__ import _hstack

    rec = _mixed_savings_record(20)
    panels = render_heatmap(rec, mode="share", image=np.zeros((rec.batch, 32, 32, 3), np.uint8))
    sheet = _hstack(panels)
    assert sheet.size == (rec.batch * panels[0].width, panels[0].height)
