"""Checkpoint files: one `.safetensors` with JSON metadata (DESIGN §5), validated before use (§6).

Layout of a safetensors file: 8-byte little-endian header length N, N bytes of JSON header,
then the raw tensor data. The header maps tensor names to {dtype, shape, data_offsets} and
holds our metadata under "__metadata__" as str -> str, each value a JSON string:

    nitrogen.format          1
    nitrogen.kind            "student" | "teacher"
    nitrogen.config          NitroGenConfig.to_dict()
    nitrogen.labels          ["cat", "dog", ...]          (len == config.num_classes)
    nitrogen.width_schedule  [0.5, 0.75, 1.0]             (step i of N uses schedule[i * len // N])
    nitrogen.train           {"data": ..., "steps": ..., "seed": ..., "commit": ...}
    nitrogen.sampler         {"steps": 20, "cfg": 1.5, ...}   (optional; recommended settings)

Loading parses and checks the header ourselves (pure Python, no torch) before safetensors or
torch sees the file, so a bad file fails with a one-line NitroGenInputError naming the file
and the problem instead of a traceback from deep inside a library. Nothing is ever unpickled.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch.overrides import TorchFunctionMode

from .config import NitroGenConfig
from .errors import NitroGenInputError

FORMAT_VERSION = 1
KINDS = ("student", "teacher")
SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# The checkpoints shipped in the repo, one per backbone; the U-Net's is the CLI's and bench's default.
BUNDLED_CHECKPOINTS = {backbone: Path(__file__).resolve().parent.parent / "checkpoints" / name
                       for backbone, name in (("unet", "nitrogen-emoji32.safetensors"),
                                              ("dit", "nitrogen-emoji32-dit.safetensors"))}
BUNDLED_CHECKPOINT = BUNDLED_CHECKPOINTS["unet"]

META_PREFIX = "nitrogen."
REQUIRED_KEYS = ("format", "kind", "config", "labels", "width_schedule", "train")
OPTIONAL_KEYS = ("sampler",)

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_LABEL_CHARS = 200
MAX_SCHEDULE_LEN = 100_000
# safetensors dtype tag -> bytes per element. Weights are floating point only.
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
LOAD_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: torch.nn.Module            # NitroGenModel, eval mode, requires_grad False
    config: NitroGenConfig
    kind: str
    labels: tuple[str, ...]
    width_schedule: tuple[float, ...]
    train: dict
    sampler: dict
    path: str
    size_bytes: int
    n_params: int

    def recommended_guards(self) -> dict:
        """The adaptive sampler's settings this checkpoint was calibrated with, besides steps, cfg, tau
        and mode (e.g. refresh_every): every measurement of its adaptive sampler must use them."""
        return {k: v for k, v in self.sampler.items() if k not in ("steps", "cfg", "threshold", "budget", "mode")}


# -- small helpers -----------------------------------------------------------------------

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(path: Any, problem: str) -> NitroGenInputError:
    return NitroGenInputError(_one_line(f"{path}: {problem}"))


def _short_list(items: Iterable[Any], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _sampler_fields() -> tuple[str, ...]:
    from .sampler import SamplerSettings  # lazy: the sampler imports the model, we stay light
    return tuple(f.name for f in dataclasses.fields(SamplerSettings))


# -- metadata validation (shared by save and load) ----------------------------------------

def check_labels(labels: Any, num_classes: int) -> tuple[str, ...]:
    """Labels must be `num_classes` unique, non-empty, single-line strings."""
    if not isinstance(labels, (list, tuple)):
        raise NitroGenInputError(f"labels must be a list of class names, got {type(labels).__name__}")
    for i, name in enumerate(labels):
        if not isinstance(name, str) or not name.strip():
            raise NitroGenInputError(f"label {i} is {name!r}; labels must be non-empty strings")
        if len(name) > MAX_LABEL_CHARS or any(not ch.isprintable() for ch in name):
            raise NitroGenInputError(
                f"label {i} {name[:40]!r} must be printable single-line text of at most {MAX_LABEL_CHARS} characters")
    if len(labels) != num_classes:
        raise NitroGenInputError(f"there are {len(labels)} labels but config.num_classes is {num_classes}; "
                                 "give exactly one name per class")
    seen: set[str] = set()
    dupes = [n for n in labels if n in seen or seen.add(n)]
    if dupes:
        raise NitroGenInputError(f"labels must be unique; duplicated: {_short_list(dict.fromkeys(dupes))}")
    return tuple(labels)


def check_width_schedule(schedule: Any, config: NitroGenConfig) -> tuple[float, ...]:
    """A non-empty list of widths from config.widths; step i of N uses schedule[i * len // N]."""
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise NitroGenInputError(f"width schedule {schedule!r} must be a non-empty list of widths from {list(config.widths)}")
    if len(schedule) > MAX_SCHEDULE_LEN:
        raise NitroGenInputError(f"width schedule has {len(schedule)} entries; at most {MAX_SCHEDULE_LEN} are allowed")
    for w in schedule:
        if not _is_number(w) or float(w) not in config.widths:
            raise NitroGenInputError(f"width schedule entry {w!r} is not one of the config's widths {list(config.widths)}")
    return tuple(float(w) for w in schedule)


def check_sampler(sampler: Any) -> dict:
    """Recommended sampler settings: a JSON object whose keys are SamplerSettings fields, values valid."""
    if sampler is None:
        return {}
    if not isinstance(sampler, Mapping):
        raise NitroGenInputError(f"sampler settings must be a JSON object, got {type(sampler).__name__}")
    fields = _sampler_fields()
    unknown = sorted(set(sampler) - set(fields))
    if unknown:
        raise NitroGenInputError(f"sampler settings have unknown keys {unknown}; allowed keys are {list(fields)}")
    from .sampler import SamplerSettings
    try:
        SamplerSettings(**sampler).validate()
    except NitroGenInputError as exc:
        raise NitroGenInputError(f"sampler settings are invalid: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise NitroGenInputError(f"sampler settings are invalid: {exc}") from None
    return dict(sampler)


def _check_train(train: Any) -> dict:
    if train is None:
        return {}
    if not isinstance(train, Mapping):
        raise NitroGenInputError(f"train metadata must be a JSON object, got {type(train).__name__}")
    return dict(train)


def _dumps(key: str, value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NitroGenInputError(f"{META_PREFIX}{key} is not JSON-serialisable: {exc}") from None


# -- save --------------------------------------------------------------------------------

def save_checkpoint(path, model, *, kind: str, labels, width_schedule=(1.0,), train=None, sampler=None) -> Path:
    """Write `model` (a NitroGenModel) and its metadata to one .safetensors file, atomically.

    Everything is validated first; tensors are stored as contiguous CPU float32.
    """
    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(config, NitroGenConfig):
        raise _fail(path, f"cannot save: model has no NitroGenConfig `.config` (got {type(config).__name__})")
    if path.suffix.lower() != SUFFIX:
        raise _fail(path, f"cannot save: checkpoints must be {SUFFIX} files, got suffix {path.suffix!r}")
    if path.is_dir():
        raise _fail(path, "cannot save: path is a directory")
    try:
        if kind not in KINDS:
            raise NitroGenInputError(f"kind {kind!r} must be one of {list(KINDS)}")
        meta = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "config": config.to_dict(),
            "labels": list(check_labels(labels, config.num_classes)),
            "width_schedule": list(check_width_schedule(width_schedule, config)),
            "train": _check_train(train),
        }
        if sampler is not None:
            meta["sampler"] = check_sampler(sampler)
        metadata = {META_PREFIX + k: _dumps(k, v) for k, v in meta.items()}
    except NitroGenInputError as exc:
        raise _fail(path, f"cannot save: {exc}") from None

    tensors = {}
    for name, t in model.state_dict().items():
        if not torch.is_floating_point(t):
            raise _fail(path, f"cannot save: tensor {name!r} has dtype {t.dtype}; only floating-point tensors are stored")
        t = t.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()  # copy: no shared storage
        if not torch.isfinite(t).all():
            raise _fail(path, f"cannot save: tensor {name!r} contains NaN or Inf")
        tensors[name] = t

    return write_safetensors_atomic(path, tensors, metadata)


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary path in `path`'s folder; on success rename it onto `path`, on error
    remove it: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# -- header parsing ----------------------------------------------------------------------

def _check_path(path: Path) -> int:
    """Existence, kind and suffix of the file. Returns its size in bytes."""
    if not path.exists():
        raise _fail(path, "no such file")
    if path.is_dir():
        raise _fail(path, f"is a directory, not a {SUFFIX} checkpoint file")
    if not path.is_file():
        raise _fail(path, f"is not a regular file; expected a {SUFFIX} checkpoint")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise _fail(path, f"{suffix} files are pickle-based and are never loaded (unpickling runs arbitrary code); "
                          f"convert the weights to a {SUFFIX} file")
    if suffix != SUFFIX:
        raise _fail(path, f"unsupported file type {suffix or '(no suffix)'!r}; NitroGen checkpoints are {SUFFIX} files")
    return path.stat().st_size


def _read_raw_header(path: Path, size: int) -> tuple[dict, int]:
    """Returns (header JSON object, header length)."""
    if size < 8:
        raise _fail(path, f"is truncated: {size} bytes is too small for a safetensors header")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n == 0 or n > size - 8:
                raise _fail(path, f"header length {n} does not fit in the file ({size} bytes); "
                                  "the file is truncated or not a safetensors file")
            if n > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {n} exceeds the {MAX_HEADER_BYTES} byte limit")
            raw = f.read(n)
    except OSError as exc:
        raise _fail(path, f"cannot read file: {exc.strerror or exc}") from None
    if len(raw) != n:
        raise _fail(path, f"is truncated: header should have {n} bytes, read {len(raw)}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _fail(path, "header is not UTF-8 text; not a safetensors file") from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"header is not valid JSON ({exc.msg} at char {exc.pos}); not a safetensors file") from None
    except RecursionError:
        raise _fail(path, "header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header must be a JSON object, got {type(header).__name__}")
    return header, n


def _check_tensor_entries(path: Path, header: dict, data_size: int) -> dict[str, dict]:
    """Each entry: allowed dtype, integer shape, data_offsets matching dtype x shape, all inside the
    data section; entries tile the data section contiguously (as safetensors itself requires)."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, e in entries.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"tensor {name!r} has a malformed header entry; expected keys dtype, shape, data_offsets")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise _fail(path, f"tensor {name!r} has dtype {dtype!r}; allowed weight dtypes are {list(DTYPE_BYTES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _fail(path, f"tensor {name!r} has invalid shape {shape!r}; expected a list of non-negative ints")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _fail(path, f"tensor {name!r} has invalid data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end")
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise _fail(path, f"header is inconsistent: tensor {name!r} is {dtype} {shape} ({nbytes} bytes) "
                              f"but its data_offsets {offsets} span {offsets[1] - offsets[0]} bytes")
        spans.append((offsets[0], offsets[1], name))
    end = max((s[1] for s in spans), default=0)
    if end > data_size:
        raise _fail(path, f"is truncated: the header describes {end} bytes of tensor data but the file holds {data_size}")
    if end < data_size:
        raise _fail(path, f"has {data_size - end} unexpected bytes after the tensor data described by the header")
    pos = 0
    for begin, stop, name in sorted(spans):
        if begin != pos:
            what = "overlaps another tensor" if begin < pos else f"leaves a gap at byte {pos}"
            raise _fail(path, f"header is inconsistent: tensor {name!r} at data_offsets [{begin}, {stop}] {what}")
        pos = stop
    return entries


def _parse_metadata(path: Path, header: dict) -> dict:
    raw = header.get("__metadata__")
    required = [META_PREFIX + k for k in REQUIRED_KEYS]
    if raw is None:
        raise _fail(path, f"has no metadata, so it is not a NitroGen checkpoint; required keys: {required}")
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _fail(path, "header __metadata__ must map strings to strings")
    missing = [k for k in required if k not in raw]
    if missing:
        raise _fail(path, f"metadata is missing required key(s) {missing}; required keys: {required}")
    meta = {}
    for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
        if META_PREFIX + key not in raw:
            continue
        try:
            meta[key] = json.loads(raw[META_PREFIX + key])
        except json.JSONDecodeError as exc:
            raise _fail(path, f"metadata {META_PREFIX}{key} is not valid JSON ({exc.msg} at char {exc.pos})") from None
        except RecursionError:
            raise _fail(path, f"metadata {META_PREFIX}{key} is nested too deeply") from None
    return meta


def _validate_metadata(path: Path, meta: dict) -> dict:
    fmt = meta["format"]
    if not _is_int(fmt):
        raise _fail(path, f"{META_PREFIX}format is {fmt!r}; expected the integer {FORMAT_VERSION}")
    if fmt != FORMAT_VERSION:
        newer = " (written by a newer NitroGen; upgrade to read it)" if fmt > FORMAT_VERSION else ""
        raise _fail(path, f"{META_PREFIX}format is {fmt}{newer}; this version reads format {FORMAT_VERSION}")
    if meta["kind"] not in KINDS:
        raise _fail(path, f"{META_PREFIX}kind is {meta['kind']!r}; allowed kinds are {list(KINDS)}")
    try:
        config = NitroGenConfig.from_dict(meta["config"])
    except Exception as exc:  # from_dict raises ValueError; garbage values can also raise TypeError etc.
        raise _fail(path, f"{META_PREFIX}config is invalid: {exc}") from None
    out = dict(meta)
    out["config"] = config
    checks = (("labels", lambda v: check_labels(v, config.num_classes)),
              ("width_schedule", lambda v: check_width_schedule(v, config)),
              ("train", _check_train),
              ("sampler", check_sampler))
    for key, check in checks:
        try:
            out[key] = check(meta.get(key))
        except NitroGenInputError as exc:
            raise _fail(path, f"{META_PREFIX}{key} is invalid: {exc}") from None
    return out


def _read_validated(path) -> dict:
    """All checks that need no torch: path, header structure, tensor entries, metadata."""
    path = Path(path)
    size = _check_path(path)
    header, n = _read_raw_header(path, size)
    entries = _check_tensor_entries(path, header, size - 8 - n)
    meta = _validate_metadata(path, _parse_metadata(path, header))
    meta.update(path=str(path), size_bytes=size, tensors=entries)
    return meta


def read_header(path) -> dict:
    """Validate a checkpoint's header and metadata without loading any tensor (cheap: for listings,
    label combos, `info`). Returns a JSON-ready dict: path, size_bytes, format, kind, config (dict),
    labels, width_schedule, train, sampler, tensors {name: {dtype, shape, data_offsets}}, n_elements."""
    meta = _read_validated(path)
    return {
        "path": meta["path"],
        "size_bytes": meta["size_bytes"],
        "format": meta["format"],
        "kind": meta["kind"],
        "config": json.loads(meta["config"].to_json()),   # lists, not tuples: JSON-ready
        "labels": list(meta["labels"]),
        "width_schedule": list(meta["width_schedule"]),
        "train": meta["train"],
        "sampler": meta["sampler"],
        "tensors": meta["tensors"],
        "n_elements": sum(math.prod(e["shape"]) for e in meta["tensors"].values()),
    }


# -- load --------------------------------------------------------------------------------

def resolve_device(device) -> torch.device:
    """A torch.device that exists on this machine, or a one-line NitroGenInputError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise NitroGenInputError(f"device {device!r} is not a valid device; use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NitroGenInputError(f"device {str(device)!r} is not available: torch.cuda.is_available() is False; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NitroGenInputError(f"device {str(device)!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise NitroGenInputError(f"device {str(device)!r} is not available on this machine; use 'cpu'")
        return dev
    raise NitroGenInputError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'")


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str) and dtype.lower() in LOAD_DTYPES:
        return LOAD_DTYPES[dtype.lower()]
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return dtype
    raise NitroGenInputError(f"dtype {dtype!r} is not supported; use float32, float16 or bfloat16")


def _build_model(config: NitroGenConfig):
    from .model import NitroGenModel
    return NitroGenModel(config)


class _SkipMetaInit(TorchFunctionMode):
    """Inside `torch.device("meta")`: skip in-place ops (weight init) on meta tensors. Only shapes
    matter there, and meta `normal_` & co. would pull in torch's Python decompositions (~1.5 s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def _expected_shapes(path: Path, config: NitroGenConfig) -> dict[str, tuple[int, ...]]:
    """The model's state-dict shapes, computed on the meta device so a config with absurd sizes
    cannot allocate memory before it is compared with the (bounded) tensors in the file."""
    try:
        with torch.device("meta"), _SkipMetaInit():
            model = _build_model(config)
    except ImportError:
        raise
    except Exception:
        # Some construction step does not work on meta: fall back to a real build (the config
        # already passed NitroGenConfig's own validation).
        try:
            model = _build_model(config)
        except ImportError:
            raise
        except Exception as exc:
            raise _fail(path, f"cannot build a model from {META_PREFIX}config: {type(exc).__name__}: {exc}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _compare_keys(path: Path, expected: Mapping[str, tuple], entries: Mapping[str, dict]) -> None:
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) the model needs {_short_list(missing)}")
        if unexpected:
            parts.append(f"has {len(unexpected)} unexpected tensor(s) {_short_list(unexpected)}")
        raise _fail(path, "does not match its config: " + "; ".join(parts))
    for name in sorted(expected):
        got = tuple(entries[name]["shape"])
        if got != expected[name]:
            raise _fail(path, f"tensor {name!r} has shape {list(got)} but the config expects {list(expected[name])}")


def load_checkpoint(path, device="cpu", dtype=torch.float32) -> LoadedCheckpoint:
    """Read the header, validate everything, build the model from the config, load strictly."""
    dev = resolve_device(device)
    dt = _resolve_dtype(dtype)
    path = Path(path)
    meta = _read_validated(path)
    config: NitroGenConfig = meta["config"]
    _compare_keys(path, _expected_shapes(path, config), meta["tensors"])

    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise _fail(path, f"cannot read tensors: {_one_line(exc)}") from None
    for name in sorted(state):
        if not torch.isfinite(state[name]).all():
            raise _fail(path, f"tensor {name!r} contains NaN or Inf values; the checkpoint is corrupt or training diverged")

    with torch.random.fork_rng(devices=[]):  # the weights are overwritten; leave the caller's RNG alone
        model = _build_model(config)
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:  # should be unreachable after _compare_keys; keep it one line anyway
        raise _fail(path, f"tensors do not fit the model: {_one_line(exc)[:300]}") from None
    del state
    model = model.to(device=dev, dtype=dt).eval().requires_grad_(False)
    return LoadedCheckpoint(
        model=model,
        config=config,
        kind=meta["kind"],
        labels=tuple(meta["labels"]),
        width_schedule=tuple(meta["width_schedule"]),
        train=meta["train"],
        sampler=meta["sampler"],
        path=str(path),
        size_bytes=meta["size_bytes"],
        n_params=sum(p.numel() for p in model.parameters()),
    )


# -- labels ------------------------------------------------------------------------------

def resolve_label(labels, value) -> int:
    """A class index from a name (exact, else case-insensitive) or an index (int or digit string)."""
    labels = list(labels)
    n = len(labels)
    shown = ", ".join(labels[:50]) + (f", ... (+{n - 50} more)" if n > 50 else "")
    allowed = f"choose a class name ({shown}) or an index 0..{n - 1}"
    if _is_int(value):
        if 0 <= value < n:
            return value
        raise NitroGenInputError(f"label index {value} is out of range; {allowed}")
    if not isinstance(value, str):
        raise NitroGenInputError(f"label {value!r} must be a class name or an index; {allowed}")
    if value in labels:
        return labels.index(value)
    folded = [i for i, name in enumerate(labels) if name.casefold() == value.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    if len(folded) > 1:
        raise NitroGenInputError(f"label {value!r} matches several classes ignoring case "
                                 f"{[labels[i] for i in folded]}; give the exact name")
    s = value.strip()
    if s.isdigit() and s.isascii():
        index = int(s)
        if index < n:
            return index
        raise NitroGenInputError(f"label index {index} is out of range; {allowed}")
    raise NitroGenInputError(f"unknown label {value!r}; {allowed}")
