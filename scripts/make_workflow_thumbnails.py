"""Render example_workflows/<name>.jpg from the real outputs of example_workflows/<name>.json.

    python scripts/make_workflow_thumbnails.py                  # bundled checkpoint, all workflows
    python scripts/make_workflow_thumbnails.py --ckpt FILE --out-dir /tmp/thumbs --allow-untrained

It runs each workflow's nodes through this pack's node classes, loaded the way ComfyUI loads a
custom-node folder (by path), with minimal stand-ins for the few ComfyUI functions the nodes call.
No ComfyUI is needed. The thumbnail lays out what the workflow shows in the frontend: the images
of its PreviewImage/SaveImage nodes and of this pack's output nodes that show their own result
(the Adaptive Sampler its images, the Compute Map its heatmaps), in canvas reading order, each
captioned with the node title.

Thumbnails must show what the model really does, so an untrained checkpoint (train steps 0) is
refused unless --allow-untrained, which is for checking this script only.

The runner (`widget_inputs`, `widget_kwargs`, `run_workflow`, `to_api_prompt`, `displays`) is reused by
tests/test_nodes.py and tests/test_workflows.py; `to_api_prompt` also gives the /prompt body for a test
against a real ComfyUI.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "example_workflows"
PACK_NAME = "NitroGen_thumbnails"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
# ComfyUI core nodes the example workflows may use, as ComfyUI's nodes.py declares them: socket
# inputs, widgets (name, input spec) in order, outputs (name, type), and the input whose images the
# frontend shows in the node ("shows"; None for a node that shows nothing).
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CORE_NODES = {
    "PreviewImage": {"inputs": [("images", "IMAGE")], "widgets": [], "outputs": [], "shows": "images"},
    "SaveImage": {"inputs": [("images", "IMAGE")], "widgets": [("filename_prefix", ("STRING", {}))],
                  "outputs": [], "shows": "images"},
    "ImageScaleBy": {"inputs": [("image", "IMAGE")],
                     "widgets": [("upscale_method", (UPSCALE_METHODS, {})),
                                 ("scale_by", ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}))],
                     "outputs": [("IMAGE", "IMAGE")], "shows": None},
}
PANEL_HEIGHT = 256


# -- reading a UI-format workflow ---------------------------------------------------------

def is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def all_inputs(cls) -> list[tuple[str, tuple]]:
    """(name, spec) of every input, required then optional, in declaration order."""
    types = cls.INPUT_TYPES()
    return [(name, spec) for group in ("required", "optional") for name, spec in types.get(group, {}).items()]


def widget_inputs(cls) -> list[tuple[str, tuple]]:
    return [(name, spec) for name, spec in all_inputs(cls) if is_widget(spec)]


def socket_inputs(cls) -> list[tuple[str, str]]:
    return [(name, spec[0]) for name, spec in all_inputs(cls) if not is_widget(spec)]


def widget_kwargs(cls, values: list) -> dict:
    """Map a node's widgets_values onto its widget inputs. A widget with control_after_generate is
    followed by one extra value (fixed/increment/decrement/randomize), which the frontend keeps."""
    out, i = {}, 0
    for name, spec in widget_inputs(cls):
        if i >= len(values):
            raise ValueError(f"{cls.__name__}: widgets_values has {len(values)} entries, too few for {name!r}")
        out[name] = values[i]
        i += 1
        options = spec[1] if len(spec) > 1 else {}
        if options.get("control_after_generate"):
            if i >= len(values) or values[i] not in CONTROL_VALUES:
                raise ValueError(f"{cls.__name__}: {name!r} must be followed by one of {CONTROL_VALUES}")
            i += 1
    if i != len(values):
        raise ValueError(f"{cls.__name__}: widgets_values has {len(values)} entries, expected {i}")
    return out


def topological(workflow: dict) -> list[dict]:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    deps = {nid: set() for nid in nodes}
    for _, src, _, dst, _, _ in workflow["links"]:
        deps[dst].add(src)
    order, done = [], set()
    while len(order) < len(nodes):
        ready = sorted(nid for nid in nodes if nid not in done and deps[nid] <= done)
        if not ready:
            raise ValueError("the workflow has a cycle")
        for nid in ready:
            order.append(nodes[nid])
            done.add(nid)
    return order


def shown_output(cls) -> int | None:
    """The output slot an output node of this pack shows itself (its IMAGE result, saved as
    `ui.images`: the sampler's images as one grid, the Compute Map's heatmaps), or None. The
    frontend draws these in the node, like a PreviewImage. tests/test_nodes.py checks that exactly
    these nodes return `ui.images`."""
    if getattr(cls, "OUTPUT_NODE", False) and "IMAGE" in cls.RETURN_TYPES:
        return list(cls.RETURN_TYPES).index("IMAGE")
    return None


def image_scale_by(image, upscale_method: str, scale_by: float):
    """ComfyUI's ImageScaleBy (nodes.py, comfy.utils.common_upscale) for the interpolate modes."""
    import torch

    if upscale_method not in ("nearest-exact", "bilinear", "area", "bicubic"):
        raise ValueError(f"ImageScaleBy: upscale_method {upscale_method!r} is not supported by this runner")
    samples = image.movedim(-1, 1)
    size = (round(samples.shape[2] * scale_by), round(samples.shape[3] * scale_by))
    return torch.nn.functional.interpolate(samples, size=size, mode=upscale_method).movedim(1, -1)


def displays(workflow: dict, classes: dict) -> list[dict]:
    """What the frontend shows after a run, read from the graph alone: one entry per node that draws
    images, with the image output they come from (following ImageScaleBy nodes back to it).

    Each entry: {"node": display node id, "source": (node id, output slot) of the image's producer,
    "scale": product of the ImageScaleBy factors on the way}."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {lid: (src, slot) for lid, src, slot, _, _, _ in workflow["links"]}

    def trace(node_id: int, input_name: str) -> tuple[tuple[int, int], float] | None:
        link = next((i.get("link") for i in nodes[node_id]["inputs"] if i["name"] == input_name), None)
        if link is None:
            return None
        src, slot = links[link]
        if nodes[src]["type"] == "ImageScaleBy":
            upstream = trace(src, "image")
            if upstream is None:
                return None
            return upstream[0], upstream[1] * float(nodes[src]["widgets_values"][1])
        return (src, slot), 1.0

    out = []
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in CORE_NODES:
            shows = CORE_NODES[kind]["shows"]
            traced = trace(node["id"], shows) if shows else None
            if traced:
                out.append({"node": node["id"], "source": traced[0], "scale": traced[1]})
        elif kind in classes and shown_output(classes[kind]) is not None:
            out.append({"node": node["id"], "source": (node["id"], shown_output(classes[kind])), "scale": 1.0})
    return out


def run_workflow(workflow: dict, classes: dict, overrides: dict | None = None, names: dict | None = None) -> dict:
    """Execute a UI-format workflow with our node classes and the CORE_NODES.

    overrides: {node type: {input name: value}} replacing widget values (e.g. another ckpt_name).
    names: display names by node type, for captions of nodes without a title.
    Returns {"outputs": {node id: result tuple}, "ui": {node id: ui dict},
             "previews": [(node id, caption, IMAGE tensor)] of every node that shows images (see
             `displays`), top to bottom, then left to right}.
    """
    overrides, names = overrides or {}, names or {}
    links = {lid: (src, slot) for lid, src, slot, _, _, _ in workflow["links"]}
    outputs, ui, previews = {}, {}, []
    for node in topological(workflow):
        kind = node["type"]
        caption = node.get("title") or names.get(kind, kind)
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                src, slot = links[inp["link"]]
                linked[inp["name"]] = outputs[src][slot]
        if kind in CORE_NODES:
            core = CORE_NODES[kind]
            values = dict(zip((name for name, _ in core["widgets"]), node.get("widgets_values", [])))
            if kind == "ImageScaleBy":
                outputs[node["id"]] = (image_scale_by(linked["image"], values["upscale_method"], values["scale_by"]),)
            if core["shows"]:
                previews.append((node["id"], caption, linked[core["shows"]], node))
            continue
        cls = classes[kind]
        kwargs = {**widget_kwargs(cls, node.get("widgets_values", [])), **overrides.get(kind, {}), **linked}
        result = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(result, dict):
            ui[node["id"]] = result.get("ui")
            result = result["result"]
        outputs[node["id"]] = tuple(result)
        slot = shown_output(cls)
        if slot is not None:
            previews.append((node["id"], caption, outputs[node["id"]][slot], node))
    order = reading_order([p[3] for p in previews])
    previews.sort(key=lambda p: order.index(p[0]))
    return {"outputs": outputs, "ui": ui, "previews": [p[:3] for p in previews]}


def reading_order(nodes: list[dict]) -> list[int]:
    """Node ids in canvas reading order: rows top to bottom, left to right within a row. A node joins
    the current row when its box starts above the bottom of the row's first node."""
    rows = []
    for node in sorted(nodes, key=lambda n: (n["pos"][1], n["pos"][0])):
        if rows and node["pos"][1] < rows[-1][0]["pos"][1] + rows[-1][0]["size"][1]:
            rows[-1].append(node)
        else:
            rows.append([node])
    return [n["id"] for row in rows for n in sorted(row, key=lambda n: n["pos"][0])]


def to_api_prompt(workflow: dict, classes: dict, overrides: dict | None = None) -> dict:
    """The API-format prompt ComfyUI's /prompt takes for a UI-format workflow:
    {"<id>": {"class_type": type, "inputs": {widget: value, socket: ["<src id>", slot]}}}."""
    overrides = overrides or {}
    links = {lid: (src, slot) for lid, src, slot, _, _, _ in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in CORE_NODES:
            inputs = {name: value for (name, _), value in zip(CORE_NODES[kind]["widgets"], node["widgets_values"])}
        else:
            inputs = widget_kwargs(classes[kind], node.get("widgets_values", []))
        inputs.update(overrides.get(kind, {}))
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                src, slot = links[inp["link"]]
                inputs[inp["name"]] = [str(src), slot]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt


# -- running outside ComfyUI --------------------------------------------------------------

def _comfy_stub() -> ModuleType:
    """tests/comfy_stub.py, loaded by path: the same ComfyUI stand-ins and ComfyUI-style pack loader
    the node tests use, so the thumbnails run the nodes exactly as the tests do."""
    name = "nitrogen_comfy_stub"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "comfy_stub.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_pack(name: str = PACK_NAME) -> ModuleType:
    return _comfy_stub().load_pack(name)


# -- the thumbnail ------------------------------------------------------------------------

def panel(images, title: str):
    """[B, H, W, 3] float 0..1 -> one captioned PIL panel PANEL_HEIGHT px tall (grid scaled by nearest)."""
    import numpy as np
    from PIL import Image, ImageDraw

    arr = (images.detach().cpu().float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    b, h, w, _ = arr.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = arr[i]
    img = Image.fromarray(grid)
    scale = PANEL_HEIGHT / img.height
    # Nearest keeps pixels sharp going up; box averages going down (legend text stays legible).
    img = img.resize((max(1, round(img.width * scale)), PANEL_HEIGHT), Image.NEAREST if scale >= 1 else Image.BOX)
    out = Image.new("RGB", (img.width, PANEL_HEIGHT + 24), (255, 255, 255))
    out.paste(img, (0, 24))
    ImageDraw.Draw(out).text((4, 6), title, fill=(20, 20, 20))
    return out


def thumbnail(previews):
    """Panels in canvas reading order (top to bottom, then left to right), two per row from four on."""
    from PIL import Image

    panels = [panel(images, title) for _, title, images in previews]
    cols = 2 if len(panels) >= 4 else len(panels)
    rows = [panels[i:i + cols] for i in range(0, len(panels), cols)]
    gap = 8
    width = max(sum(p.width for p in row) + gap * (len(row) - 1) for row in rows)
    height = sum(max(p.height for p in row) for row in rows) + gap * (len(rows) - 1)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for row in rows:
        x = 0
        for p in row:
            out.paste(p, (x, y))
            x += p.width + gap
        y += max(p.height for p in row) + gap
    return out


def training_steps(train: dict) -> int | None:
    """Training steps recorded in a checkpoint's train metadata: a teacher's steps, a student's
    distillation steps, or, for a `train gate` checkpoint, its student's (kept under student_train)."""
    return (train.get("steps") or train.get("distill_steps")
            or (train.get("student_train") or {}).get("distill_steps"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="checkpoint to run instead of the bundled one")
    parser.add_argument("--out-dir", default=str(WORKFLOWS), help="where to write <name>.jpg (default example_workflows/)")
    parser.add_argument("--allow-untrained", action="store_true", help="accept a checkpoint with 0 training steps")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nitrogen-thumbs-") as tmp:
        root = Path(tmp)
        sys.modules.update(_comfy_stub().make_stub(root).modules)          # creates root/models/nitrogen
        pack = load_pack()
        loader = sys.modules[f"{PACK_NAME}.nodes.loader"]
        read_header = sys.modules[f"{PACK_NAME}.nitrogen_core.checkpoint"].read_header

        overrides = {}
        ckpt = Path(args.ckpt).resolve() if args.ckpt else loader.bundled_path()
        if not ckpt.is_file():
            print(f"error: checkpoint {ckpt} does not exist (train it first, or pass --ckpt)", file=sys.stderr)
            return 2
        if args.ckpt:
            (root / "models" / "nitrogen" / ckpt.name).symlink_to(ckpt)
            overrides = {"NitroGenLoader": {"ckpt_name": ckpt.name}}
        train = read_header(ckpt)["train"]
        trained_steps = training_steps(train)
        if not trained_steps and not args.allow_untrained:
            print(f"error: {ckpt} is untrained (train steps {trained_steps!r}); thumbnails would show noise. "
                  "Pass --allow-untrained only to test this script.", file=sys.stderr)
            return 2

        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(WORKFLOWS.glob("*.json")):
            workflow = json.loads(path.read_text())
            print(f"running {path.name}", file=sys.stderr)
            run = run_workflow(workflow, pack.NODE_CLASS_MAPPINGS, overrides, pack.NODE_DISPLAY_NAME_MAPPINGS)
            target = out_dir / f"{path.stem}.jpg"
            thumbnail(run["previews"]).save(target, quality=90)
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
