"""Minimal stand-ins for the parts of ComfyUI the NitroGen nodes use, and a ComfyUI-style pack loader
(shared by the node tests and scripts/make_workflow_thumbnails.py).

Only what the nodes call exists here, with the same names and signatures as ComfyUI's:
- `folder_paths`: models_dir, folder_names_and_paths, get_filename_list, get_full_path,
  get_full_path_or_raise, get_temp_directory;
- `comfy.utils.ProgressBar(total).update_absolute(value, total, preview)`, recording every call;
- `comfy.model_management`: get_torch_device, intermediate_device (both cpu),
  throw_exception_if_processing_interrupted and InterruptProcessingException. `interrupt_at_value`
  simulates a user pressing Cancel while the progress bar shows that value.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ComfyStub:
    root: Path
    modules: dict[str, ModuleType] = field(default_factory=dict)
    progress: list[tuple] = field(default_factory=list)        # (bar id, value, total, preview)
    bars: list[float] = field(default_factory=list)            # totals passed to ProgressBar()
    checks: int = 0                                            # interrupt checks made
    interrupt_at_value: int | None = None
    interrupted: bool = False

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def nitrogen_dir(self) -> Path:
        return self.models_dir / "nitrogen"

    @property
    def temp_dir(self) -> Path:
        return self.root / "temp"


def make_stub(root: Path) -> ComfyStub:
    stub = ComfyStub(root=Path(root))
    stub.nitrogen_dir.mkdir(parents=True, exist_ok=True)

    # -- folder_paths ---------------------------------------------------------------------
    fp = ModuleType("folder_paths")
    fp.models_dir = str(stub.models_dir)
    fp.folder_names_and_paths = {}

    def get_filename_list(folder_name):
        paths, exts = fp.folder_names_and_paths[folder_name]
        found = set()
        for base in paths:
            for dirpath, _, files in os.walk(base):
                for f in files:
                    rel = os.path.relpath(os.path.join(dirpath, f), base)
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        found.add(rel)
        return sorted(found)

    def get_full_path(folder_name, filename):
        if folder_name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")  # no escaping the folder
        for base in fp.folder_names_and_paths[folder_name][0]:
            full = os.path.join(base, filename)
            if os.path.isfile(full):
                return full
        return None

    def get_full_path_or_raise(folder_name, filename):
        full = get_full_path(folder_name, filename)
        if full is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return full

    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    fp.get_full_path_or_raise = get_full_path_or_raise
    fp.get_temp_directory = lambda: str(stub.temp_dir)

    # -- comfy.utils ----------------------------------------------------------------------
    comfy = ModuleType("comfy")
    comfy.__path__ = []
    utils = ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total
            self.current = 0
            stub.bars.append(total)

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            stub.progress.append((id(self), value, total, preview))
            if stub.interrupt_at_value is not None and value == stub.interrupt_at_value:
                stub.interrupted = True

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar

    # -- comfy.model_management -----------------------------------------------------------
    mm = ModuleType("comfy.model_management")

    class InterruptProcessingException(Exception):
        pass

    def throw_exception_if_processing_interrupted():
        stub.checks += 1
        if stub.interrupted:
            stub.interrupted = False
            raise InterruptProcessingException()

    mm.InterruptProcessingException = InterruptProcessingException
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")

    comfy.utils = utils
    comfy.model_management = mm
    stub.modules = {"folder_paths": fp, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm}
    return stub


def load_pack(name: str) -> ModuleType:
    """Import the repo's __init__.py the way ComfyUI's nodes.py:load_custom_node does: by file path,
    under a path-derived name, as a package whose submodules are found in the repo folder."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        unload_pack(name)
        raise
    return module


def unload_pack(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
