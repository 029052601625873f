"""Benchmark metrics (SSIM, Fréchet distance, KID) and the domain judge: training on tiny data, the
stratified split, save/load round trip, and one-line errors for bad judge files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import write_disc_dataset
from nitrogen_core.bench.judge import (FEATURE_DIM, JudgeNet, add_judge_arguments, augment, load_judge, main,
                                       stratified_split, train_judge)
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


# -- judge: training, file round trip ---------------------------------------------------------

def test_train_judge_metadata_and_round_trip(tiny_data, trained):
    out, meta = trained
    assert meta["kind"] == "judge" and meta["classes"] == sorted(COLORS)
    assert meta["n_train"] + meta["n_held_out"] == 3 * PER_CLASS and meta["n_held_out"] == 3
    assert 0 <= meta["held_out_accuracy"] <= 1 and 0 <= meta["train_accuracy"] <= 1
    assert meta["image_size"] == 16 and meta["feature_dim"] == FEATURE_DIM and meta["data"] == str(tiny_data)

    judge = load_judge(out)
    assert judge.reference_features.shape == (3 * PER_CLASS, FEATURE_DIM)
    assert judge.classes == tuple(sorted(COLORS)) and judge.meta["steps"] == 4
    assert not judge.model.training and not any(p.requires_grad for p in judge.model.parameters())

    from nitrogen_core.train.data import load_image_folder
    data = load_image_folder(tiny_data, 16)
    assert torch.equal(judge.features(data.as_float()), judge.reference_features)   # identical after the round trip
    assert torch.equal(judge.features(data.images), judge.reference_features)       # uint8 is accepted too
    chunked = judge.features(data.as_float(), batch_size=5)        # other batching: same up to rounding
    assert torch.allclose(chunked, judge.reference_features, atol=1e-5)
    assert judge.logits(data.as_float()).shape == (3 * PER_CLASS, 3)
    with pytest.raises(NitroGenInputError, match="16x16"):
        judge.features(torch.zeros(1, 3, 32, 32))


def test_train_judge_is_deterministic(tiny_data, trained, tmp_path):
    out, _ = trained
    again = tmp_path / "again.safetensors"
    train_judge(tiny_data, again, steps=4, batch=8, seed=3, progress=False)
    first, second = load_judge(out), load_judge(again)
    assert torch.equal(first.reference_features, second.reference_features)


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
    tensors["reference_features"] = judge.reference_features
    meta = {k: json.dumps(v) for k, v in judge.meta.items()}
    meta["kind"] = json.dumps("teacher")
    path = tmp_path / "teacher.safetensors"
    save_file(tensors, str(path), metadata=meta)
    assert_one_line_error(path, "kind is 'teacher'")


def test_load_judge_missing_tensor_and_metadata_and_shape(trained, tmp_path):
    src, _ = trained
    judge = load_judge(src)
    tensors = {"model." + k: v for k, v in judge.model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in judge.meta.items()}

    no_reference = tmp_path / "no_reference.safetensors"
    save_file(tensors, str(no_reference), metadata=meta)
    assert_one_line_error(no_reference, "missing tensor")

    no_meta = tmp_path / "no_meta.safetensors"
    save_file({**tensors, "reference_features": judge.reference_features}, str(no_meta))
    assert_one_line_error(no_meta, "metadata")

    bad_shape = tmp_path / "bad_shape.safetensors"
    save_file({**tensors, "reference_features": judge.reference_features[:, :7].contiguous()}, str(bad_shape),
              metadata=meta)
    assert_one_line_error(bad_shape, "reference_features")


def test_load_judge_refuses_pickle_and_generator_checkpoints(tmp_path):
    pickled = tmp_path / "judge.pt"
    pickled.write_bytes(b"\x80\x04not really")
    assert_one_line_error(pickled, "pickle")
    bundled = Path(__file__).resolve().parent.parent / "checkpoints" / "nitrogen-emoji32.safetensors"
    if bundled.is_file():
        assert_one_line_error(bundled, "not a judge file")
