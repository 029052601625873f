"""The ComfyUI nodes, without ComfyUI (DESIGN §4 "Testing without ComfyUI").

The pack is loaded the way ComfyUI loads a custom-node folder (by path, under a path-derived
name), with the stand-ins of tests/comfy_stub.py in sys.modules. A `tiny` checkpoint whose
classes are the emoji names flag/heart/smiley sits in the stand-in models/nitrogen folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_stub import REPO, load_pack, make_stub, unload_pack
from nitrogen_core.checkpoint import save_checkpoint
from nitrogen_core.config import preset
from nitrogen_core.model import NitroGenModel

PACK = REPO.name.replace(".", "_") + "_nodes_test"       # path-derived, like ComfyUI's module names
TINY_LABELS = ["flag", "heart", "smiley"]
OUR_NODES = {"NitroGenLoader", "NitroGenAdaptiveSampler", "NitroGenComputeMap"}
SMALL = dict(seed=3, label="heart", batch_size=2, steps=6, cfg=1.5, threshold=0.05, budget=1.0)


# -- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = NitroGenModel(preset("tiny"))
    with torch.no_grad():                        # untrained nets output 0; make every weight matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, kind="student", labels=TINY_LABELS, width_schedule=(0.5, 1.0),
                    train={"steps": 1, "note": "test"})
    return path


@pytest.fixture(scope="module")
def pack():
    unload_pack(PACK)
    for name in ("folder_paths", "comfy", "comfy.utils", "comfy.model_management"):
        assert name not in sys.modules, f"a real {name} is imported; these tests use stand-ins"
    module = load_pack(PACK)
    yield module
    unload_pack(PACK)


@pytest.fixture
def comfy(tmp_path, monkeypatch, pack, tiny_file):
    stub = make_stub(tmp_path)
    for name, module in stub.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    shutil.copy(tiny_file, stub.nitrogen_dir / "tiny.safetensors")
    loader = sub(pack, "nodes.loader")
    loader.clear_cache()
    loader._header_cache.clear()
    yield stub
    loader.clear_cache()


def sub(pack, name):
    return sys.modules[f"{pack.__name__}.{name}"]


def nodes(pack):
    m = pack.NODE_CLASS_MAPPINGS
    return m["NitroGenLoader"](), m["NitroGenAdaptiveSampler"](), m["NitroGenComputeMap"]()


def load_tiny(pack, **kw):
    loader, _, _ = nodes(pack)
    return loader.load(kw.pop("ckpt_name", "tiny.safetensors"), kw.pop("device", "auto"), kw.pop("dtype", "auto"))[0]


def generate(sampler, handle, **kw):
    """The sampler's result (images, compute); its own preview ("ui") is checked in the pipeline test."""
    out = sampler.generate(handle, **kw)
    assert set(out) == {"ui", "result"}
    return out["result"]


def input_error(pack):
    return sub(pack, "nitrogen_core.errors").NitroGenInputError


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("make_workflow_thumbnails",
                                                  REPO / "scripts" / "make_workflow_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- metadata ---------------------------------------------------------------------------

def test_mappings_and_node_metadata(pack, comfy):
    assert set(pack.NODE_CLASS_MAPPINGS) == OUR_NODES
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == {"NitroGenLoader": "NitroGen Loader",
                                               "NitroGenAdaptiveSampler": "NitroGen Adaptive Sampler",
                                               "NitroGenComputeMap": "NitroGen Compute Map"}
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "NitroGen", key
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40, key
        assert callable(getattr(cls, cls.FUNCTION)), key
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS), key
        types = cls.INPUT_TYPES()
        assert set(types) <= {"required", "optional"}, key
        for group in types.values():
            for name, spec in group.items():
                assert len(spec) == 2 and isinstance(spec[1].get("tooltip"), str) and spec[1]["tooltip"], \
                    f"{key}.{name} has no tooltip"
                if isinstance(spec[0], list):
                    assert spec[0] and all(isinstance(v, str) for v in spec[0]), f"{key}.{name}: empty combo"
                    assert spec[1].get("default", spec[0][0]) in spec[0], f"{key}.{name}: default not in combo"
                elif spec[0] in ("INT", "FLOAT"):
                    o = spec[1]
                    assert o["min"] <= o["default"] <= o["max"], f"{key}.{name}: default out of range"
    m = pack.NODE_CLASS_MAPPINGS
    assert m["NitroGenAdaptiveSampler"].INPUT_TYPES()["required"]["seed"][1]["control_after_generate"] is True
    assert m["NitroGenComputeMap"].OUTPUT_NODE is True
    assert m["NitroGenAdaptiveSampler"].OUTPUT_NODE is True           # it shows its images itself
    assert m["NitroGenLoader"].RETURN_TYPES == ("NITROGEN_MODEL",)
    assert m["NitroGenAdaptiveSampler"].RETURN_TYPES == ("IMAGE", "NITROGEN_COMPUTE")
    assert m["NitroGenComputeMap"].RETURN_TYPES == ("IMAGE", "STRING")


def test_checkpoint_combo_and_label_combo(pack, comfy):
    loader = sub(pack, "nodes.loader")
    names = pack.NODE_CLASS_MAPPINGS["NitroGenLoader"].INPUT_TYPES()["required"]["ckpt_name"][0]
    assert names == [*loader.BUNDLED, "tiny.safetensors"]              # bundled always offered, first
    assert list(loader.BUNDLED) == ["nitrogen-emoji32 (bundled)", "nitrogen-emoji32-dit (bundled)"]
    labels = pack.NODE_CLASS_MAPPINGS["NitroGenAdaptiveSampler"].INPUT_TYPES()["required"]["label"][0]
    assert set(TINY_LABELS) <= set(labels)
    assert len(labels) == len(set(labels))
    # the bundled checkpoint's classes are offered even before its file exists
    assert "clock" in labels and "vehicle" in labels
    # a checkpoint with other classes adds them
    model = NitroGenModel(preset("tiny", num_classes=2))
    save_checkpoint(comfy.nitrogen_dir / "sub" / "other.safetensors", model, kind="teacher", labels=["ufo", "cat"])
    labels = pack.NODE_CLASS_MAPPINGS["NitroGenAdaptiveSampler"].INPUT_TYPES()["required"]["label"][0]
    assert {"ufo", "cat"} <= set(labels)
    # unreadable files are skipped, not fatal for the whole node list
    (comfy.nitrogen_dir / "broken.safetensors").write_bytes(b"not a checkpoint")
    assert "ufo" in pack.NODE_CLASS_MAPPINGS["NitroGenAdaptiveSampler"].INPUT_TYPES()["required"]["label"][0]


def test_model_folder_is_created_or_extended(pack, comfy):
    loader = sub(pack, "nodes.loader")
    fp = comfy.modules["folder_paths"]
    ours = os.path.join(fp.models_dir, "nitrogen")
    loader.register_model_folder()
    assert fp.folder_names_and_paths["nitrogen"] == ([ours], {".safetensors"})
    loader.register_model_folder()                                     # idempotent
    assert fp.folder_names_and_paths["nitrogen"] == ([ours], {".safetensors"})
    # extra_model_paths.yaml registered the key first: extend it, keep the user's folder first
    shared = {".ckpt", ".safetensors"}
    fp.folder_names_and_paths["nitrogen"] = (["/elsewhere/nitrogen"], {".ckpt"})
    fp.folder_names_and_paths["other"] = (["/x"], shared)
    loader.register_model_folder()
    paths, exts = fp.folder_names_and_paths["nitrogen"]
    assert paths == ["/elsewhere/nitrogen", ours] and exts == {".ckpt", ".safetensors"}
    assert shared == {".ckpt", ".safetensors"}                         # nobody else's set was touched
    fp.folder_names_and_paths["nitrogen"] = (["/elsewhere/nitrogen"], set())   # add_model_folder_path style
    loader.register_model_folder()
    assert fp.folder_names_and_paths["nitrogen"] == (["/elsewhere/nitrogen", ours], set())


# -- the pipeline -----------------------------------------------------------------------

def test_loader_sampler_compute_map_pipeline(pack, comfy):
    loader, sampler, cmap = nodes(pack)
    handle = loader.load("tiny.safetensors", "auto", "auto")[0]
    assert handle.device == torch.device("cpu") and handle.dtype == torch.float32
    assert handle.checkpoint.labels == tuple(TINY_LABELS)

    out = sampler.generate(handle, **SMALL)
    images, record = out["result"]
    assert images.shape == (2, 16, 16, 3) and images.dtype == torch.float32
    assert images.device == torch.device("cpu")
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert images.std() > 0.01                                         # not a constant image
    assert len(record.steps) == SMALL["steps"] and record.batch == 2

    # one progress bar, updated once per step with the right totals and a JPEG preview
    assert comfy.bars == [SMALL["steps"]]
    assert [c[1] for c in comfy.progress] == list(range(1, SMALL["steps"] + 1))
    assert all(c[2] == SMALL["steps"] for c in comfy.progress)
    assert len({c[0] for c in comfy.progress}) == 1
    for *_, preview in comfy.progress:
        kind, img, max_size = preview
        assert kind == "JPEG" and isinstance(img, Image.Image) and img.mode == "RGB"
        assert isinstance(max_size, int) and max(img.size) <= max_size
    assert comfy.checks >= SMALL["steps"]                              # interrupt checked every step

    # The node shows its final images itself: one PNG in the temp folder, the grid the step previews
    # draw (2 images of 16 px side by side, nearest-upscaled x16 towards 512 px).
    (entry,) = out["ui"]["images"]
    assert set(out["ui"]) == {"images"} and entry["type"] == "temp" and entry["subfolder"] == ""
    png = Image.open(comfy.temp_dir / entry["filename"])
    assert png.format == "PNG" and png.size == (512, 256)
    shown = np.asarray(png.convert("RGB")).astype(int)
    expected = np.concatenate(list((images.numpy() * 255).round().astype(int)), axis=1)   # (16, 32, 3)
    expected = expected.repeat(16, axis=0).repeat(16, axis=1)
    assert np.abs(shown - expected).max() <= 1                         # <= 1: rounding order only
    # The frontend keeps the last step preview over the node's own images after a run that sampled
    # (useNodeOutputStore.getNodeImageUrls: previews first); it shows the same final images.
    np.testing.assert_array_equal(np.asarray(comfy.progress[-1][3][1]), shown)

    out = cmap.render(record, "share", "inferno", 0.6, 256, image=images)
    heat, text = out["result"]
    assert heat.ndim == 4 and heat.shape[0] == 2 and heat.shape[-1] == 3 and heat.dtype == torch.float32
    assert heat.shape[1] >= 256 and heat.shape[2] > 256                # 256 px map + legend panel
    assert 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0
    assert isinstance(text, str) and "MACs" in text and "saved" in text
    ui = out["ui"]["images"]
    assert len(ui) == 2
    for entry, arr in zip(ui, heat):
        assert entry["type"] == "temp" and entry["subfolder"] == ""
        path = comfy.temp_dir / entry["subfolder"] / entry["filename"]
        assert path.is_file()
        png = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(png, np.rint(arr.numpy() * 255).astype(np.uint8))
    assert out["ui"]["text"] == [text]

    for mode in ("exit", "width"):                                     # no overlay image, other modes
        heat2, _ = cmap.render(record, mode, "viridis", 1.0, 64)["result"]
        assert heat2.shape[0] == 2


def test_threshold_zero_is_full_compute_and_same_seed_is_deterministic(pack, comfy):
    handle = load_tiny(pack)
    _, sampler, _ = nodes(pack)
    full_a, rec_full = generate(sampler, handle, **{**SMALL, "threshold": 0.0})
    full_b, _ = generate(sampler, handle, **{**SMALL, "threshold": 0.0})
    assert torch.equal(full_a, full_b)
    # full compute: width 1.0, every patch, every step
    assert all(s.dense.all() and s.mask.all() for s in rec_full.steps)
    assert set(rec_full.widths) == {1.0} and rec_full.macs_used == rec_full.macs_full
    # any threshold above 0 also runs the checkpoint's width schedule (0.5 then 1.0 for tiny)
    _, rec = generate(sampler, handle, **{**SMALL, "threshold": 1e-6})
    assert rec.widths == (0.5, 0.5, 0.5, 1.0, 1.0, 1.0) and rec.macs_used < rec.macs_full
    # ... and bit-identical to the core's full sampler at width 1.0
    core = sub(pack, "nitrogen_core.sampler")
    ck = handle.checkpoint
    ref = core.sample(ck.model, core.make_noise(ck.config, 2, SMALL["seed"]), torch.full((2,), 1),
                      core.SamplerSettings(steps=SMALL["steps"], cfg=SMALL["cfg"], mode="full"), width_schedule=(1.0,))
    assert torch.equal(full_a, ((ref.images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    other, _ = generate(sampler, handle, **{**SMALL, "threshold": 0.0, "seed": 4})
    assert not torch.equal(other, full_a)


def test_budget_is_respected(pack, comfy):
    handle = load_tiny(pack)
    _, sampler, _ = nodes(pack)
    _, record = generate(sampler, handle, **{**SMALL, "threshold": 0.0, "budget": 0.6})
    assert record.macs_used_per_image.max() <= 0.6 * record.macs_full


@pytest.mark.parametrize("name, file", [("nitrogen-emoji32 (bundled)", "nitrogen-emoji32.safetensors"),
                                        ("nitrogen-emoji32-dit (bundled)", "nitrogen-emoji32-dit.safetensors")])
def test_least_budget_offered_runs_on_the_bundled_checkpoint(pack, comfy, monkeypatch, name, file):
    """The widget offers no budget that can only fail: its minimum runs at the default steps on each
    bundled model (narrower, within budget)."""
    bundled = REPO / "checkpoints" / file
    if not bundled.is_file():
        pytest.skip(f"{bundled} is not in this checkout")
    loader = sub(pack, "nodes.loader")
    monkeypatch.setitem(loader.BUNDLED, name, bundled)
    handle = load_tiny(pack, ckpt_name=name)
    _, sampler, _ = nodes(pack)
    budget = sampler.INPUT_TYPES()["required"]["budget"][1]
    steps = sampler.INPUT_TYPES()["required"]["steps"][1]["default"]
    label = handle.checkpoint.labels[0]
    _, record = generate(sampler, handle, **{**SMALL, "label": label, "batch_size": 1, "steps": steps,
                                            "threshold": 0.003, "budget": budget["min"]})
    assert record.macs_used_per_image.max() <= budget["min"] * record.macs_full
    assert max(record.widths) < 1.0


def test_interrupt_stops_within_one_step(pack, comfy):
    handle = load_tiny(pack)
    _, sampler, _ = nodes(pack)
    mm = comfy.modules["comfy.model_management"]
    comfy.interrupt_at_value = 2          # the user presses Cancel while step 2 of 6 is shown
    with pytest.raises(mm.InterruptProcessingException):
        sampler.generate(handle, **SMALL)
    # step 3 finished (it was running when Cancel came), its check raised: no step 4
    assert [c[1] for c in comfy.progress] == [1, 2]
    assert comfy.checks == 1 + 3          # one check before sampling, one after each of 3 steps

    comfy.progress.clear()
    comfy.interrupt_at_value = None
    comfy.interrupted = True              # interrupted before the node starts: nothing runs
    with pytest.raises(mm.InterruptProcessingException):
        sampler.generate(handle, **SMALL)
    assert comfy.progress == []


def test_model_cache_is_keyed_by_file_mtime_device_dtype(pack, comfy):
    loader_cls = pack.NODE_CLASS_MAPPINGS["NitroGenLoader"]
    a = load_tiny(pack)
    b = load_tiny(pack)
    assert a is b
    assert load_tiny(pack, device="cpu") is a                          # auto resolves to cpu here
    fingerprint = loader_cls.IS_CHANGED("tiny.safetensors", "auto", "auto")
    path = comfy.nitrogen_dir / "tiny.safetensors"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert loader_cls.IS_CHANGED("tiny.safetensors", "auto", "auto") != fingerprint
    c = load_tiny(pack)
    assert c is not a and c.checkpoint.model is not a.checkpoint.model
    assert load_tiny(pack) is c
    cache = sub(pack, "nodes.loader")._cache
    assert len([k for k in cache if k[0] == os.path.realpath(path)]) == 1   # the stale copy was dropped


# -- bad input --------------------------------------------------------------------------

def test_bad_sampler_inputs_raise_clear_errors(pack, comfy):
    handle = load_tiny(pack)
    _, sampler, _ = nodes(pack)
    err = input_error(pack)
    with pytest.raises(err, match=r"unknown label 'unicorn'.*flag, heart, smiley"):
        sampler.generate(handle, **{**SMALL, "label": "unicorn"})
    with pytest.raises(err, match=r"label 'clock'.*flag, heart, smiley"):   # offered, but not this model's
        sampler.generate(handle, **{**SMALL, "label": "clock"})
    with pytest.raises(err, match=r"steps=0 is out of range"):
        sampler.generate(handle, **{**SMALL, "steps": 0})
    with pytest.raises(err, match=r"threshold=-1.* is out of range"):
        sampler.generate(handle, **{**SMALL, "threshold": -1.0})
    with pytest.raises(err, match=r"budget=0.0 is out of range"):
        sampler.generate(handle, **{**SMALL, "budget": 0.0})
    with pytest.raises(err, match=r"batch_size=0 must be an integer in 1\.\.64"):
        sampler.generate(handle, **{**SMALL, "batch_size": 0})
    with pytest.raises(err, match=r"seed=-1 must be"):
        sampler.generate(handle, **{**SMALL, "seed": -1})
    with pytest.raises(err, match=r"cfg=nan must be a finite number"):
        sampler.generate(handle, **{**SMALL, "cfg": float("nan")})
    with pytest.raises(err, match=r"connect a NitroGen Loader"):
        sampler.generate("not a model", **SMALL)
    assert issubclass(err, ValueError)
    assert comfy.progress == []                                        # all rejected before sampling


def test_bad_checkpoints_raise_clear_errors(pack, comfy, monkeypatch):
    loader_node, _, _ = nodes(pack)
    loader = sub(pack, "nodes.loader")
    err = input_error(pack)
    (comfy.nitrogen_dir / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxxx")
    with pytest.raises(err, match=r"garbage\.safetensors: header is not valid JSON"):
        loader_node.load("garbage.safetensors", "auto", "auto")
    with pytest.raises(err, match=r"'missing\.safetensors' is not in .*models/nitrogen.*available: .*tiny\.safetensors"):
        loader_node.load("missing.safetensors", "auto", "auto")
    # a folder registered by extra_model_paths.yaml lists every file: a pickle is listed but never loaded
    comfy.modules["folder_paths"].folder_names_and_paths["nitrogen"] = ([str(comfy.nitrogen_dir)], set())
    (comfy.nitrogen_dir / "evil.pt").write_bytes(b"\x80\x04K\x01.")
    assert "evil.pt" in pack.NODE_CLASS_MAPPINGS["NitroGenLoader"].INPUT_TYPES()["required"]["ckpt_name"][0]
    with pytest.raises(err, match=r"evil\.pt: \.pt files are pickle-based and are never loaded"):
        loader_node.load("evil.pt", "auto", "auto")
    # the bundled checkpoint, chosen while its file is missing
    for name in loader.BUNDLED:
        monkeypatch.setitem(loader.BUNDLED, name, comfy.root / "checkpoints" / "absent.safetensors")
        with pytest.raises(err, match=r"bundled checkpoint .* is not in this copy of the pack yet.*models/nitrogen"):
            loader_node.load(name, "auto", "auto")
        assert "unavailable" in pack.NODE_CLASS_MAPPINGS["NitroGenLoader"].IS_CHANGED(name)
    with pytest.raises(err, match=r"device='tpu' is not one of"):
        loader_node.load("tiny.safetensors", "tpu", "auto")
    with pytest.raises(err, match=r"dtype='fp8' is not one of"):
        loader_node.load("tiny.safetensors", "auto", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(err, match=r"'cuda' is not available"):
            loader_node.load("tiny.safetensors", "cuda", "auto")


def test_bundled_checkpoint_loads_when_present(pack, comfy, monkeypatch, tiny_file):
    loader = sub(pack, "nodes.loader")
    for name in loader.BUNDLED:
        monkeypatch.setitem(loader.BUNDLED, name, tiny_file)
    for name in loader.BUNDLED:
        handle = load_tiny(pack, ckpt_name=name)
        assert handle.checkpoint.labels == tuple(TINY_LABELS)
    labels = pack.NODE_CLASS_MAPPINGS["NitroGenAdaptiveSampler"].INPUT_TYPES()["required"]["label"][0]
    assert labels[:3] == TINY_LABELS and "clock" not in labels        # read from the files, not the fallback


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_loads_or_fails_clearly(pack, comfy, dtype):
    # The core's timestep embedding is float32, so half-precision sampling fails today; the loader's
    # 2-step probe turns that into a one-line error at load instead of a torch error mid-sampling.
    _, sampler, _ = nodes(pack)
    try:
        handle = load_tiny(pack, dtype=dtype)
    except input_error(pack) as exc:
        assert "cannot sample in" in str(exc) and "use dtype fp32" in str(exc)
        return
    images, _ = generate(sampler, handle, **SMALL)
    assert images.dtype == torch.float32 and images.shape == (2, 16, 16, 3)


def test_bad_compute_map_inputs(pack, comfy):
    handle = load_tiny(pack)
    _, sampler, cmap = nodes(pack)
    images, record = generate(sampler, handle, **SMALL)
    saved = set(comfy.temp_dir.iterdir())                              # the sampler's own preview
    err = input_error(pack)
    with pytest.raises(err, match=r"image batch size 1 does not match the compute record's batch size 2"):
        cmap.render(record, "share", "inferno", 0.6, 256, image=images[:1])
    with pytest.raises(err, match=r"mode='blend' is not one of"):
        cmap.render(record, "blend", "inferno", 0.6, 256)
    with pytest.raises(err, match=r"colormap='jet' is not one of"):
        cmap.render(record, "share", "jet", 0.6, 256)
    with pytest.raises(err, match=r"size=5000 must be an integer in 32\.\.1024"):
        cmap.render(record, "share", "inferno", 0.6, 5000)
    with pytest.raises(err, match=r"connect a NitroGen Adaptive Sampler"):
        cmap.render(images, "share", "inferno", 0.6, 256)
    assert set(comfy.temp_dir.iterdir()) == saved                      # a failed render writes nothing


# -- example workflows ------------------------------------------------------------------

WORKFLOW_FILES = sorted((REPO / "example_workflows").glob("*.json"))
BASIC = REPO / "example_workflows" / "Generate emoji and map where compute went.json"
COMPARE = REPO / "example_workflows" / "Full vs adaptive compute on the same seed.json"


def test_example_workflows_exist():
    assert set(WORKFLOW_FILES) >= {BASIC, COMPARE}


def _check_widget(where: str, name: str, spec: tuple, value) -> None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        assert value in kind, f"{where}: {name}={value!r} is not in the combo {kind}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {name}={value!r} is not an INT"
        assert options["min"] <= value <= options["max"], f"{where}: {name}={value} is out of range"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {name}={value!r}"
        assert options["min"] <= value <= options["max"], f"{where}: {name}={value} is out of range"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {name}={value!r} is not a STRING"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {name}={value!r} is not a BOOLEAN"
    else:
        raise AssertionError(f"{where}: {name} has unknown widget type {kind!r}")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_example_workflow_is_valid(path, pack, comfy, runner):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in wf, f"{path.name}: no {key!r}"
    nodes_by_id = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes_by_id) == len(wf["nodes"]), "node ids are not unique"
    assert wf["last_node_id"] >= max(nodes_by_id)
    link_ids = [link[0] for link in wf["links"]]
    assert len(set(link_ids)) == len(link_ids), "link ids are not unique"
    assert wf["last_link_id"] >= max(link_ids)

    classes = pack.NODE_CLASS_MAPPINGS
    for node in wf["nodes"]:
        where = f"{path.name} node {node['id']} ({node['type']})"
        for key in ("pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"):
            assert key in node, f"{where}: no {key!r}"
        assert node["properties"]["Node name for S&R"] == node["type"], where
        if node["type"] in runner.CORE_NODES:
            core = runner.CORE_NODES[node["type"]]
            sockets, out_types = core["inputs"], core["outputs"]
            assert len(node["widgets_values"]) == len(core["widgets"]), where
            for (name, spec), value in zip(core["widgets"], node["widgets_values"]):
                _check_widget(where, name, spec, value)
        else:
            assert node["type"] in OUR_NODES, f"{where}: neither ours nor a core node"
            cls = classes[node["type"]]
            sockets, out_types = runner.socket_inputs(cls), list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
            widgets = runner.widget_kwargs(cls, node["widgets_values"])       # count and control entries
            specs = dict(runner.widget_inputs(cls))
            for name, value in widgets.items():
                _check_widget(where, name, specs[name], value)
            required = set(cls.INPUT_TYPES()["required"])
            for inp in node["inputs"]:
                if inp["name"] in required:
                    assert inp["link"] is not None, f"{where}: required input {inp['name']!r} is not connected"
        assert [(i["name"], i["type"]) for i in node["inputs"]] == sockets, f"{where}: input sockets differ"
        assert [(o["name"], o["type"]) for o in node["outputs"]] == out_types, f"{where}: outputs differ"

    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        where = f"{path.name} link {link_id}"
        assert src in nodes_by_id and dst in nodes_by_id, f"{where}: endpoint missing"
        out = nodes_by_id[src]["outputs"][src_slot]
        inp = nodes_by_id[dst]["inputs"][dst_slot]
        assert out["type"] == kind == inp["type"], f"{where}: types {out['type']} -> {kind} -> {inp['type']}"
        assert link_id in (out["links"] or []), f"{where}: not listed on the source output"
        assert inp["link"] == link_id, f"{where}: not set on the target input"
    for node in wf["nodes"]:                                           # no dangling references
        for out in node["outputs"]:
            for link_id in out["links"] or []:
                assert link_id in link_ids, f"{path.name} node {node['id']}: unknown link {link_id}"
        for inp in node["inputs"]:
            assert inp["link"] is None or inp["link"] in link_ids


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_example_workflow_runs_on_tiny(path, pack, comfy, runner):
    # The workflows name the bundled checkpoint and class "heart"; run them on tiny (which has "heart").
    wf = json.loads(path.read_text())
    run = runner.run_workflow(wf, pack.NODE_CLASS_MAPPINGS,
                              {"NitroGenLoader": {"ckpt_name": "tiny.safetensors"},
                               "NitroGenAdaptiveSampler": {"steps": 4}})
    assert run["previews"], "nothing is previewed"
    for _, _, images in run["previews"]:
        assert images.ndim == 4 and images.shape[-1] == 3
    for ui in run["ui"].values():
        for entry in ui["images"]:
            assert (comfy.temp_dir / entry["filename"]).is_file()
    # The runner (and test_workflows' "each output shown once") counts as a display exactly the
    # nodes that do send images to the frontend.
    classes = pack.NODE_CLASS_MAPPINGS
    showing = {n["id"] for n in wf["nodes"]
               if n["type"] in classes and runner.shown_output(classes[n["type"]]) is not None}
    assert {node_id for node_id, ui in run["ui"].items() if ui and ui.get("images")} == showing
    thumb = runner.thumbnail(run["previews"])
    assert thumb.height >= runner.PANEL_HEIGHT + 24 and thumb.width > runner.PANEL_HEIGHT


def test_api_prompt_of_basic_workflow(pack, comfy, runner):
    wf = json.loads(BASIC.read_text())
    prompt = runner.to_api_prompt(wf, pack.NODE_CLASS_MAPPINGS)
    assert prompt["1"] == {"class_type": "NitroGenLoader",
                           "inputs": {"ckpt_name": "nitrogen-emoji32 (bundled)", "device": "auto", "dtype": "auto"}}
    s = prompt["2"]["inputs"]
    assert prompt["2"]["class_type"] == "NitroGenAdaptiveSampler" and s["model"] == ["1", 0]
    assert set(s) == {"model", "seed", "label", "batch_size", "steps", "cfg", "threshold", "budget"}
    assert prompt["3"]["class_type"] == "NitroGenComputeMap"
    assert prompt["3"]["inputs"]["compute"] == ["2", 1] and prompt["3"]["inputs"]["image"] == ["2", 0]
    assert set(prompt) == {"1", "2", "3"}                             # the sampler shows its images itself
    json.dumps(prompt)                                                 # serialisable as the /prompt body
