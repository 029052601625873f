"""The domain judge: a small emoji classifier whose 32-d feature layer replaces Inception for FID/KID.

Inception features know nothing about 32 px emoji on white, and a 2048-d covariance cannot be estimated
from the 100-300 samples a benchmark draws here. So the benchmark measures distances in the feature space
of a classifier trained on our own data, with a deliberately small FEATURE layer (32-d).

* `JudgeNet`: conv + GroupNorm + SiLU stages with stride-2 downsampling (any square size that is a multiple
  of 8), global average pool, a linear 32-d feature layer, then a linear class head.
* `train_judge(data_dir, out_path, ...)`: stratified held-out split, emoji-safe augmentation (shifts with
  white fill, mild brightness/contrast; never flips: flags, keys and arrows are not mirror-symmetric), AdamW
  with warm-up + cosine LR, label smoothing. It reports held-out and train accuracy, then stores the weights,
  the un-augmented features of ALL images (`reference_features`, (N, 32)) and JSON metadata in one
  .safetensors file.
* `load_judge(path)` validates the file (header, metadata, tensor names and shapes) before loading it, never
  unpickles, and returns a `Judge` with `.features(images)`.

CLI: `python -m nitrogen_core.bench.judge --data DIR --out PATH [--steps N] [--seed S]`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NitroGenInputError

FORMAT_VERSION = 1
KIND = "judge"
FEATURE_DIM = 32                       # low on purpose: the covariance must be estimable from ~100 samples
WIDTHS = (24, 48, 96, 128)             # stem width, then one stride-2 stage per further entry
GROUPS = 8                             # GroupNorm groups; every width is a multiple of this
REFERENCE_KEY = "reference_features"
WEIGHT_PREFIX = "model."
SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
DEFAULT_OUT = "checkpoints/judge-emoji32.safetensors"
BUNDLED_JUDGE = Path(__file__).resolve().parent.parent.parent / "checkpoints" / "judge-emoji32.safetensors"
REQUIRED_META = ("format", "kind", "classes", "image_size", "feature_dim", "architecture", "held_out_accuracy",
                 "train_accuracy", "n_train", "n_held_out", "steps", "seed", "data")

DEFAULT_STEPS = 1200
DEFAULT_BATCH = 64
MAX_STEPS = 1_000_000
MAX_SEED = 2**31 - 1
MAX_SHIFT_PX = 2                       # augmentation: random translation by up to this many pixels
BRIGHTNESS = 0.06                      # augmentation: +- shift in [0, 1] units
CONTRAST = 0.12                        # augmentation: contrast factor in 1 +- this
FEATURE_BATCH = 256                    # images per forward when extracting features


# -- network --------------------------------------------------------------------------------------

class ConvNormAct(nn.Sequential):
    """3x3 conv (stride 1 or 2) -> GroupNorm -> SiLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = GROUPS):
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(groups, c_out), nn.SiLU())


class JudgeNet(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> features (B, feature_dim) -> logits (B, num_classes); S a multiple of 8
    when there are 3 stride-2 stages (the default)."""

    def __init__(self, num_classes: int, widths: Sequence[int] = WIDTHS, feature_dim: int = FEATURE_DIM,
                 groups: int = GROUPS):
        super().__init__()
        self.num_classes, self.widths, self.feature_dim, self.groups = num_classes, tuple(widths), feature_dim, groups
        layers: list[nn.Module] = [ConvNormAct(3, widths[0], groups=groups)]
        for stage, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers.append(ConvNormAct(c_in, c_out, stride=2, groups=groups))     # halve the resolution
            if stage < len(widths) - 1:
                layers.append(ConvNormAct(c_out, c_out, groups=groups))          # the last stage is 4x4: one conv
        self.body = nn.Sequential(*layers)
        self.feature = nn.Linear(widths[-1], feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def architecture(self) -> dict:
        return {"widths": list(self.widths), "feature_dim": self.feature_dim, "groups": self.groups,
                "num_classes": self.num_classes}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)                          # (B, C_last, S / 8, S / 8)
        return self.feature(h.mean((2, 3)))       # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))        # (B, num_classes)


# -- data: split and augmentation ---------------------------------------------------------------------

def stratified_split(labels: torch.Tensor, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices), both sorted. Per class, round(n * held_out) images are held out,
    at least 1 when the class has >= 2 images and held_out > 0, and never the whole class. Which images
    depends only on (labels, held_out, seed)."""
    if not 0.0 <= held_out < 1.0:
        raise NitroGenInputError(f"held_out {held_out!r} must be a fraction in [0, 1)")
    generator = torch.Generator().manual_seed(int(seed))
    train, held = [], []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        members = torch.nonzero(labels == c).flatten()                     # (n_c,)
        members = members[torch.randperm(len(members), generator=generator)]
        n_held = 0
        if held_out > 0 and len(members) >= 2:
            n_held = min(len(members) - 1, max(1, round(len(members) * held_out)))
        held.append(members[:n_held])
        train.append(members[n_held:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Emoji-safe augmentation of (B, 3, S, S) images in [-1, 1]: a random shift of up to MAX_SHIFT_PX pixels
    per axis with white fill (the images are on white), then mild brightness/contrast jitter. No flips."""
    b, _, height, width = images.shape
    pad = MAX_SHIFT_PX
    padded = F.pad(images, (pad, pad, pad, pad), value=1.0)                          # (B, 3, S+2p, S+2p)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)                   # (B,)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]                   # (B, 1, S, 1)
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]                    # (B, 1, 1, S)
    batch_index = torch.arange(b)[:, None, None, None]
    channel_index = torch.arange(3)[None, :, None, None]
    shifted = padded[batch_index, channel_index, rows, cols]                        # (B, 3, S, S)

    unit = (shifted + 1) / 2                                                        # [0, 1]
    contrast = 1 + CONTRAST * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
    brightness = BRIGHTNESS * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
    unit = ((unit - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return unit * 2 - 1                                                              # (B, 3, S, S)


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float [-1, 1] (B, 3, S, S) -> float32 [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div(127.5).sub(1.0)
    return images.float()


@torch.no_grad()
def _batched(fn, images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """fn applied to (B, 3, S, S) in chunks of batch_size; results concatenated along dim 0."""
    outputs = [fn(_as_float_images(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def _accuracy(model: JudgeNet, images: torch.Tensor, labels: torch.Tensor) -> float | None:
    if len(labels) == 0:
        return None
    predictions = _batched(model, images).argmax(1)                                 # (N,)
    return int((predictions == labels).sum()) / len(labels)


def _read_data_source(root: Path) -> dict | None:
    """Package/version of a `data emoji` folder (its manifest.json), or None for a plain ImageFolder."""
    from ..train.data import MANIFEST
    try:
        manifest = json.loads((root / MANIFEST).read_text("utf-8"))
        source = manifest["source"]
        return {"package": str(source["package"]), "version": str(source["version"]),
                "integrity": str(source.get("integrity", "")), "generator": str(manifest.get("generator", "")),
                "total": int(manifest.get("total", -1))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _detect_image_size(root: Path) -> int:
    """The side of the first image in the ImageFolder (load_image_folder then checks every image)."""
    from PIL import Image
    from ..train.data import _class_dirs, _image_files

    if not root.is_dir():
        raise NitroGenInputError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    for folder in _class_dirs(root):
        for path in _image_files(folder):
            try:
                with Image.open(path) as im:
                    return int(im.size[0])
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
                raise NitroGenInputError(f"cannot read image {str(path)!r}: {exc}") from None
    raise NitroGenInputError(f"dataset folder {str(root)!r} has no images in class subfolders "
                             f"(expected {str(root)}/<class>/<image>.png)")


def _git_commit() -> str | None:
    try:
        from ..__main__ import _git_commit as commit
        return commit()
    except Exception:  # noqa: BLE001 - provenance only; never fail training for it
        return None


# -- training -------------------------------------------------------------------------------------------

def train_judge(data_dir: str | os.PathLike, out_path: str | os.PathLike, *, steps: int = DEFAULT_STEPS,
                seed: int = 0, held_out: float = 0.2, batch: int = DEFAULT_BATCH, lr: float = 2e-3,
                weight_decay: float = 0.05, label_smoothing: float = 0.1, progress: bool = True) -> dict:
    """Train the judge on an ImageFolder, save it to `out_path`, and return its metadata (a dict).

    Deterministic for a fixed seed (model init, split, batches and augmentation all derive from it).
    The saved model is the one trained on the train split only, so held_out_accuracy is honest;
    reference_features cover all N images, un-augmented, in load_image_folder order.
    """
    from tqdm import tqdm
    from ..train.common import Dist, batch_indices, learning_rate, step_generator
    from ..train.data import load_image_folder

    _check_int("steps", steps, 1, MAX_STEPS)
    _check_int("seed", seed, 0, MAX_SEED)
    _check_int("batch", batch, 1, 4096)
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0 <= held_out < 1:
        raise NitroGenInputError(f"--held-out {held_out!r} must be a fraction in [0, 1)")
    out_path = _check_out_path(out_path)
    root = Path(data_dir).expanduser()
    image_size = _detect_image_size(root)
    data = load_image_folder(root, image_size)
    downsampling = 2 ** (len(WIDTHS) - 1)
    if image_size % downsampling:
        raise NitroGenInputError(f"images in {str(root)!r} are {image_size} px; the judge needs a multiple of "
                                 f"{downsampling} px")
    if len(data.classes) < 2:
        raise NitroGenInputError(f"dataset folder {str(root)!r} has {len(data.classes)} class; a classifier "
                                 f"needs at least 2")

    started = time.perf_counter()
    images = data.as_float()                                                        # (N, 3, S, S)
    labels = data.labels                                                            # (N,)
    train_index, held_index = stratified_split(labels, held_out, seed)
    train_images, train_labels = images[train_index], labels[train_index]
    with torch.random.fork_rng(devices=[]):                                         # leave the caller's RNG alone
        torch.manual_seed(seed)
        model = JudgeNet(len(data.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    warmup = max(1, min(100, steps // 10))
    single = Dist()

    model.train()
    loss_value = float("nan")
    with tqdm(range(steps), desc="judge", file=sys.stderr, disable=None if progress else True,
              leave=False) as bar:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr, warmup)
            index = batch_indices(len(train_labels), batch, step, seed, single)      # (batch,)
            x = augment(train_images[index], step_generator(seed, step, single))      # (batch, 3, S, S)
            loss = F.cross_entropy(model(x), train_labels[index], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"judge training diverged at step {step} (loss {loss_value})")
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()

    held_predictions = _batched(model, images[held_index]).argmax(1) if len(held_index) else torch.empty(0)
    per_class = {}
    for c, name in enumerate(data.classes):
        mine = labels[held_index] == c
        per_class[name] = [int((held_predictions[mine] == c).sum()), int(mine.sum())]
    reference = _batched(model.features, images).contiguous()                       # (N, feature_dim)

    meta = {
        "format": FORMAT_VERSION,
        "kind": KIND,
        "classes": list(data.classes),
        "image_size": image_size,
        "feature_dim": model.feature_dim,
        "architecture": model.architecture(),
        "held_out_accuracy": _accuracy(model, images[held_index], labels[held_index]),
        "held_out_per_class": per_class,                  # class -> [correct, held-out images]
        "train_accuracy": _accuracy(model, train_images, train_labels),
        "n_train": int(len(train_index)),
        "n_held_out": int(len(held_index)),
        "held_out_fraction": held_out,
        "steps": steps,
        "batch": batch,
        "seed": seed,
        "lr": lr,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "final_loss": loss_value,
        "seconds": round(time.perf_counter() - started, 1),
        "data": str(data_dir),
        "data_source": _read_data_source(root),
        "commit": _git_commit(),
    }
    save_judge(out_path, model, reference, meta)
    return meta


# -- file format ----------------------------------------------------------------------------------------

def save_judge(path: str | os.PathLike, model: JudgeNet, reference_features: torch.Tensor, meta: dict) -> Path:
    """Write weights (as `model.<name>`), `reference_features` and metadata (each value a JSON string) atomically."""
    from ..checkpoint import write_safetensors_atomic

    path = _check_out_path(path)
    tensors = {WEIGHT_PREFIX + k: v.detach().to(torch.float32).contiguous().clone()
               for k, v in model.state_dict().items()}
    tensors[REFERENCE_KEY] = reference_features.detach().to(torch.float32).contiguous().clone()
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NitroGenInputError(f"{path}: cannot save: tensor {name!r} contains NaN or Inf")
    metadata = {k: json.dumps(v, sort_keys=True, allow_nan=False) for k, v in meta.items()}
    return write_safetensors_atomic(path, tensors, metadata)


@dataclass(frozen=True)
class Judge:
    """A loaded judge: `.model` (eval mode, no grad), `.classes`, `.reference_features` (N, 32), `.meta`."""

    model: JudgeNet
    classes: tuple[str, ...]
    reference_features: torch.Tensor
    meta: dict
    path: str = ""
    image_size: int = field(default=32)

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise NitroGenInputError(f"judge: images must be a (B, 3, H, W) tensor, got {shape}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise NitroGenInputError(f"judge: images are {images.shape[-2]}x{images.shape[-1]} but this judge "
                                     f"was trained on {self.image_size}x{self.image_size}")

    def features(self, images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
        """(B, 3, S, S) float in [-1, 1] (or uint8 0..255) -> float32 (B, feature_dim), batched internally."""
        self._check_images(images)
        return _batched(self.model.features, images.cpu(), batch_size).reshape(len(images), self.model.feature_dim)

    def logits(self, images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
        """(B, 3, S, S) -> class logits (B, num_classes); argmax indexes `.classes`."""
        self._check_images(images)
        return _batched(self.model, images.cpu(), batch_size).reshape(len(images), len(self.classes))


def _fail(path: Any, problem: str) -> NitroGenInputError:
    return NitroGenInputError(" ".join(f"judge file {str(path)!r}: {problem}".split()))


def _check_file(path: Path) -> int:
    if not path.exists():
        raise _fail(path, "no such file")
    if not path.is_file():
        raise _fail(path, f"is not a regular file; expected a {SUFFIX} judge file")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise _fail(path, f"{suffix} files are pickle-based and are never loaded; judges are {SUFFIX} files")
    if suffix != SUFFIX:
        raise _fail(path, f"unsupported file type {suffix or '(no suffix)'!r}; judges are {SUFFIX} files")
    return path.stat().st_size


def _header(path: Path) -> tuple[dict, dict]:
    """(tensor entries, decoded metadata), validated without loading any tensor data."""
    from ..checkpoint import _check_tensor_entries, _read_raw_header

    size = _check_file(path)
    try:
        header, n = _read_raw_header(path, size)
        entries = _check_tensor_entries(path, header, size - 8 - n)
    except NitroGenInputError as exc:          # reword "<path>: problem" in judge terms
        problem = str(exc).split(": ", 1)[-1]
        raise _fail(path, f"not a valid safetensors file: {problem}") from None
    raw = header.get("__metadata__")
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _fail(path, f"has no string metadata, so it is not a judge file; required keys: {list(REQUIRED_META)}")
    if "nitrogen.kind" in raw and "kind" not in raw:
        try:
            kind = json.loads(raw["nitrogen.kind"])
        except (ValueError, RecursionError):
            kind = raw["nitrogen.kind"]
        raise _fail(path, f"is a NitroGen {kind} checkpoint (nitrogen.kind), not a judge file")
    meta = {}
    for key, text in raw.items():
        try:
            meta[key] = json.loads(text)
        except (ValueError, RecursionError):
            raise _fail(path, f"metadata {key!r} is not valid JSON") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise _fail(path, f"metadata is missing {missing}")
    if meta["kind"] != KIND:
        raise _fail(path, f"metadata kind is {meta['kind']!r}; expected {KIND!r}")
    if meta["format"] != FORMAT_VERSION:
        raise _fail(path, f"format is {meta['format']!r}; this version reads format {FORMAT_VERSION}")
    return entries, meta


def _model_from_meta(path: Path, meta: dict) -> JudgeNet:
    classes, arch = meta["classes"], meta["architecture"]
    if (not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes)
            or not all(isinstance(c, str) and c for c in classes)):
        raise _fail(path, f"metadata classes {str(classes)[:80]} must be >= 2 unique non-empty names")
    try:
        widths, feature_dim, groups = arch["widths"], arch["feature_dim"], arch["groups"]
        ok = (isinstance(widths, list) and 2 <= len(widths) <= 8
              and all(_is_int(w) and 1 <= w <= 4096 for w in widths + [feature_dim, groups])
              and all(w % groups == 0 for w in widths) and arch.get("num_classes") == len(classes)
              and feature_dim == meta["feature_dim"])
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise _fail(path, f"metadata architecture {str(arch)[:120]} is invalid or does not match classes/feature_dim")
    image_size = meta["image_size"]
    if not _is_int(image_size) or not 1 <= image_size <= 1024 or image_size % 2 ** (len(widths) - 1):
        raise _fail(path, f"metadata image_size {image_size!r} must be a positive multiple of {2 ** (len(widths) - 1)}")
    return JudgeNet(len(classes), widths, feature_dim, groups)


def load_judge(path: str | os.PathLike = BUNDLED_JUDGE) -> Judge:
    """Validate and load a judge file (default: the bundled checkpoints/judge-emoji32.safetensors).
    Bad files raise a one-line NitroGenInputError naming the path and the problem."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    entries, meta = _header(path)
    model = _model_from_meta(path, meta)
    expected = {WEIGHT_PREFIX + k: list(v.shape) for k, v in model.state_dict().items()}
    n_images = meta["n_train"] + meta["n_held_out"] if all(_is_int(meta[k]) for k in ("n_train", "n_held_out")) else -1
    expected[REFERENCE_KEY] = [n_images, model.feature_dim]
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise _fail(path, f"is missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = sorted(set(entries) - set(expected))
    if unexpected:
        raise _fail(path, f"has unexpected tensor(s) {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for name, shape in expected.items():
        if entries[name]["shape"] != shape or entries[name]["dtype"] != "F32":
            raise _fail(path, f"tensor {name!r} is {entries[name]['dtype']} {entries[name]['shape']}; "
                              f"expected F32 {shape}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the header was valid, so this is I/O or corruption
        raise _fail(path, f"cannot read tensors: {' '.join(str(exc).split())[:200]}") from None
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise _fail(path, f"tensor {name!r} contains NaN or Inf")
    model.load_state_dict({k[len(WEIGHT_PREFIX):]: v for k, v in tensors.items() if k != REFERENCE_KEY}, strict=True)
    model.eval().requires_grad_(False)
    return Judge(model=model, classes=tuple(meta["classes"]), reference_features=tensors[REFERENCE_KEY],
                 meta=meta, path=str(path), image_size=meta["image_size"])


# -- CLI ------------------------------------------------------------------------------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise NitroGenInputError(f"--{name} {value!r} is out of range; use an integer in {low}..{high}")


def _check_out_path(out: str | os.PathLike) -> Path:
    path = Path(out).expanduser()
    if path.suffix.lower() != SUFFIX:
        raise NitroGenInputError(f"--out {str(out)!r} must end in {SUFFIX}")
    if path.is_dir():
        raise NitroGenInputError(f"--out {str(out)!r} is a directory; give a {SUFFIX} file path")
    return path


def add_judge_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--data DIR (required), --out PATH, --steps N, --seed S, --held-out F, --batch B; sets func=cmd_judge."""
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="ImageFolder dataset (DIR/<class>/*.png), e.g. from `data emoji`")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="PATH",
                        help=f"judge file to write (default {DEFAULT_OUT})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                        help=f"optimizer steps (default {DEFAULT_STEPS})")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed for init, split, batches (default 0)")
    parser.add_argument("--held-out", type=float, default=0.2, metavar="F",
                        help="fraction of each class held out to measure accuracy (default 0.2)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="B",
                        help=f"batch size (default {DEFAULT_BATCH})")
    parser.set_defaults(func=cmd_judge)
    return parser


def cmd_judge(args: argparse.Namespace) -> int:
    """Train and save the judge; print one summary line."""
    held_out = getattr(args, "held_out", 0.2)
    if not isinstance(held_out, float) or not 0.0 <= held_out < 1.0:
        raise NitroGenInputError(f"--held-out {held_out!r} must be a fraction in [0, 1)")
    meta = train_judge(args.data, args.out, steps=args.steps, seed=args.seed, held_out=held_out,
                       batch=getattr(args, "batch", DEFAULT_BATCH))
    held = meta["held_out_accuracy"]
    held_text = f"{held:.1%} ({meta['n_held_out']} images)" if held is not None else "n/a (no held-out images)"
    size_mb = Path(args.out).expanduser().stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mb:.2f} MB): held-out accuracy {held_text}, train accuracy "
          f"{meta['train_accuracy']:.1%} ({meta['n_train']} images), {len(meta['classes'])} classes, "
          f"{meta['steps']} steps in {meta['seconds']:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nitrogen_core.bench.judge ...` = `python -m nitrogen_core bench judge ...`."""
    from ..__main__ import main as cli_main
    return cli_main(["bench", "judge", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
