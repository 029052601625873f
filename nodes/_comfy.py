"""Lazy access to ComfyUI's modules: the only place in the pack that imports them.

Each accessor imports on call, never at pack import, so:
- loading the pack outside ComfyUI (tests, tools) adds no `comfy`/`folder_paths` modules;
- tests can put stand-ins into sys.modules before calling a node.

`save_temp_png` writes a node's own preview the way ComfyUI's PreviewImage does (temp folder).
"""
from __future__ import annotations

import os
import uuid
from types import ModuleType


def folder_paths() -> ModuleType:
    import folder_paths as module
    return module


def model_management() -> ModuleType:
    import comfy.model_management as module
    return module


def utils() -> ModuleType:
    import comfy.utils as module
    return module


def save_temp_png(image, prefix: str) -> dict:
    """Save a PIL image as a PNG in ComfyUI's temp folder and return its entry for a node's
    `{"ui": {"images": [...]}}`: the frontend fetches it through /view and draws it in the node."""
    folder = folder_paths().get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    filename = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
    image.save(os.path.join(folder, filename), compress_level=1)
    return {"filename": filename, "subfolder": "", "type": "temp"}
