"""Against a real ComfyUI: the pack loads as a custom node folder, the three nodes and the example
workflows are served, and the basic workflow runs through /prompt to images in /history and /view.

Skipped unless COMFYUI_PATH points at a ComfyUI checkout. COMFYUI_PYTHON (default: this Python)
must have ComfyUI's requirements installed. The server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set; the real-ComfyUI check is skipped")
PACK = "ComfyUI-NitroGen"
OUR_NODES = ("NitroGenLoader", "NitroGenAdaptiveSampler", "NitroGenComputeMap")
WORKFLOWS = REPO / "example_workflows"
BASIC = "Generate emoji and map where compute went"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _thumbnail_script():
    spec = importlib.util.spec_from_file_location("nitrogen_thumbnails_script", REPO / "scripts" / "make_workflow_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(REPO, target_is_directory=True)
    (base / "models" / "nitrogen").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "nitrogen_core", "init", "--preset", "tiny", "--labels", "a,b,c",
                    "--out", str(base / "models" / "nitrogen" / "tiny-test.safetensors")], cwd=REPO, check=True)
    config = base / "extra_model_paths.yaml"
    config.write_text(f"nitrogen_test:\n  base_path: {base}\n  custom_nodes: custom_nodes\n"
                      f"  nitrogen: models/nitrogen\n")
    port = _free_port()
    log = open(base / "comfyui.log", "w")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--extra-model-paths-config", str(config), "--disable-auto-launch",
                             "--output-directory", str(base / "output"), "--temp-directory", str(base)],
                            cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            _get(url + "/object_info/NitroGenLoader", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("ComfyUI did not come up:\n" + (base / "comfyui.log").read_text()[-3000:])
            time.sleep(1)
    yield {"url": url, "base": base, "log": base / "comfyui.log"}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_nodes_and_templates_are_served(server):
    info = json.loads(_get(server["url"] + "/object_info"))
    for name in OUR_NODES:
        assert name in info, f"{name} missing from /object_info"
        assert info[name]["category"] == "NitroGen"
    ckpts = info["NitroGenLoader"]["input"]["required"]["ckpt_name"][0]
    assert "tiny-test.safetensors" in ckpts                     # found through extra_model_paths.yaml
    assert ckpts[:2] == ["nitrogen-emoji32 (bundled)", "nitrogen-emoji32-dit (bundled)"]   # both backbones
    templates = json.loads(_get(server["url"] + "/workflow_templates"))
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(templates.get(PACK, [])) == names
    for name in names:                       # what the template browser fetches, names with spaces included
        quoted = urllib.parse.quote(name)
        assert json.loads(_get(f"{server['url']}/api/workflow_templates/{PACK}/{quoted}.json"))["nodes"]
        assert _get(f"{server['url']}/api/workflow_templates/{PACK}/{quoted}.jpg")[:2] == b"\xff\xd8"


def _run_prompt(server, prompt: dict) -> tuple[dict, float]:
    """Post an API prompt, wait for it, return (its history outputs by node id, seconds from start
    to success)."""
    prompt_id = _post(server["url"] + "/prompt", {"prompt": prompt})["prompt_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        history = json.loads(_get(server["url"] + f"/history/{prompt_id}"))
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed"):
            break
        if prompt_id in history and history[prompt_id].get("status", {}).get("status_str") == "error":
            pytest.fail(json.dumps(history[prompt_id]["status"])[-3000:])
        time.sleep(0.5)
    else:
        pytest.fail("the prompt did not finish:\n" + server["log"].read_text()[-3000:])
    entry = history[prompt_id]
    stamps = {name: data.get("timestamp") for name, data in entry["status"].get("messages", [])}
    seconds = (stamps["execution_success"] - stamps["execution_start"]) / 1000 \
        if stamps.get("execution_success") and stamps.get("execution_start") else float("nan")
    return entry["outputs"], seconds


def _view(server, img: dict) -> Image.Image:
    query = urllib.parse.urlencode({k: img[k] for k in ("filename", "subfolder", "type")})
    data = _get(server["url"] + "/view?" + query)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def _node_id(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def test_basic_workflow_runs(server):
    """Each output is shown once: the sampler's images by the sampler (one grid), the heatmaps by the
    Compute Map. ComfyUI keeps the sampler's "ui" in the history, also when a rerun finds it cached."""
    script = _thumbnail_script()
    workflow = json.loads((WORKFLOWS / f"{BASIC}.json").read_text())
    pack = script.load_pack()
    prompt = script.to_api_prompt(workflow, pack.NODE_CLASS_MAPPINGS,
                                  overrides={"NitroGenLoader": {"ckpt_name": "tiny-test.safetensors"},
                                             "NitroGenAdaptiveSampler": {"label": "a", "steps": 4}})
    sampler, cmap = _node_id(prompt, "NitroGenAdaptiveSampler"), _node_id(prompt, "NitroGenComputeMap")
    batch = prompt[sampler]["inputs"]["batch_size"]
    outputs, _ = _run_prompt(server, prompt)
    assert set(outputs) == {sampler, cmap}, sorted(outputs)
    (grid,) = outputs[sampler]["images"]
    assert _view(server, grid).size == (512, 512)                 # tiny is 16 px: 2x2 of them, nearest x16
    assert len(outputs[cmap]["images"]) == batch

    again, _ = _run_prompt(server, prompt)                         # the same prompt: every node cached
    assert again[sampler]["images"] == [grid] and again[cmap] == outputs[cmap]


def test_loader_and_sampler_alone_run(server):
    """The sampler is an output node (it shows its images), so ComfyUI runs a graph that ends in it."""
    prompt = {"1": {"class_type": "NitroGenLoader",
                    "inputs": {"ckpt_name": "tiny-test.safetensors", "device": "auto", "dtype": "auto"}},
              "2": {"class_type": "NitroGenAdaptiveSampler",
                    "inputs": {"model": ["1", 0], "seed": 5, "label": "b", "batch_size": 1, "steps": 2, "cfg": 1.5,
                               "threshold": 0.003, "budget": 1.0}}}
    outputs, _ = _run_prompt(server, prompt)
    (grid,) = outputs["2"]["images"]
    assert _view(server, grid).size == (512, 512)                 # one 16 px image, nearest x32


def test_shipped_workflow_on_bundled_checkpoint(server):
    """The basic workflow exactly as shipped: bundled checkpoint, class heart, 20 steps."""
    script = _thumbnail_script()
    workflow = json.loads((WORKFLOWS / f"{BASIC}.json").read_text())
    pack = script.load_pack()
    prompt = script.to_api_prompt(workflow, pack.NODE_CLASS_MAPPINGS)
    outputs, seconds = _run_prompt(server, prompt)
    sampler = _node_id(prompt, "NitroGenAdaptiveSampler")
    batch = prompt[sampler]["inputs"]["batch_size"]
    print(f"\nbasic workflow, bundled checkpoint: {seconds:.2f} s for {batch} images "
          f"({seconds / batch:.2f} s/image, ComfyUI --cpu, incl. model load on first use)")
    (entry,) = outputs[sampler]["images"]
    grid = _view(server, entry).convert("RGB")
    assert batch == 4 and grid.size == (512, 512)                # 2x2 emoji of 32 px, nearest x8
    for r in range(2):
        for c in range(2):                                        # a trained model draws: not flat, mostly white ground
            tile = grid.crop((c * 256, r * 256, (c + 1) * 256, (r + 1) * 256)).resize((32, 32), Image.NEAREST)
            arr = np.asarray(tile, dtype=np.float32) / 255
            assert arr.std() > 0.15 and (arr.min(axis=2) > 0.9).mean() > 0.2


def test_backbone_workflow_runs_on_both_bundled_checkpoints(server):
    """The third workflow as shipped: the same seed and class on the bundled U-Net and transformer,
    each sampler showing its grid and each Compute Map its heatmaps."""
    script = _thumbnail_script()
    workflow = json.loads((WORKFLOWS / "U-Net vs transformer on the same seed.json").read_text())
    pack = script.load_pack()
    prompt = script.to_api_prompt(workflow, pack.NODE_CLASS_MAPPINGS)
    loaders = sorted(v["inputs"]["ckpt_name"] for v in prompt.values() if v["class_type"] == "NitroGenLoader")
    assert loaders == ["nitrogen-emoji32 (bundled)", "nitrogen-emoji32-dit (bundled)"]
    outputs, seconds = _run_prompt(server, prompt)
    print(f"\nbackbone workflow, both bundled checkpoints: {seconds:.2f} s")
    samplers = [k for k, v in prompt.items() if v["class_type"] == "NitroGenAdaptiveSampler"]
    maps = [k for k, v in prompt.items() if v["class_type"] == "NitroGenComputeMap"]
    assert set(outputs) == {*samplers, *maps}, sorted(outputs)
    for k in samplers:
        (entry,) = outputs[k]["images"]
        assert _view(server, entry).size == (512, 512)
    for k in maps:
        assert len(outputs[k]["images"]) == prompt[samplers[0]]["inputs"]["batch_size"]
