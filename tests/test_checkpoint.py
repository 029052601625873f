"""Checkpoint save/load (DESIGN §5) and the bad-file policy (§6): every bad file is refused with a
one-line NitroGenInputError that starts with the file name and names the problem."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nitrogen_core import checkpoint as ckpt_mod
from nitrogen_core.checkpoint import (
    BUNDLED_CHECKPOINT, FORMAT_VERSION, KINDS, LoadedCheckpoint, load_checkpoint, read_header,
    resolve_device, resolve_label, save_checkpoint,
)
from nitrogen_core.config import preset
from nitrogen_core.errors import NitroGenInputError
from nitrogen_core.model import NitroGenModel

LABELS = ("cat", "dog", "Smile")
TRAIN = {"data": "emoji", "steps": 12, "seed": 3, "commit": "abc123"}


def tiny_model(seed: int = 0, **overrides) -> NitroGenModel:
    torch.manual_seed(seed)
    return NitroGenModel(preset("tiny", **overrides))


@pytest.fixture(scope="module")
def model() -> NitroGenModel:
    return tiny_model()


@pytest.fixture
def good(tmp_path, model) -> Path:
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, model, kind="student", labels=LABELS, width_schedule=(0.5, 1.0), train=TRAIN)
    return path


# -- raw file surgery ------------------------------------------------------------------------

def read_raw(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def edit_meta(path: Path, **changes) -> Path:
    """Replace metadata values (JSON-encoded here; None deletes the key)."""
    header, data = read_raw(path)
    meta = header["__metadata__"]
    for key, value in changes.items():
        if value is None:
            meta.pop(f"nitrogen.{key}", None)
        else:
            meta[f"nitrogen.{key}"] = json.dumps(value)
    return write_raw(path, header, data)


def save_state(path: Path, state: dict, like: Path) -> Path:
    """Write arbitrary tensors with the metadata of the checkpoint `like`."""
    header, _ = read_raw(like)
    save_file(state, str(path), metadata=header["__metadata__"])
    return path


def expect_bad(path, *needles: str) -> str:
    with pytest.raises(NitroGenInputError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(str(path)), msg
    for needle in needles:
        assert needle.lower() in msg.lower(), f"{needle!r} not in {msg!r}"
    return msg


# -- roundtrip -------------------------------------------------------------------------------

def test_roundtrip_tensors_metadata_config(good, model):
    ck = load_checkpoint(good)
    assert isinstance(ck, LoadedCheckpoint)
    assert ck.config == model.config
    assert ck.kind == "student"
    assert ck.labels == LABELS
    assert ck.width_schedule == (0.5, 1.0)
    assert ck.train == TRAIN
    assert ck.sampler == {}
    assert ck.path == str(good)
    assert ck.size_bytes == good.stat().st_size
    assert ck.n_params == sum(p.numel() for p in model.parameters())
    assert not ck.model.training
    assert all(not p.requires_grad for p in ck.model.parameters())
    want, got = model.state_dict(), ck.model.state_dict()
    assert set(want) == set(got)
    for name in want:
        assert got[name].dtype == torch.float32
        assert torch.equal(want[name], got[name]), name


def test_read_header_matches_and_needs_no_model(good, model):
    h = read_header(good)
    assert h["format"] == FORMAT_VERSION
    assert h["kind"] == "student"
    assert h["config"] == json.loads(model.config.to_json())
    assert h["labels"] == list(LABELS)
    assert h["width_schedule"] == [0.5, 1.0]
    assert h["train"] == TRAIN
    assert set(h["tensors"]) == set(model.state_dict())
    assert h["n_elements"] == sum(t.numel() for t in model.state_dict().values())
    json.dumps(h)  # JSON-ready


def test_metadata_is_json_strings(good):
    header, _ = read_raw(good)
    meta = header["__metadata__"]
    assert json.loads(meta["nitrogen.format"]) == FORMAT_VERSION
    assert json.loads(meta["nitrogen.kind"]) == "student"
    assert json.loads(meta["nitrogen.labels"]) == list(LABELS)
    assert all(e["dtype"] == "F32" for k, e in header.items() if k != "__metadata__")


def test_teacher_kind_and_half_precision_file_loads(tmp_path, good, model):
    path = save_state(tmp_path / "half.safetensors",
                      {k: v.half().contiguous() for k, v in model.state_dict().items()}, like=good)
    edit_meta(path, kind="teacher")
    ck = load_checkpoint(path, dtype=torch.float16)
    assert ck.kind == "teacher"
    name = next(iter(model.state_dict()))
    assert ck.model.state_dict()[name].dtype == torch.float16
    assert torch.equal(ck.model.state_dict()[name], model.state_dict()[name].half())


def test_load_leaves_global_rng_alone(good):
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    load_checkpoint(good)
    assert torch.equal(torch.rand(4), want)


def test_save_is_atomic_and_overwrites(tmp_path, model):
    path = tmp_path / "sub" / "a.safetensors"
    save_checkpoint(path, model, kind="student", labels=LABELS)
    save_checkpoint(path, model, kind="teacher", labels=LABELS)
    assert read_header(path)["kind"] == "teacher"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.safetensors"]  # no temp files left


def test_meta_device_shapes_match_real_model(tmp_path):
    cfg = preset("tiny")
    shapes = ckpt_mod._expected_shapes(tmp_path / "x.safetensors", cfg)
    assert shapes == {k: tuple(v.shape) for k, v in NitroGenModel(cfg).state_dict().items()}


# -- save refuses bad input --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    (dict(kind="pupil"), "pupil"),
    (dict(labels=("a", "b")), "2 labels"),
    (dict(labels=("a", "a", "b")), "unique"),
    (dict(labels=("a", "", "b")), "non-empty"),
    (dict(width_schedule=(0.3,)), "0.3"),
    (dict(width_schedule=()), "non-empty"),
    (dict(train={"x": object()}), "json"),
    (dict(train={"x": float("nan")}), "json"),
])
def test_save_refuses_bad_metadata(tmp_path, model, kwargs, needle):
    args = dict(kind="student", labels=LABELS, width_schedule=(1.0,), train=None)
    args.update(kwargs)
    path = tmp_path / "x.safetensors"
    with pytest.raises(NitroGenInputError) as info:
        save_checkpoint(path, model, **args)
    assert needle.lower() in str(info.value).lower() and "\n" not in str(info.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_save_refuses_pickle_suffix_and_nan(tmp_path, model):
    with pytest.raises(NitroGenInputError, match=r"\.safetensors"):
        save_checkpoint(tmp_path / "x.pt", model, kind="student", labels=LABELS)
    bad = tiny_model()
    with torch.no_grad():
        next(bad.parameters())[0] = float("nan")
    with pytest.raises(NitroGenInputError, match="NaN"):
        save_checkpoint(tmp_path / "x.safetensors", bad, kind="student", labels=LABELS)
    assert list(tmp_path.iterdir()) == []


# -- load refuses bad files --------------------------------------------------------------------

def test_missing_path(tmp_path):
    expect_bad(tmp_path / "nope.safetensors", "no such file")


def test_directory(tmp_path):
    d = tmp_path / "dir.safetensors"
    d.mkdir()
    expect_bad(d, "directory")


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".pth", ".bin", ".pkl"])
def test_pickle_suffix_refused_without_reading(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    expect_bad(path, "pickle", "never loaded", ".safetensors")


def test_unknown_suffix(tmp_path, good):
    path = tmp_path / "model.txt"
    path.write_bytes(good.read_bytes())
    expect_bad(path, "'.txt'", ".safetensors")


def test_truncated_file(good):
    good.write_bytes(good.read_bytes()[:-10])
    expect_bad(good, "truncated")


def test_tiny_file(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"\x01\x02")
    expect_bad(path, "truncated")


def test_header_length_larger_than_file(good):
    blob = good.read_bytes()
    good.write_bytes(struct.pack("<Q", len(blob) + 100) + blob[8:])
    expect_bad(good, "header length", str(len(blob) + 100))


def test_header_not_json(tmp_path):
    path = tmp_path / "j.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    expect_bad(path, "not valid JSON")


def test_header_not_object(tmp_path):
    path = tmp_path / "j.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    expect_bad(path, "JSON object")


def test_trailing_bytes(good):
    good.write_bytes(good.read_bytes() + b"\0" * 16)
    expect_bad(good, "16 unexpected bytes")


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def test_lying_header_offsets(good):
    header, data = read_raw(good)
    name = _first_tensor(header)
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 4]
    write_raw(good, header, data)
    expect_bad(good, "inconsistent", name)


def test_lying_header_shape(good):
    header, data = read_raw(good)
    name = _first_tensor(header)
    header[name]["shape"] = [d * 2 for d in header[name]["shape"]] or [2]
    write_raw(good, header, data)
    expect_bad(good, "inconsistent", name)


def test_overlapping_offsets(good):
    header, data = read_raw(good)
    entries = sorted((e["data_offsets"], k) for k, e in header.items() if k != "__metadata__")
    (b0, b1), second = entries[1]
    # The second tensor starts 4 bytes early: same size, so the entry itself is self-consistent.
    header[second]["data_offsets"] = [b0 - 4, b1 - 4]
    write_raw(good, header, data)
    expect_bad(good, "inconsistent")


def test_bad_shape_entry(good):
    header, data = read_raw(good)
    name = _first_tensor(header)
    header[name]["shape"] = ["3"]
    write_raw(good, header, data)
    expect_bad(good, "invalid shape", name)


def test_wrong_dtype_i64(tmp_path, good, model):
    state = dict(model.state_dict())
    name = sorted(state)[0]
    state[name] = torch.zeros(state[name].shape, dtype=torch.int64)
    path = save_state(tmp_path / "i64.safetensors", state, like=good)
    expect_bad(path, "I64", name, "F32")


def test_nan_weights(tmp_path, good, model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = sorted(state)[3]
    state[name].view(-1)[0] = float("nan")
    path = save_state(tmp_path / "nan.safetensors", state, like=good)
    expect_bad(path, "NaN", name)


def test_inf_weights(tmp_path, good, model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = sorted(state)[-1]
    state[name].view(-1)[-1] = float("inf")
    path = save_state(tmp_path / "inf.safetensors", state, like=good)
    expect_bad(path, "Inf", name)


def test_shape_mismatch(tmp_path, good):
    other = tiny_model(base_channels=8)
    path = save_state(tmp_path / "shape.safetensors", other.state_dict(), like=good)
    msg = expect_bad(path, "shape", "config expects")
    assert "[" in msg  # both shapes are printed


def test_missing_and_unexpected_tensors(tmp_path, good, model):
    state = dict(model.state_dict())
    dropped = sorted(state)[0]
    del state[dropped]
    state["unet.extra.weight"] = torch.zeros(2)
    path = save_state(tmp_path / "keys.safetensors", state, like=good)
    expect_bad(path, "missing 1 tensor", dropped, "unexpected", "unet.extra.weight")


def test_absurd_config_does_not_allocate(good):
    # 2**20 base channels would be ~10**15 parameters; the meta-device check refuses it by shape.
    cfg = read_header(good)["config"] | {"base_channels": 2**20}
    edit_meta(good, config=cfg)
    expect_bad(good, "shape", "config expects")


@pytest.mark.parametrize("key", ["format", "kind", "config", "labels", "width_schedule", "train"])
def test_missing_metadata_key(good, key):
    edit_meta(good, **{key: None})
    expect_bad(good, f"nitrogen.{key}", "missing")


def test_no_metadata(tmp_path, model):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    expect_bad(path, "no metadata", "not a NitroGen checkpoint")


def test_metadata_not_json(good):
    header, data = read_raw(good)
    header["__metadata__"]["nitrogen.labels"] = "[cat, dog"
    write_raw(good, header, data)
    expect_bad(good, "nitrogen.labels", "not valid JSON")


@pytest.mark.parametrize("changes, needles", [
    (dict(kind="pupil"), ("kind", "pupil", "student")),
    (dict(format=2), ("format", "2", "newer")),
    (dict(format="1"), ("format", "'1'")),
    (dict(labels=["a", "b"]), ("2 labels", "num_classes is 3")),
    (dict(labels=["a", "a", "b"]), ("unique", "'a'")),
    (dict(labels=["a", "b\nc", "d"]), ("label 1",)),
    (dict(labels="abc"), ("labels must be a list",)),
    (dict(width_schedule=[0.3]), ("width schedule", "0.3")),
    (dict(width_schedule=[]), ("width schedule",)),
    (dict(train=[1, 2]), ("train", "object")),
])
def test_bad_metadata_values(good, changes, needles):
    edit_meta(good, **changes)
    expect_bad(good, *needles)


def test_unknown_config_key(good):
    cfg = read_header(good)["config"] | {"flux_capacitor": 1}
    edit_meta(good, config=cfg)
    expect_bad(good, "nitrogen.config", "unknown keys", "flux_capacitor")


@pytest.mark.parametrize("change, needle", [
    ({"image_size": 15}, "image_size=15"),
    ({"prediction": "x0"}, "'x0'"),
    ({"base_channels": "64"}, "base_channels"),
    ({"channel_mult": ["a", "b"]}, "nitrogen.config"),
])
def test_invalid_config_values(good, change, needle):
    edit_meta(good, config=read_header(good)["config"] | change)
    expect_bad(good, "nitrogen.config", needle)


def test_sampler_metadata_roundtrip_and_validation(tmp_path, model):
    path = tmp_path / "s.safetensors"
    rec = {"steps": 7, "cfg": 2.0, "threshold": 0.1}
    save_checkpoint(path, model, kind="student", labels=LABELS, sampler=rec)
    assert load_checkpoint(path).sampler == rec
    with pytest.raises(NitroGenInputError, match="warp"):
        save_checkpoint(path, model, kind="student", labels=LABELS, sampler={"warp": 9})
    edit_meta(path, sampler={"warp": 9})
    expect_bad(path, "sampler", "warp", "steps")
    edit_meta(path, sampler={"steps": 0})
    expect_bad(path, "sampler", "steps")


def test_read_header_refuses_the_same_files(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"junk")
    with pytest.raises(NitroGenInputError, match="pickle"):
        read_header(path)


def test_bad_device_and_dtype(good):
    with pytest.raises(NitroGenInputError, match="nonsense"):
        load_checkpoint(good, device="nonsense")
    with pytest.raises(NitroGenInputError, match="float64"):
        load_checkpoint(good, dtype=torch.float64)
    if not torch.cuda.is_available():
        with pytest.raises(NitroGenInputError, match="not available"):
            resolve_device("cuda")


# -- labels ----------------------------------------------------------------------------------

def test_resolve_label_by_name_case_and_index():
    assert resolve_label(LABELS, "dog") == 1
    assert resolve_label(LABELS, "smile") == 2
    assert resolve_label(LABELS, "SMILE") == 2
    assert resolve_label(LABELS, 0) == 0
    assert resolve_label(LABELS, "2") == 2
    assert resolve_label(["1", "0"], "0") == 1  # an exact name wins over an index


@pytest.mark.parametrize("value, needle", [
    ("nosuchclass", "'nosuchclass'"),
    ("99", "99"),
    (99, "99"),
    (-1, "-1"),
    ("-1", "'-1'"),
    (1.0, "1.0"),
])
def test_resolve_label_errors_list_valid_names(value, needle):
    with pytest.raises(NitroGenInputError) as info:
        resolve_label(LABELS, value)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg
    assert all(name in msg for name in LABELS)
    assert "0..2" in msg


def test_resolve_label_ambiguous_case():
    with pytest.raises(NitroGenInputError, match="several"):
        resolve_label(["Cat", "cat"], "CAT")


def test_constants():
    assert KINDS == ("student", "teacher")
    assert FORMAT_VERSION == 1
    assert BUNDLED_CHECKPOINT.name == "nitrogen-emoji32.safetensors"
    assert BUNDLED_CHECKPOINT.parent.name == "checkpoints"
    assert (BUNDLED_CHECKPOINT.parent.parent / "nitrogen_core" / "checkpoint.py").is_file()


def test_bundled_checkpoint_is_the_trained_student():
    """The committed checkpoint: small, safetensors, a student with the emoji classes, a calibrated
    threshold, and it samples: threshold 0 reproduces full compute on it exactly."""
    from nitrogen_core.sampler import SamplerSettings, make_noise, sample
    from nitrogen_core.train.data import EMOJI_CLASSES

    assert BUNDLED_CHECKPOINT.is_file(), f"{BUNDLED_CHECKPOINT} is missing from the repository"
    assert BUNDLED_CHECKPOINT.stat().st_size <= 16 * 2**20
    ck = load_checkpoint(BUNDLED_CHECKPOINT)
    assert ck.kind == "student"
    assert tuple(ck.labels) == tuple(EMOJI_CLASSES)
    assert ck.sampler["threshold"] > 0 and ck.sampler["steps"] == SamplerSettings().steps
    assert ck.sampler["threshold"] == SamplerSettings().threshold     # the node's static default agrees
    noise, labels = make_noise(ck.config, 2, seed=5), torch.tensor([3, 7])
    full = sample(ck.model, noise, labels, SamplerSettings(steps=4, mode="full"))
    zero = sample(ck.model, noise, labels, SamplerSettings(steps=4, threshold=0.0))
    assert torch.equal(full.images, zero.images)
    assert full.images.std() > 0.1                                        # a trained model draws, not flat grey
