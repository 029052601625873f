"""The example workflows as a user sees them in ComfyUI's frontend; no ComfyUI needed.

Every number below was measured in the real frontend (comfyui-frontend-package 1.27.10, the version
ComfyUI a125cd84 pins) in headless Chromium, by loading each workflow, reading the node boxes the
frontend computes (`app.graph._nodes`: pos, size, computeSize(), the image-preview widget's y)
before and after a run, and looking at screenshots.

- The template browser gets nothing but file names from the server (`GET /workflow_templates`,
  app/custom_node_manager.py). For a custom node pack's template the frontend makes the card's
  title the file name and its description the same name with "-" and "_" turned into spaces
  (workflowTemplatesStore.ts: `description: name`; useTemplateWorkflows.ts: getTemplateDescription).
  It reads no field of the workflow JSON and no index.json, so the file name is the one-line
  description a user sees. `extra.info` keeps a longer sentence for people reading the JSON.
- The frontend draws a node's title bar above `pos` (LiteGraph.NODE_TITLE_HEIGHT).
- A node that shows images gets an image-preview widget (minimum height 220) and grows to its
  computeSize() if smaller. A size in the JSON at least that minimum is drawn as it is, before and
  after a run.
- The sampler shows its images itself, as one nearest-upscaled grid: its step previews while it
  samples, then its final images (its "ui"), which ComfyUI re-sends when the sampler is cached.
  After a run that sampled, the frontend keeps drawing the last step preview instead
  (useNodeOutputStore.getNodeImageUrls returns step previews first); that preview is the same
  final grid (tests/test_nodes.py). Measured both ways: the same minimum size and image area.
- Images are drawn in the area under the widgets, in the grid that shows them largest, never
  above their own size (scripts/ui/imagePreview.ts: calculateImageGrid); 15 px stay free for the
  "W x H" caption. A 32 px emoji is drawn 32 px wide, so whatever shows one must upscale it
  (the sampler's grid is upscaled by nearest towards 512 px; ImageScaleBy nearest-exact x8 does
  it for a Preview Image).
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from comfy_stub import REPO, load_pack, make_stub, unload_pack

WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
PACK = REPO.name.replace(".", "_") + "_workflows_test"

FRONTEND = "comfyui-frontend-package 1.27.10"
TITLE_HEIGHT = 30            # LiteGraph.NODE_TITLE_HEIGHT
GAP = 10                     # px kept free between two node boxes, title bars included
CAPTION_HEIGHT = 15          # under drawn images (setting Comfy.Node.AllowImageSizeDraw, on by default)
MIN_SHOWN_PX = 128           # smallest side of every image as drawn at zoom 1
CARD_TITLE_CHARS = 48        # the card's title shows two lines of about 24 characters, then "..."
CANVAS = (1600, 860)         # the view stored in extra.ds shows the whole graph on a canvas this big

# Per node type, measured in the frontend: the smallest size it lets the node have once the node
# shows images (computeSize() with the preview widget), the y where its image area starts, and the
# widgets it had then. A node type or widget list not listed here needs measuring again.
MEASURED = {
    "NitroGenLoader": {"min": (210, 106), "widgets": ("ckpt_name", "device", "dtype")},
    "NitroGenAdaptiveSampler": {"min": (210, 470), "preview_y": 238,       # its images grid
                                "widgets": ("seed", "control_after_generate", "label", "batch_size", "steps",
                                            "cfg", "threshold", "budget")},
    "NitroGenComputeMap": {"min": (210, 374), "preview_y": 142, "widgets": ("mode", "colormap", "alpha", "size")},
    "ImageScaleBy": {"min": (210, 82), "widgets": ("upscale_method", "scale_by")},
    "PreviewImage": {"min": (210, 258), "preview_y": 26, "widgets": ()},
}


def _runner():
    spec = importlib.util.spec_from_file_location("nitrogen_workflow_runner",
                                                  REPO / "scripts" / "make_workflow_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _runner()


@pytest.fixture(scope="module")
def pack():
    unload_pack(PACK)
    module = load_pack(PACK)
    yield module
    unload_pack(PACK)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _box(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of what the frontend draws: the title bar sits above pos."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def _widget_names(node: dict, classes: dict) -> tuple[str, ...]:
    if node["type"] in runner.CORE_NODES:
        return tuple(name for name, _ in runner.CORE_NODES[node["type"]]["widgets"])
    names = []
    for name, spec in runner.widget_inputs(classes[node["type"]]):
        names.append(name)
        if len(spec) > 1 and spec[1].get("control_after_generate"):
            names.append("control_after_generate")
    return tuple(names)


def drawn_image_size(node: dict, count: int, width: int, height: int) -> tuple[float, float]:
    """How large the frontend draws each of `count` images of width x height px in this node at zoom 1
    (calculateImageGrid: the column count that gives the largest images; never above 1:1)."""
    area_w = node["size"][0]
    area_h = node["size"][1] - MEASURED[node["type"]]["preview_y"] - CAPTION_HEIGHT
    best, best_scale = 0.0, 0.0
    for cols in range(1, count + 1):
        rows = math.ceil(count / cols)
        scale = min(area_w / cols / width, area_h / rows / height, 1.0)
        if scale * scale * width * height * count > best:
            best, best_scale = scale * scale * width * height * count, scale
    return width * best_scale, height * best_scale


# -- what the template browser shows ----------------------------------------------------

@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_one_line_description(path):
    shown = re.sub(r"[-_]", " ", path.stem).strip()            # the card's description text
    assert len(shown.split()) >= 4, (
        f"{path.name}: the template browser shows {shown!r} as this workflow's description (it reads the "
        "file name only); name the file with a one-line description")
    assert len(path.stem) <= CARD_TITLE_CHARS, f"{path.name}: the card cuts titles after ~{CARD_TITLE_CHARS} characters"
    assert not set(path.stem) & set("#?%/\\"), f"{path.name}: the frontend puts the name in URLs unescaped"
    assert path.with_suffix(".jpg").is_file(), f"{path.name}: no thumbnail of the same name"
    info = _load(path)["extra"].get("info", {})
    assert info.get("name") == path.stem, f"{path.name}: extra.info.name should be the name the browser shows"
    text = info.get("description", "")
    assert isinstance(text, str) and 20 <= len(text) <= 200 and "\n" not in text, (
        f"{path.name}: extra.info.description should be one line: {text!r}")


# -- the canvas -------------------------------------------------------------------------

@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_do_not_overlap(path):
    nodes = _load(path)["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            al, at, ar, ab = _box(a)
            bl, bt, br, bb = _box(b)
            apart = al >= br + GAP or bl >= ar + GAP or at >= bb + GAP or bt >= ab + GAP
            assert apart, (f"{path.name}: node {a['id']} {a.get('title', a['type'])!r} {_box(a)} and node "
                           f"{b['id']} {b.get('title', b['type'])!r} {_box(b)} overlap (title bars included, "
                           f"{GAP} px apart at least)")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_node_sizes_are_what_the_frontend_draws(path, pack):
    for node in _load(path)["nodes"]:
        where = f"{path.name} node {node['id']} ({node['type']})"
        assert node["type"] in MEASURED, f"{where}: not measured in {FRONTEND}; measure its drawn size first"
        measured = MEASURED[node["type"]]
        assert _widget_names(node, pack.NODE_CLASS_MAPPINGS) == measured["widgets"], (
            f"{where}: its widgets changed since it was measured in {FRONTEND}; measure its drawn size again")
        w, h = node["size"]
        min_w, min_h = measured["min"]
        assert w >= min_w and h >= min_h, (
            f"{where}: size {node['size']} is below the {measured['min']} the frontend gives it once it shows "
            "images; it would grow over its neighbours after a run")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_opening_view_shows_the_whole_graph(path):
    wf = _load(path)
    ds = wf["extra"]["ds"]
    boxes = [_box(n) for n in wf["nodes"]]
    left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
    right, bottom = max(b[2] for b in boxes), max(b[3] for b in boxes)
    screen = [(x + ds["offset"][0]) * ds["scale"] for x in (left, right)] + \
             [(y + ds["offset"][1]) * ds["scale"] for y in (top, bottom)]
    assert 0 <= screen[0] and screen[1] <= CANVAS[0] and 0 <= screen[2] and screen[3] <= CANVAS[1], (
        f"{path.name}: extra.ds {ds} shows the graph at {screen}, outside a {CANVAS} canvas")


# -- the images -------------------------------------------------------------------------

@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_each_output_image_is_shown_once(path, pack):
    """A display is a Preview/Save Image (through any ImageScaleBy) or a node of this pack that shows
    its own IMAGE output: the sampler its images, the Compute Map its heatmaps (runner.displays)."""
    wf = _load(path)
    classes = pack.NODE_CLASS_MAPPINGS
    shown = {}
    for entry in runner.displays(wf, classes):
        shown.setdefault(entry["source"], []).append(entry["node"])
    for node in wf["nodes"]:
        if node["type"] not in classes:
            continue
        for slot, kind in enumerate(classes[node["type"]].RETURN_TYPES):
            if kind == "IMAGE":
                where = node["outputs"][slot]["name"]
                by = shown.get((node["id"], slot), [])
                assert len(by) == 1, (f"{path.name}: output {where!r} of node {node['id']} ({node['type']}) is "
                                      f"shown by {len(by)} nodes {by}, not once")


@pytest.fixture(scope="module")
def runs(pack, tmp_path_factory):
    """Each workflow run on the bundled checkpoint as shipped, with 2 steps (the shapes are the same)."""
    stub = make_stub(tmp_path_factory.mktemp("comfy"))
    with pytest.MonkeyPatch.context() as mp:
        for name, module in stub.modules.items():
            mp.setitem(sys.modules, name, module)
        yield {path: {**runner.run_workflow(_load(path), pack.NODE_CLASS_MAPPINGS,
                                            {"NitroGenAdaptiveSampler": {"steps": 2}}),
                      "temp_dir": stub.temp_dir}
               for path in WORKFLOWS}


def shown_files(run: dict, node_id: int, images) -> tuple[int, int, int, int, int]:
    """What the frontend loads into a node: (files, width, height, grid columns, grid rows). A node of
    this pack draws the PNGs it sends as "ui" (the sampler: one near-square grid of all its images,
    like its step previews); a Preview Image gets one PNG per image."""
    count = images.shape[0]
    ui = (run["ui"].get(node_id) or {}).get("images")
    if not ui:
        return count, images.shape[2], images.shape[1], 1, 1
    sizes = {Image.open(run["temp_dir"] / entry["subfolder"] / entry["filename"]).size for entry in ui}
    assert len(sizes) == 1, f"node {node_id} sends PNGs of different sizes {sizes}"
    (width, height), per_file = sizes.pop(), count // len(ui)
    cols = math.ceil(math.sqrt(per_file))
    return len(ui), width, height, cols, math.ceil(per_file / cols)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_images_are_drawn_at_a_readable_size(path, runs):
    nodes = {n["id"]: n for n in _load(path)["nodes"]}
    run = runs[path]
    assert run["previews"], f"{path.name}: shows no image"
    for node_id, caption, images in run["previews"]:
        count, height, width, _ = images.shape
        files, file_w, file_h, cols, rows = shown_files(run, node_id, images)
        assert file_w * rows * height == file_h * cols * width, (
            f"{path.name}: {caption!r} sends {files} PNGs of {file_w}x{file_h} px, not a {cols}x{rows} grid "
            f"of its {width}x{height} px images")
        w, h = drawn_image_size(nodes[node_id], files, file_w, file_h)
        w, h = w / cols, h / rows                                    # one image of the grid
        assert min(w, h) >= MIN_SHOWN_PX, (
            f"{path.name}: {caption!r} draws its {count} images of {width}x{height} px at {w:.0f}x{h:.0f} px "
            f"each; at least {MIN_SHOWN_PX} px wanted (upscale them, e.g. ImageScaleBy nearest-exact x8, or "
            "enlarge the node)")


@pytest.mark.parametrize("train, steps", [
    ({"steps": 6000}, 6000),                                                     # teacher
    ({"distill_steps": 600, "stage": "student"}, 600),                           # student
    ({"stage": "gate", "student_train": {"distill_steps": 600}}, 600),            # a new gate on a student
    ({"note": "untrained: written by `init`"}, None),
    ({"stage": "gate", "student_train": {}}, None),
])
def test_thumbnails_know_a_trained_checkpoint_from_its_metadata(train, steps):
    assert runner.training_steps(train) == steps
