"""NitroGen Loader: a checkpoint from models/nitrogen (or the bundled one) -> NITROGEN_MODEL.

Also home of what the other nodes need to know about checkpoints: the model folder
registration (DESIGN §4), the combo of checkpoint names, and the class names for the
sampler's label combo, read from checkpoint headers only (no tensors).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..nitrogen_core.checkpoint import (BUNDLED_CHECKPOINTS, SUFFIX, LoadedCheckpoint, load_checkpoint,
                                        read_header, resolve_device)
from ..nitrogen_core.errors import NitroGenInputError
from ..nitrogen_core.sampler import SamplerSettings, make_noise, sample
from ..nitrogen_core.train.data import EMOJI_CLASSES
from . import _comfy

log = logging.getLogger(__name__)

FOLDER = "nitrogen"                                  # models/nitrogen, key in folder_paths
# The checkpoints shipped with the pack, by combo entry (no file in models/ can have these names: no
# suffix), one per backbone. BUNDLED_NAME is the first, the one the example workflows load.
BUNDLED = {"nitrogen-emoji32 (bundled)": BUNDLED_CHECKPOINTS["unet"],
           "nitrogen-emoji32-dit (bundled)": BUNDLED_CHECKPOINTS["dit"]}
BUNDLED_NAME = next(iter(BUNDLED))
# Class names the bundled checkpoints are trained on (the emoji32 data folders, sorted). Offered in the
# label combo while a bundled file is missing, so the example workflows validate on any install.
BUNDLED_LABELS = tuple(EMOJI_CLASSES)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CACHE_SIZE = 4                                       # loaded models kept; emoji32 is ~10 MB each


@dataclass(frozen=True, eq=False)
class NitroGenModelHandle:
    """What flows along a NITROGEN_MODEL link: the loaded checkpoint and where it lives."""
    checkpoint: LoadedCheckpoint
    name: str                                        # the combo entry it was loaded from
    device: torch.device
    dtype: torch.dtype

    def __repr__(self) -> str:
        return (f"NitroGenModel({self.name!r}, {self.checkpoint.kind}, {len(self.checkpoint.labels)} classes, "
                f"{self.device}, {str(self.dtype).replace('torch.', '')})")


# -- model folder ------------------------------------------------------------------------

def _same_dir(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def register_model_folder() -> None:
    """Make folder_paths know models/nitrogen for .safetensors. Idempotent.

    If the key exists already (extra_model_paths.yaml), our folder is appended to its paths; a
    non-empty extension set that lacks .safetensors gets it. An empty set means "any file" in
    folder_paths and is left alone: non-safetensors files then fail at load with a clear message.
    """
    fp = _comfy.folder_paths()
    ours = os.path.join(fp.models_dir, FOLDER)
    entry = fp.folder_names_and_paths.get(FOLDER)
    if entry is None:
        fp.folder_names_and_paths[FOLDER] = ([ours], {SUFFIX})
        return
    paths, exts = entry
    if not any(_same_dir(p, ours) for p in paths):
        paths = [*paths, ours]
    if exts and SUFFIX not in exts:
        exts = {*exts, SUFFIX}                       # a new set: the old one may be shared with other keys
    if (paths, exts) != (entry[0], entry[1]):
        fp.folder_names_and_paths[FOLDER] = (paths, exts)


def _folder_files() -> list[str]:
    try:
        fp = _comfy.folder_paths()
    except ImportError:                              # outside ComfyUI: only the bundled checkpoint
        return []
    register_model_folder()
    return list(fp.get_filename_list(FOLDER))


def _folder_dirs() -> list[str]:
    try:
        fp = _comfy.folder_paths()
        register_model_folder()
        return list(fp.folder_names_and_paths[FOLDER][0])
    except (ImportError, KeyError):
        return ["models/nitrogen"]


def checkpoint_names() -> list[str]:
    """The loader's combo: the bundled checkpoints first (always offered), then models/nitrogen."""
    return [*BUNDLED, *_folder_files()]


def bundled_path(name: str = BUNDLED_NAME) -> Path:
    return BUNDLED[name]


def resolve_checkpoint_path(name: str) -> Path:
    if not isinstance(name, str) or not name:
        raise NitroGenInputError(f"ckpt_name={name!r} must be a checkpoint name from the list")
    if name in BUNDLED:
        path = bundled_path(name)
        if not path.is_file():
            raise NitroGenInputError(
                f"the bundled checkpoint {path} is not in this copy of the pack yet; put a NitroGen {SUFFIX} "
                f"file into {', '.join(_folder_dirs())} and choose it instead (an untrained one for testing: "
                f"python -m nitrogen_core init --preset emoji32 --out FILE{SUFFIX})")
        return path
    fp = _comfy.folder_paths()
    register_model_folder()
    getter = getattr(fp, "get_full_path_or_raise", None)
    try:
        full = getter(FOLDER, name) if getter else fp.get_full_path(FOLDER, name)
    except FileNotFoundError:
        full = None
    if full is None:
        available = [*BUNDLED, *fp.get_filename_list(FOLDER)]
        raise NitroGenInputError(f"checkpoint {name!r} is not in {', '.join(_folder_dirs())}; "
                                 f"available: {available}")
    return Path(full)


# -- class names for the sampler's label combo -------------------------------------------

_header_cache: dict[tuple, tuple[str, ...] | None] = {}


def _labels_of(path: Path) -> tuple[str, ...] | None:
    """Labels from a checkpoint's validated header, cached by (path, mtime, size); None if unreadable."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _header_cache:
        try:
            _header_cache[key] = tuple(read_header(path)["labels"])
        except (NitroGenInputError, OSError) as exc:
            log.debug("NitroGen: skipping %s for the label list: %s", path, exc)
            _header_cache[key] = None
    return _header_cache[key]


def known_labels() -> list[str]:
    """Union of the class names of every offered checkpoint, bundled first, in checkpoint order.

    The bundled checkpoints' names are always included (read from their headers, or BUNDLED_LABELS
    for a missing file). Reading only headers keeps this cheap enough for INPUT_TYPES.
    """
    names = []
    for path in BUNDLED.values():
        names.extend((_labels_of(path) if path.is_file() else None) or BUNDLED_LABELS)
    files = _folder_files()
    if files:
        fp = _comfy.folder_paths()
        for name in files:
            full = fp.get_full_path(FOLDER, name)
            labels = _labels_of(Path(full)) if full else None
            names.extend(labels or ())
    return list(dict.fromkeys(names))


# -- loading and the cache ---------------------------------------------------------------

_cache: OrderedDict[tuple, NitroGenModelHandle] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        dev = torch.device(_comfy.model_management().get_torch_device())
        if dev.type not in ("cpu", "cuda", "mps"):
            log.warning("NitroGen: ComfyUI's device %s is not supported by NitroGen; using cpu", dev)
            return torch.device("cpu")
        return resolve_device(dev)
    if choice in ("cpu", "cuda"):
        return resolve_device(choice)
    raise NitroGenInputError(f"device={choice!r} is not one of {list(DEVICES)}")


def _resolve_dtype(choice: str) -> torch.dtype:
    if choice not in DTYPES:
        raise NitroGenInputError(f"dtype={choice!r} is not one of {list(DTYPES)}")
    # auto = fp32 on every device: the model is small (emoji32: 2.5 M params, 0.56 GMACs per forward),
    # so half precision saves little, and fp32 is the precision the sampler is tested in.
    return DTYPES[choice] or torch.float32


def _probe(ck: LoadedCheckpoint, dtype: torch.dtype) -> None:
    """Two sampler steps on one image (one dense, one gated) so a dtype the model cannot run in fails
    here, with a one-line message, instead of deep inside torch in the sampler."""
    settings = SamplerSettings(steps=2, warmup=1, refresh_every=0, threshold=1e-3, cfg=1.5)
    device = next(ck.model.parameters()).device
    noise = make_noise(ck.config, 1, 0).to(device)
    try:
        with torch.inference_mode():
            sample(ck.model, noise, torch.zeros(1, dtype=torch.long, device=device), settings,
                   width_schedule=ck.width_schedule)
    except (RuntimeError, TypeError) as exc:
        name = str(dtype).replace("torch.", "")
        raise NitroGenInputError(f"this model cannot sample in {name} ({' '.join(str(exc).split())[:160]}); "
                                 f"use dtype fp32") from None


def load(name: str, device: str = "auto", dtype: str = "auto") -> NitroGenModelHandle:
    """Load (or reuse) a checkpoint. Cached by (path, mtime, size, device, dtype)."""
    dev = _resolve_device(device)
    dt = _resolve_dtype(dtype)
    path = resolve_checkpoint_path(name)
    try:
        st = path.stat()
    except OSError as exc:
        raise NitroGenInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size, str(dev), dt)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    ck = load_checkpoint(path, device=dev, dtype=dt)
    if dt != torch.float32:
        _probe(ck, dt)
    handle = NitroGenModelHandle(checkpoint=ck, name=name, device=dev, dtype=dt)
    with _cache_lock:
        for old in [k for k in _cache if k[0] == key[0] and k[1:3] != key[1:3]]:
            del _cache[old]                          # the file changed: drop the stale copies
        _cache[key] = handle
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return handle


def file_fingerprint(name: str) -> str:
    """For IS_CHANGED: changes whenever the chosen file does, so ComfyUI reruns the loader."""
    try:
        path = resolve_checkpoint_path(name)
        st = path.stat()
        return f"{os.path.realpath(path)}|{st.st_mtime_ns}|{st.st_size}"
    except (NitroGenInputError, OSError, ImportError) as exc:
        return f"unavailable|{name}|{exc}"


# -- the node ----------------------------------------------------------------------------

class NitroGenLoader:
    DESCRIPTION = ("Loads a NitroGen checkpoint (a .safetensors file from models/nitrogen, or one of the "
                   "bundled emoji models): the slimmable network (U-Net or transformer), its gate, class "
                   "names and width schedule. "
                   "The file is fully validated; pickle files are never loaded.")
    CATEGORY = "NitroGen"
    FUNCTION = "load"
    RETURN_TYPES = ("NITROGEN_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded NitroGen model, for NitroGen Adaptive Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (checkpoint_names(), {
                    "tooltip": f"Checkpoint file from models/nitrogen ({SUFFIX}), or one of the 32x32 emoji "
                               f"models shipped with the pack: '{BUNDLED_NAME}' (U-Net) or "
                               f"'{list(BUNDLED)[1]}' (transformer)."}),
                "device": (list(DEVICES), {
                    "default": "auto",
                    "tooltip": "Where the model runs. auto = ComfyUI's device (cpu when started with --cpu)."}),
                "dtype": (list(DTYPES), {
                    "default": "auto",
                    "tooltip": "Weight precision. auto = fp32 on every device: the model is small, so half "
                               "precision saves little. fp16/bf16 are checked with a 2-step test run at load."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, ckpt_name, device="auto", dtype="auto"):
        return file_fingerprint(ckpt_name)

    def load(self, ckpt_name, device="auto", dtype="auto"):
        return (load(ckpt_name, device, dtype),)


# Register at import too, so models/nitrogen is known before our INPUT_TYPES first runs (ComfyUI
# imports folder_paths before any custom node). Outside ComfyUI there is nothing to register with.
try:
    register_model_folder()
except ImportError:
    pass
