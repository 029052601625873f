"""Benchmark metrics (SSIM, Fréchet distance, KID, bootstrap intervals, nearest-neighbour PSNR) and the
domain judge: training on tiny data, the stratified split, save/load round trip, one-line errors for bad
judge files, the real-image sets (held-out layout or half/half split), and the judge's sensitivity to
blur, noise and hue shifts on real emoji (tests/fixtures/emoji32_real.png).

`python tests/test_judge.py --write-fixture DIR` rewrites the fixture from a `data emoji` folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import write_disc_dataset
from nitrogen_core.bench.judge import (FEATURE_DIM, FORMAT_VERSION, MEAN_KEY, REQUIRED, STD_KEY, JudgeNet,
                                       add_judge_arguments, add_noise, augment, blur, calibrate,
                                       counts_in_proportion, data_layout, half_split_sets, hue_shift,
                                       labels_for_counts, laplacian_quantiles, load_judge, load_real_sets, main,
                                       matched_draw, render_calibration, stratified_split, train_judge)
from nitrogen_core.bench.metrics import (frechet_distance, kid, kid_subset_size, near_copy_rate, nearest_psnr, psnr,
                                         set_distance, ssim)
from nitrogen_core.errors import NitroGenInputError

COLORS = {"blue": (30, 60, 220), "red": (220, 40, 40), "green": (40, 180, 60)}
PER_CLASS = 6


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x 6 images of 16 px: a coloured disc at varying positions on white."""
    return write_disc_dataset(tmp_path_factory.mktemp("data"), PER_CLASS, lambda i: (4 + i, 6 + i % 3), COLORS)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("judge") / "judge.safetensors"
    meta = train_judge(tiny_data, out, steps=4, batch=8, seed=3, progress=False)
    return out, meta


# -- metrics ----------------------------------------------------------------------------------

def test_ssim_identical_is_one_and_falls_with_noise():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    assert torch.allclose(ssim(images, images), torch.ones(3), atol=1e-6)
    noise = torch.randn(images.shape, generator=gen)
    scores = [ssim(images, (images + s * noise).clamp(-1, 1)) for s in (0.02, 0.1, 0.5)]
    for less_noise, more_noise in zip(scores, scores[1:]):
        assert (more_noise < less_noise).all()
    assert ssim(images, images).shape == (3,) and psnr(images, images).shape == (3,)


def test_ssim_rejects_mismatched_or_tiny_images():
    with pytest.raises(NitroGenInputError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(NitroGenInputError):
        ssim(torch.zeros(1, 3, 5, 5), torch.zeros(1, 3, 5, 5))


def gaussian_set(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=gen) / d**0.5
    return torch.randn(n, d, generator=gen, dtype=torch.float64) @ mixing.double()     # (n, d), correlated


def test_frechet_distance_properties():
    a, b = gaussian_set(200, seed=0), gaussian_set(150, seed=1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    v = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert frechet_distance(a, a + v) == pytest.approx(float(v.square().sum()), rel=1e-6)   # same covariance
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab == pytest.approx(ba, rel=1e-6) and ab >= 0
    assert frechet_distance(a.float(), (2 * a).float()) > 0                                 # covariance term alone


def test_frechet_distance_handles_rank_deficient_covariance():
    a = torch.zeros(10, 4)
    a[:, 0] = torch.arange(10.0)                    # covariance of rank 1: eigenvalues 0 must not give NaN
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(NitroGenInputError):
        frechet_distance(a, torch.zeros(10, 5))


def test_kid_same_distribution_near_zero_shifted_positive():
    both = gaussian_set(600, d=16, seed=0)
    a, b = both[:300], both[300:]                  # two samples of the same distribution
    same_mean, same_std = kid(a, b, subsets=20, subset_size=100)
    shifted_mean, _ = kid(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same_mean) < 0.05 and same_std >= 0
    assert shifted_mean > 0.5 and shifted_mean > 10 * abs(same_mean)
    assert kid(a, b, subsets=5, subset_size=50, seed=7) == kid(a, b, subsets=5, subset_size=50, seed=7)


def test_kid_subset_size_is_smaller_than_both_sets():
    a, b = gaussian_set(20, seed=0), gaussian_set(30, seed=1)
    assert kid_subset_size(20, 30) == 10 and kid_subset_size(5000, 3000) == 1000
    mean, std = kid(a, b, subsets=3, subset_size=1000)     # m = 10 < 20: subsets differ, so std > 0
    assert mean == mean and std > 0
    with pytest.raises(NitroGenInputError, match="at least 4"):
        kid(a[:3], b)


def test_set_distance_same_distribution_brackets_zero_and_a_shift_does_not():
    both = gaussian_set(500, d=8, seed=2)
    a, b = both[:220], both[220:]                  # two samples of one distribution, sizes differ
    same = set_distance(a, b, resamples=100)
    assert same.kid_lo < 0 < same.kid_hi
    assert same.kid_subset_size == 110 < min(len(a), len(b))
    assert same.fid_lo < same.fid_hi and same.n == 220 and same.n_reference == 280
    shifted = set_distance(a + 0.5, b, resamples=100)
    assert shifted.kid_lo > 0 and shifted.kid_lo > same.kid_hi
    assert shifted.fid_lo > same.fid_hi
    assert set_distance(a, b, resamples=20, seed=3) == set_distance(a, b, resamples=20, seed=3)   # seeded
    assert set_distance(a, b, resamples=20).fid == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_set_distance_replicates_do_not_count_copies_as_pairs():
    """A resample repeats rows; the within-set KID term must skip pairs of copies, or every replicate is
    inflated by the kernel's diagonal. With copies counted, a same-distribution interval sits above 0."""
    both = gaussian_set(120, d=8, seed=4)
    same = set_distance(both[:60], both[60:], resamples=200)
    assert same.kid_lo < 0 < same.kid_hi


def test_set_distance_rejects_bad_arguments():
    a = gaussian_set(10)
    with pytest.raises(NitroGenInputError, match="resamples"):
        set_distance(a, a, resamples=0)
    with pytest.raises(NitroGenInputError, match="level"):
        set_distance(a, a, level=1.5)
    with pytest.raises(NitroGenInputError, match="NaN"):
        set_distance(a * float("nan"), a)


# -- nearest neighbours: near-copies -------------------------------------------------------------

def test_nearest_psnr_counts_a_copy_and_not_a_distinct_image():
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (40, 3, 8, 8), generator=gen, dtype=torch.uint8)
    copy = pool[17].clone()
    nudged = (pool[5].int() + torch.randint(-3, 4, (3, 8, 8), generator=gen)).clamp(0, 255).to(torch.uint8)
    distinct = torch.randint(0, 256, (3, 8, 8), generator=gen, dtype=torch.uint8)
    samples = torch.stack([copy, nudged, distinct])
    result = nearest_psnr(samples, pool)
    assert result[0] == float("inf") and 35 < result[1] < 60 and result[2] < 15
    assert near_copy_rate(samples, pool) == pytest.approx(2 / 3)
    # Tiny chunks (many blocks of the distance matrix) give the same answer.
    assert torch.equal(nearest_psnr(samples, pool, chunk_entries=3), result)
    # Float images in [-1, 1] are rounded to uint8 levels first: the same copy, found exactly.
    as_float = samples.float() / 127.5 - 1
    assert torch.equal(nearest_psnr(as_float, pool), result)


def test_nearest_psnr_agrees_with_brute_force():
    gen = torch.Generator().manual_seed(1)
    pool = torch.randint(0, 256, (33, 3, 6, 6), generator=gen, dtype=torch.uint8)
    samples = torch.randint(0, 256, (7, 3, 6, 6), generator=gen, dtype=torch.uint8)
    mse = (samples[:, None].double() - pool[None].double()).square().flatten(2).mean(2).min(1).values   # (7,)
    assert torch.allclose(nearest_psnr(samples, pool, chunk_entries=10), 10 * torch.log10(255.0**2 / mse))
    with pytest.raises(NitroGenInputError, match="pool"):
        nearest_psnr(samples, torch.zeros(3, 3, 5, 5, dtype=torch.uint8))


# -- judge: split, augmentation, network -------------------------------------------------------

def test_split_is_stratified_and_deterministic():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2 + [3] * 1)
    train, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(train.tolist() + held.tolist()) == list(range(len(labels)))     # a partition
    assert torch.bincount(labels[held], minlength=4).tolist() == [2, 1, 1, 0]     # >= 1 per class of >= 2
    again_train, again_held = stratified_split(labels, 0.2, seed=0)
    assert torch.equal(train, again_train) and torch.equal(held, again_held)
    other = [stratified_split(labels, 0.2, seed=s)[1].tolist() for s in range(1, 6)]
    assert any(h != held.tolist() for h in other)
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0


def test_augment_shifts_with_white_fill_and_keeps_range():
    images = -torch.ones(16, 3, 16, 16)                          # all black: any shift shows white borders
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert (out > 0).any()


@pytest.mark.parametrize("size", [16, 32])
def test_judge_net_shapes(size):
    net = JudgeNet(5)
    x = torch.zeros(2, 3, size, size)
    assert net.features(x).shape == (2, FEATURE_DIM) and net(x).shape == (2, 5)
    assert net.fid_features(x).shape == (2, net.fid_dim) and net.fid_dim == FEATURE_DIM + 24 + 12


def test_laplacian_quantiles_see_noise_and_blur():
    flat = torch.ones(1, 3, 16, 16)                                   # white: the Laplacian is 0 everywhere
    assert torch.equal(laplacian_quantiles(flat), torch.zeros(1, 12))
    edge = torch.ones(1, 3, 16, 16)
    edge[..., :, 8:] = -1                                             # a hard vertical edge
    soft = blur((edge.add(1) * 127.5).to(torch.uint8), 4.0).float() / 127.5 - 1
    assert laplacian_quantiles(soft)[0, 11] < laplacian_quantiles(edge)[0, 11]       # top quantile drops
    noisy = add_noise(torch.full((1, 3, 16, 16), 128, dtype=torch.uint8), 0.1).float() / 127.5 - 1
    assert (laplacian_quantiles(noisy)[0, :3] > 0.1).all()                          # medians rise from 0


# -- judge: training, file round trip ---------------------------------------------------------

def test_train_judge_metadata_and_round_trip(tiny_data, trained):
    out, meta = trained
    assert meta["kind"] == "judge" and meta["classes"] == sorted(COLORS)
    assert meta["n_train"] + meta["n_held_out"] == 3 * PER_CLASS and meta["n_held_out"] == 3
    assert 0 <= meta["held_out_accuracy"] <= 1 and 0 <= meta["train_accuracy"] <= 1
    assert meta["image_size"] == 16 and meta["feature_dim"] == FEATURE_DIM and meta["data"] == str(tiny_data)

    assert meta["format"] == FORMAT_VERSION and meta["data_layout"] == "imagefolder"
    judge = load_judge(out)
    assert judge.feature_mean.shape == judge.feature_std.shape == (judge.dim,)
    assert judge.classes == tuple(sorted(COLORS)) and judge.meta["steps"] == 4
    assert not judge.model.training and not any(p.requires_grad for p in judge.model.parameters())

    from nitrogen_core.train.data import load_image_folder
    data = load_image_folder(tiny_data, 16)
    feats = judge.features(data.images)                            # standardised over these same images
    assert feats.shape == (3 * PER_CLASS, judge.dim)
    assert torch.allclose(feats.mean(0), torch.zeros(judge.dim), atol=1e-4)
    varied = judge.feature_std > 0.02                              # dimensions above the std floor
    assert torch.allclose(feats.std(0)[varied], torch.ones(int(varied.sum())), atol=1e-3)
    assert torch.equal(judge.features(data.as_float()), feats)      # float in [-1, 1]: same after rounding
    nudged = data.as_float() + 0.001                               # below half a uint8 level: rounded away
    assert torch.equal(judge.features(nudged), feats)
    chunked = judge.features(data.images, batch_size=5)            # other batching: same up to rounding
    assert torch.allclose(chunked, feats, atol=1e-4)
    assert judge.embedding(data.images).shape == (3 * PER_CLASS, FEATURE_DIM)
    assert judge.logits(data.as_float()).shape == (3 * PER_CLASS, 3)
    with pytest.raises(NitroGenInputError, match="16x16"):
        judge.features(torch.zeros(1, 3, 32, 32))


def test_train_judge_is_deterministic(tiny_data, trained, tmp_path):
    out, _ = trained
    again = tmp_path / "again.safetensors"
    train_judge(tiny_data, again, steps=4, batch=8, seed=3, progress=False)
    first, second = load_judge(out), load_judge(again)
    assert torch.equal(first.feature_mean, second.feature_mean) and torch.equal(first.feature_std, second.feature_std)


def test_judge_cli_main(tiny_data, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert main(["--data", str(tiny_data), "--out", str(out), "--steps", "2", "--batch", "4"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out and out.is_file()
    assert main(["--data", str(tmp_path / "nope"), "--out", str(out), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert main(["--data", str(tiny_data), "--out", str(tmp_path / "x.pt"), "--steps", "2"]) == 2


def test_add_judge_arguments_defaults():
    import argparse
    args = add_judge_arguments(argparse.ArgumentParser()).parse_args(["--data", "d"])
    assert args.out == "checkpoints/judge-emoji32.safetensors" and args.seed == 0 and args.steps >= 1


# -- judge: bad files --------------------------------------------------------------------------

def assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(NitroGenInputError, match=match) as info:
        load_judge(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_load_judge_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "absent.safetensors", "no such file")


def test_load_judge_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(4096))
    assert_one_line_error(path, "not a valid safetensors file")


def test_load_judge_wrong_kind(trained, tmp_path):
    src, _ = trained
    judge = load_judge(src)
    tensors = {"model." + k: v for k, v in judge.model.state_dict().items()}
    tensors.update({MEAN_KEY: judge.feature_mean, STD_KEY: judge.feature_std})
    meta = {k: json.dumps(v) for k, v in judge.meta.items()}
    meta["kind"] = json.dumps("teacher")
    path = tmp_path / "teacher.safetensors"
    save_file(tensors, str(path), metadata=meta)
    assert_one_line_error(path, "kind is 'teacher'")


def _judge_parts(src: Path) -> tuple[dict, dict, object]:
    judge = load_judge(src)
    tensors = {"model." + k: v for k, v in judge.model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in judge.meta.items()}
    return tensors, meta, judge


def test_load_judge_missing_tensor_and_metadata_and_shape(trained, tmp_path):
    src, _ = trained
    tensors, meta, judge = _judge_parts(src)

    no_mean = tmp_path / "no_mean.safetensors"
    save_file({**tensors, STD_KEY: judge.feature_std}, str(no_mean), metadata=meta)
    assert_one_line_error(no_mean, "missing tensor")

    no_meta = tmp_path / "no_meta.safetensors"
    save_file({**tensors, MEAN_KEY: judge.feature_mean, STD_KEY: judge.feature_std}, str(no_meta))
    assert_one_line_error(no_meta, "metadata")

    bad_shape = tmp_path / "bad_shape.safetensors"
    save_file({**tensors, MEAN_KEY: judge.feature_mean[:7].contiguous(), STD_KEY: judge.feature_std}, str(bad_shape),
              metadata=meta)
    assert_one_line_error(bad_shape, MEAN_KEY)


def test_load_judge_refuses_a_zero_std_nan_and_other_feature_blocks(trained, tmp_path):
    src, _ = trained
    tensors, meta, judge = _judge_parts(src)
    zero_std = tmp_path / "zero_std.safetensors"
    save_file({**tensors, MEAN_KEY: judge.feature_mean, STD_KEY: torch.zeros_like(judge.feature_std)},
              str(zero_std), metadata=meta)
    assert_one_line_error(zero_std, "feature_std")
    nan_mean = tmp_path / "nan_mean.safetensors"
    save_file({**tensors, MEAN_KEY: judge.feature_mean * float("nan"), STD_KEY: judge.feature_std},
              str(nan_mean), metadata=meta)
    assert_one_line_error(nan_mean, "NaN")
    other = tmp_path / "other_blocks.safetensors"
    save_file({**tensors, MEAN_KEY: judge.feature_mean, STD_KEY: judge.feature_std}, str(other),
              metadata={**meta, "fid_features": json.dumps({"embedding": 32})})
    assert_one_line_error(other, "fid_features")


def test_load_judge_format_1_asks_for_retraining(trained, tmp_path):
    """A judge from before the FID features (format 1: the embedding and reference_features only)."""
    src, _ = trained
    tensors, meta, judge = _judge_parts(src)
    old = tmp_path / "format1.safetensors"
    meta = {k: v for k, v in meta.items() if k != "fid_features"}
    save_file({**tensors, "reference_features": torch.zeros(18, FEATURE_DIM)}, str(old),
              metadata={**meta, "format": "1"})
    assert_one_line_error(old, r"format is 1; this version reads format 2 \(retrain it")


def test_load_judge_refuses_pickle_and_generator_checkpoints(tmp_path):
    pickled = tmp_path / "judge.pt"
    pickled.write_bytes(b"\x80\x04not really")
    assert_one_line_error(pickled, "pickle")
    bundled = Path(__file__).resolve().parent.parent / "checkpoints" / "nitrogen-emoji32.safetensors"
    if bundled.is_file():
        assert_one_line_error(bundled, "not a judge file")


# -- real image sets: reference, floor and near-copy pools ------------------------------------------------

def test_plain_image_folder_is_split_half_half_and_says_so(tiny_data):
    assert data_layout(tiny_data) == "imagefolder"
    sets = load_real_sets(tiny_data, 16)
    assert sets.layout == "imagefolder" and sets.heldout is None and len(sets.train) == 3 * PER_CLASS
    assert len(sets.reference) + len(sets.floor_pool) == len(sets.train)
    # The halves are disjoint: no reference image is in the floor pool.
    ref, pool = sets.reference.flatten(1), sets.floor_pool.flatten(1)
    assert not (ref[:, None] == pool[None]).all(2).any()
    assert torch.bincount(sets.reference_labels).tolist() == [3, 3, 3]
    described = sets.describe()
    assert "no held-out split" in described["note"] and "half" in described["note"]
    again = load_real_sets(tiny_data, 16)
    assert torch.equal(again.reference, sets.reference)                  # a fixed split
    with pytest.raises(NitroGenInputError, match="has classes"):
        load_real_sets(tiny_data, 16, classes=("a", "b", "c"))
    with pytest.raises(NitroGenInputError, match="not a folder"):
        load_real_sets(tiny_data / "missing", 16)


def test_heldout_layout_uses_the_heldout_split_as_reference(tmp_path):
    root = tmp_path / "v2"
    write_disc_dataset(root / "train", 5, lambda i: (4 + i, 6), COLORS)
    write_disc_dataset(root / "heldout", 2, lambda i: (9, 5 + i), {k: COLORS[k] for k in ("green", "red")})
    assert data_layout(root) == "heldout"
    sets = load_real_sets(root, 16, classes=sorted(COLORS))
    assert sets.layout == "heldout" and len(sets.train) == 15 and len(sets.heldout) == 4
    assert torch.equal(sets.reference, sets.heldout) and torch.equal(sets.floor_pool, sets.train)
    # Held-out labels index the training classes (blue, green, red), not the held-out folder's own list.
    assert sets.reference_labels.tolist() == [1, 1, 2, 2]
    assert "held-out split" in sets.describe()["note"]
    tiny = tmp_path / "tiny_heldout"
    write_disc_dataset(tiny / "train", 5, lambda i: (4 + i, 6), COLORS)
    write_disc_dataset(tiny / "heldout", 1, lambda i: (9, 5), COLORS)
    with pytest.raises(NitroGenInputError, match="held-out split has 3 images"):
        load_real_sets(tiny, 16)


def test_counts_in_proportion_labels_and_matched_draw():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    assert counts_in_proportion(labels, 3, 10) == [6, 3, 1]
    assert counts_in_proportion(labels, 4, 5) == [3, 2, 0, 0]          # 3, 1.5, 0.5: a tie goes to class 1
    assert sum(counts_in_proportion(labels, 3, 7)) == 7
    assert labels_for_counts([2, 1, 3]).tolist() == [0, 1, 2, 0, 2, 2]
    picked = matched_draw(labels, [2, 5, 1], seed=0)                    # class 1 has only 3
    assert torch.bincount(labels[picked], minlength=3).tolist() == [2, 3, 1]
    assert torch.equal(picked, matched_draw(labels, [2, 5, 1], seed=0))


# -- corruptions -------------------------------------------------------------------------------------------

def test_corruptions_keep_range_and_leave_what_they_should():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 16, 16), generator=gen, dtype=torch.uint8)
    white = torch.full((1, 3, 16, 16), 255, dtype=torch.uint8)
    assert torch.equal(blur(white, 2.0), white) and torch.equal(hue_shift(white, 0.1), white)
    assert torch.equal(hue_shift(images, 0.0), images) and torch.equal(hue_shift(images, 1.0), images)
    red = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    assert hue_shift(red, 1 / 3)[0, :, 0, 0].tolist() == [0, 255, 0]    # red + 120 degrees = green
    noisy = add_noise(images, 0.1)
    assert noisy.dtype == torch.uint8 and not torch.equal(noisy, images)
    assert torch.equal(add_noise(images, 0.1), noisy)                     # fixed seed
    assert blur(images, 2.0).float().std() < images.float().std()


# -- the judge on real emoji: blur, noise and a hue shift must move FID beyond the clean interval ----------

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "emoji32_real.png"


def load_fixture() -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The 249 real 32 px emoji of `data emoji` (emoji-datasource-google 16.0.0, Noto Emoji, Apache-2.0;
    see fixtures/emoji32_real.LICENSE.txt) from one contact sheet, in load_image_folder order."""
    import numpy as np
    from PIL import Image

    meta = json.loads(FIXTURE.with_suffix(".json").read_text("utf-8"))
    size, columns, n = meta["image_size"], meta["columns"], len(meta["labels"])
    with Image.open(FIXTURE) as im:
        sheet = torch.from_numpy(np.array(im.convert("RGB")))                        # (rows * S, columns * S, 3)
    rows = sheet.shape[0] // size
    tiles = sheet.reshape(rows, size, columns, size, 3).permute(0, 2, 4, 1, 3)      # (rows, columns, 3, S, S)
    return tiles.reshape(rows * columns, 3, size, size)[:n].contiguous(), torch.tensor(meta["labels"]), \
        tuple(meta["classes"])


@pytest.fixture(scope="module")
def bundled_calibration() -> dict:
    images, labels, classes = load_fixture()
    sets = half_split_sets(images, labels, classes, str(FIXTURE))        # exactly `bench judge-check`'s split
    return calibrate(load_judge(), sets, corruptions={kind: (strength,) for kind, strength in REQUIRED},
                     embedding_check=False)


def test_bundled_judge_sees_blur_noise_and_hue_on_real_emoji(bundled_calibration):
    """2x blur (area down to 16 px, bilinear up), noise sigma 0.1 and a 0.1-turn hue shift, each on the same
    123 real images: the corrupted FID's bootstrap interval must lie wholly above the clean one."""
    result = bundled_calibration
    clean = result["clean"]
    assert result["probe_images"] >= 100 and clean["n_reference"] >= 100
    assert clean["fid_lo"] <= clean["fid_hi"]
    seen = {f"{r['corruption']} {r['strength']:g}": (r["fid_lo"], clean["fid_hi"]) for r in result["rows"]}
    assert set(seen) == {"blur 2", "noise 0.1", "hue 0.1"}
    for name, (corrupted_lo, clean_hi) in seen.items():
        assert corrupted_lo > clean_hi, f"{name}: FID interval starts at {corrupted_lo:.3f}, clean ends at {clean_hi:.3f}"
    assert result["passed"] and all(result["required"].values())
    text = render_calibration({**result, "command": "cmd"})
    assert "All seen." in text and "Generated by `cmd`" in text


def test_judge_check_cli_writes_json_and_markdown(tiny_data, trained, tmp_path, capsys):
    from nitrogen_core.__main__ import main as cli_main
    judge_path, _ = trained
    out_json, out_md = tmp_path / "cal.json", tmp_path / "cal.md"
    code = cli_main(["bench", "judge-check", "--data", str(tiny_data), "--judge", str(judge_path),
                     "--resamples", "20", "--json", str(out_json), "--markdown", str(out_md)])
    result = json.loads(out_json.read_text())
    assert code == (0 if result["passed"] else 1)          # a 4-step judge on discs may well not see them all
    command = (f"python -m nitrogen_core bench judge-check --data {tiny_data} --judge {judge_path} "
               f"--resamples 20 --json {out_json} --markdown {out_md}")
    assert result["command"] == command and f"Generated by `{command}`" in out_md.read_text()
    assert out_md.read_text() in capsys.readouterr().out
    assert len(result["rows"]) == 11 and result["sets"]["layout"] == "imagefolder"
    assert {"fid", "fid_lo", "fid_hi", "kid", "kid_lo", "kid_hi", "fid_beyond_clean"} <= set(result["rows"][0])


@pytest.mark.parametrize("args, message", [
    (["--json", "x.txt"], "must end in .json"),
    (["--resamples", "3"], "--resamples 3 is out of range"),
    (["--data", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_judge_check_bad_input_is_one_line(tiny_data, trained, capsys, args, message):
    from nitrogen_core.__main__ import main as cli_main
    base = {"--data": str(tiny_data), "--judge": str(trained[0])}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    assert cli_main(["bench", "judge-check", *[w for kv in base.items() for w in kv]]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# -- fixture writer --------------------------------------------------------------------------------------

def write_fixture(data_dir: str, columns: int = 16) -> None:
    """Rewrite fixtures/emoji32_real.{png,json} from a `data emoji` folder (all images, load order)."""
    import numpy as np
    from PIL import Image
    from nitrogen_core.train.data import load_image_folder

    data = load_image_folder(data_dir, 32)
    n, size = len(data), data.image_size
    rows = -(-n // columns)
    sheet = np.full((rows * size, columns * size, 3), 255, np.uint8)
    tiles = data.images.permute(0, 2, 3, 1).numpy()                                   # (N, S, S, 3)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = tiles[i]
    FIXTURE.parent.mkdir(exist_ok=True)
    Image.fromarray(sheet).save(FIXTURE, optimize=True)
    source = json.loads((Path(data_dir) / "manifest.json").read_text("utf-8")).get("source", {})
    meta = {"image_size": size, "columns": columns, "classes": list(data.classes), "labels": data.labels.tolist(),
            "files": list(data.files), "source": source,
            "license": "images: Noto Emoji (Google), Apache-2.0; see emoji32_real.LICENSE.txt",
            "made_by": "python tests/test_judge.py --write-fixture DIR  (DIR from `python -m nitrogen_core data emoji`)"}
    lines = [f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in meta.items()]
    FIXTURE.with_suffix(".json").write_text("{\n" + ",\n".join(lines) + "\n}\n", "utf-8")    # one key a line
    (FIXTURE.parent / "emoji32_real.LICENSE.txt").write_bytes((Path(data_dir) / "LICENSE.txt").read_bytes())


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] != ["--write-fixture"] or len(sys.argv) != 3:
        sys.exit("usage: python tests/test_judge.py --write-fixture DIR")
    write_fixture(sys.argv[2])
