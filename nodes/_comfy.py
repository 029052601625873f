"""Lazy access to ComfyUI's modules: the only place in the pack that imports them.

Each accessor imports on call, never at pack import, so:
- loading the pack outside ComfyUI (tests, tools) adds no `comfy`/`folder_paths` modules;
- tests can put stand-ins into sys.modules before calling a node.
"""
from __future__ import annotations

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
