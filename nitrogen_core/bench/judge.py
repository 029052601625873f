"""The domain judge: a small emoji classifier whose features replace Inception for FID/KID, and its check.

Inception features know nothing about 32 px emoji on white, and a 2048-d covariance cannot be estimated
from the 100-300 samples a benchmark draws here. So the benchmark measures distances in a small feature
space of our own. A classifier's last layer alone is the wrong space: trained to name the class, it is
built to ignore blur and noise (format 1 of this file, a 32-d embedding, barely moved under a 2x blur).
So the judge's FID features (68-d) join three blocks, each dimension standardised by its spread over
the judge's training images (stored in the file):

* the classifier's 32-d embedding: what the image shows (class, layout);
* the stem conv's energy, mean |conv(x)| per channel *before* GroupNorm (24): colour and edge content.
  Statistics after a GroupNorm cannot see energy at all: the norm rescales every group to unit variance;
* fixed 3x3 Laplacian magnitudes per RGB channel, quantiles 0.5/0.75/0.9/0.99 (12): sharpness and noise.
  The Laplacian is 0 on flat areas, so noise lifts its low quantiles and blur lowers its high ones.

Images are rounded to uint8 levels before anything else, as a saved PNG would be (real data is uint8).
`bench judge-check` measures whether the features see blur, noise and hue shifts beyond the spread of
clean images (docs/judge_calibration.md).

* `JudgeNet`: conv + GroupNorm + SiLU stages with stride-2 downsampling (any square size that is a multiple
  of 8), global average pool, a linear 32-d embedding, then a linear class head.
* `train_judge(data_dir, out_path, ...)`: stratified held-out split, emoji-safe augmentation (shifts with
  white fill, mild brightness/contrast; never flips: flags, keys and arrows are not mirror-symmetric), AdamW
  with warm-up + cosine LR, label smoothing. On a folder with DIR/train and DIR/heldout it trains on
  DIR/train only. It reports held-out and train accuracy, then stores the weights, the FID features'
  mean and std over all its images, and JSON metadata in one .safetensors file.
* `load_judge(path)` validates the file (header, metadata, tensor names and shapes) before loading it, never
  unpickles, and returns a `Judge` with `.features(images)`.
* `load_real_sets(data_dir)`: the reference, floor and near-copy sets of a data folder (held-out split, or
  a fixed half/half split of a plain ImageFolder).
* `calibrate(judge, sets)`: FID/KID of clean and corrupted real images against the reference.

CLI: `python -m nitrogen_core bench judge --data DIR [--out PATH] [--steps N] [--seed S]` and
`python -m nitrogen_core bench judge-check --data DIR [--judge PATH] [--json PATH] [--markdown PATH]`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NitroGenInputError

FORMAT_VERSION = 2                     # 2: standardised 68-d FID features (1: the bare 32-d embedding)
KIND = "judge"
FEATURE_DIM = 32                       # the classifier's embedding; the FID features add two blocks to it
WIDTHS = (24, 48, 96, 128)             # stem width, then one stride-2 stage per further entry
GROUPS = 8                             # GroupNorm groups; every width is a multiple of this
LAPLACIAN_QUANTILES = (0.5, 0.75, 0.9, 0.99)
FEATURE_STD_FLOOR = 1e-2               # a feature that is (nearly) constant on real images is not blown up
MEAN_KEY, STD_KEY = "feature_mean", "feature_std"
WEIGHT_PREFIX = "model."
SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
DEFAULT_OUT = "checkpoints/judge-emoji32.safetensors"
BUNDLED_JUDGE = Path(__file__).resolve().parent.parent.parent / "checkpoints" / "judge-emoji32.safetensors"
REQUIRED_META = ("format", "kind", "classes", "image_size", "feature_dim", "architecture", "fid_features",
                 "held_out_accuracy", "train_accuracy", "n_train", "n_held_out", "steps", "seed", "data")

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


def laplacian_quantiles(x: torch.Tensor, quantiles: Sequence[float] = LAPLACIAN_QUANTILES) -> torch.Tensor:
    """(B, 3, S, S) in [-1, 1] -> (B, 3 * len(quantiles)): quantiles of |3x3 Laplacian| over each RGB
    channel of the [0, 1] image (valid positions only, so no border effect), channel-major."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    laplacian = F.conv2d((x + 1) / 2, kernel.expand(3, 1, 3, 3), groups=3).abs()     # (B, 3, S-2, S-2)
    q = torch.tensor(quantiles, dtype=x.dtype, device=x.device)
    return torch.quantile(laplacian.flatten(2), q, dim=2).permute(1, 2, 0).flatten(1)  # (B, 3 * Q)


class JudgeNet(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> embedding (B, feature_dim) -> logits (B, num_classes); S a multiple of 8
    when there are 3 stride-2 stages (the default). `fid_features` gives the raw (unstandardised)
    FID features: [embedding, stem energy, Laplacian quantiles]."""

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

    @property
    def fid_blocks(self) -> dict:
        """Name -> width of each FID feature block, in order (stored in the file and checked on load)."""
        return {"embedding": self.feature_dim, "stem_energy": self.widths[0],
                "laplacian_quantiles": 3 * len(LAPLACIAN_QUANTILES)}

    @property
    def fid_dim(self) -> int:
        return sum(self.fid_blocks.values())

    def architecture(self) -> dict:
        return {"widths": list(self.widths), "feature_dim": self.feature_dim, "groups": self.groups,
                "num_classes": self.num_classes}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)                          # (B, C_last, S / 8, S / 8)
        return self.feature(h.mean((2, 3)))       # (B, feature_dim)

    def fid_features(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.body[0]
        pre_norm = stem[0](x)                                                    # (B, C_0, S, S), before GroupNorm
        h = self.body[1:](stem[2](stem[1](pre_norm)))                            # (B, C_last, S / 8, S / 8)
        embedding = self.feature(h.mean((2, 3)))                                 # (B, feature_dim)
        energy = pre_norm.abs().mean((2, 3))                                     # (B, C_0)
        return torch.cat([embedding, energy, laplacian_quantiles(x)], 1)         # (B, fid_dim)

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


def _as_png_levels(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8, or float in [-1, 1] rounded to the 256 levels a saved PNG keeps -> float32 [-1, 1]."""
    if images.dtype == torch.uint8:
        return _as_float_images(images)
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).div(127.5).sub(1.0)


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


# -- real image sets: reference, floor and near-copy pools -----------------------------------------------

TRAIN_SPLIT, HELDOUT_SPLIT = "train", "heldout"
HALF_SPLIT_SEED = 0                    # the fixed half/half split of a plain ImageFolder


def data_layout(root: str | os.PathLike) -> str:
    """"heldout" when DIR/train and DIR/heldout are folders (the v2 corpus), else "imagefolder"."""
    root = Path(root).expanduser()
    return "heldout" if (root / TRAIN_SPLIT).is_dir() and (root / HELDOUT_SPLIT).is_dir() else "imagefolder"


def training_folder(root: str | os.PathLike) -> Path:
    """The folder a model trains on: DIR/train in the held-out layout, else DIR itself."""
    root = Path(root).expanduser()
    return root / TRAIN_SPLIT if data_layout(root) == "heldout" else root


@dataclass(frozen=True)
class RealSets:
    """The real images a benchmark compares against, all uint8 (N, 3, S, S) with labels (N,) into `classes`.

    reference     the FID/KID reference: held-out images, or half B of a plain ImageFolder;
    floor_pool    real images the floor draws from (at the generated set's count and class mix):
                  training images, or half A of a plain ImageFolder;
    train         the near-copy pool: every image a model may have trained on (DIR/train, or all of DIR);
    heldout       the second near-copy pool (the held-out split), or None for a plain ImageFolder.
    """

    layout: str
    classes: tuple[str, ...]
    reference: torch.Tensor
    reference_labels: torch.Tensor
    floor_pool: torch.Tensor
    floor_labels: torch.Tensor
    train: torch.Tensor
    heldout: torch.Tensor | None
    data: str

    def describe(self) -> dict:
        if self.layout == "heldout":
            how = (f"reference: the held-out split ({len(self.reference)} images); floor: training images vs "
                   f"the held-out split at the generated set's count")
        else:
            how = (f"no held-out split in this folder (a plain ImageFolder): reference = half B of a fixed "
                   f"stratified half/half split (seed {HALF_SPLIT_SEED}, {len(self.reference)} images); floor: "
                   f"half A vs half B at the generated set's count; near-copies are checked against all "
                   f"{len(self.train)} images")
        return {"layout": self.layout, "data": self.data, "reference_images": int(len(self.reference)),
                "floor_pool_images": int(len(self.floor_pool)), "train_images": int(len(self.train)),
                "heldout_images": None if self.heldout is None else int(len(self.heldout)), "note": how}


def load_real_sets(data_dir: str | os.PathLike, image_size: int, classes: Sequence[str] | None = None) -> RealSets:
    """The reference, floor and near-copy sets of a data folder (see RealSets).

    DIR/train + DIR/heldout (the v2 corpus): reference = held-out, floor and near-copy pool = train.
    Otherwise DIR is a plain ImageFolder, whose images are all training images: a fixed stratified
    half/half split gives the reference (half B) and the floor pool (half A); the near-copy pool is all.
    `classes`, if given (e.g. the checkpoint's labels), must equal the folder's classes.
    """
    from ..train.data import load_image_folder

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise NitroGenInputError(f"--data {str(data_dir)!r} is not a folder; give the real images "
                                 f"(e.g. `python -m nitrogen_core data emoji --out DIR`)")
    layout = data_layout(root)
    train = load_image_folder(training_folder(root), image_size)
    if classes is not None and tuple(classes) != tuple(train.classes):
        raise NitroGenInputError(f"--data {str(data_dir)!r} has classes {list(train.classes)}; expected "
                                 f"{list(classes)}")
    if layout == "heldout":
        held = load_image_folder(root / HELDOUT_SPLIT, image_size)
        unknown = sorted(set(held.classes) - set(train.classes))
        if unknown:
            raise NitroGenInputError(f"--data {str(data_dir)!r}: held-out classes {unknown} have no training folder")
        if len(held) < 4:
            raise NitroGenInputError(f"--data {str(data_dir)!r}: the held-out split has {len(held)} images; FID/KID "
                                     f"against it need at least 4")
        remap = torch.tensor([train.classes.index(c) for c in held.classes])
        held_labels = remap[held.labels]
        return RealSets(layout, tuple(train.classes), held.images, held_labels, train.images, train.labels,
                        train.images, held.images, str(data_dir))
    return half_split_sets(train.images, train.labels, train.classes, str(data_dir))


def half_split_sets(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], data: str) -> RealSets:
    """RealSets of a plain ImageFolder's images (uint8, labels): a stratified half/half split with a fixed
    seed; half B is the reference, half A the floor pool, and all images are the near-copy pool."""
    a_index, b_index = stratified_split(labels, 0.5, HALF_SPLIT_SEED)
    if len(a_index) < 4 or len(b_index) < 4:
        raise NitroGenInputError(f"--data {data!r} has {len(labels)} images; a half/half split needs >= 8")
    return RealSets("imagefolder", tuple(classes), images[b_index], labels[b_index], images[a_index],
                    labels[a_index], images, None, data)


def counts_in_proportion(labels: torch.Tensor, num_classes: int, total: int) -> list[int]:
    """`total` split over classes in proportion to their frequency in `labels` (largest remainder;
    ties go to the lower class index). Deterministic."""
    freq = torch.bincount(labels, minlength=num_classes).double()                   # (K,)
    share = freq / freq.sum() * total
    counts = share.floor().long()
    order = sorted(range(num_classes), key=lambda c: (-(share[c] - counts[c]).item(), c))
    for c in order[:total - int(counts.sum())]:
        counts[c] += 1
    return counts.tolist()


def labels_for_counts(counts: Sequence[int]) -> torch.Tensor:
    """Class labels with counts[c] of class c, interleaved round-robin (0, 1, 2, ..., 0, 1, ...)."""
    rounds = max(counts, default=0)
    return torch.tensor([c for r in range(rounds) for c, n in enumerate(counts) if r < n], dtype=torch.long)


def matched_draw(labels: torch.Tensor, counts: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Indices into `labels`: counts[c] images of class c drawn without replacement (all of them when the
    class has fewer), from a generator seeded with `seed`; sorted."""
    generator = torch.Generator().manual_seed(int(seed))
    picked = []
    for c, n in enumerate(counts):
        members = torch.nonzero(labels == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(picked).sort().values if picked else torch.empty(0, dtype=torch.long)


# -- training -------------------------------------------------------------------------------------------

def train_judge(data_dir: str | os.PathLike, out_path: str | os.PathLike, *, steps: int = DEFAULT_STEPS,
                seed: int = 0, held_out: float = 0.2, batch: int = DEFAULT_BATCH, lr: float = 2e-3,
                weight_decay: float = 0.05, label_smoothing: float = 0.1, progress: bool = True) -> dict:
    """Train the judge on an ImageFolder, save it to `out_path`, and return its metadata (a dict).

    With DIR/train and DIR/heldout (the v2 corpus) it trains on DIR/train only: the held-out emoji are
    the FID reference and stay unseen. Deterministic for a fixed seed (model init, split, batches and
    augmentation all derive from it). The saved model is trained on its own train split only, so
    held_out_accuracy is honest (`held_out` is the judge's accuracy split, not the corpus's). The FID
    features' mean and std are taken over all the images it loaded, un-augmented.
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
    folder = training_folder(root)
    image_size = _detect_image_size(folder)
    data = load_image_folder(folder, image_size)
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
    fid_raw = _batched(model.fid_features, images)                                  # (N, fid_dim)
    feature_mean, feature_std = fid_raw.mean(0), fid_raw.std(0).clamp(min=FEATURE_STD_FLOOR)   # (fid_dim,)

    meta = {
        "format": FORMAT_VERSION,
        "kind": KIND,
        "classes": list(data.classes),
        "image_size": image_size,
        "feature_dim": model.feature_dim,
        "architecture": model.architecture(),
        "fid_features": model.fid_blocks,
        "fid_features_normalised_on": int(len(images)),
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
        "data_layout": data_layout(root),
        "data_source": _read_data_source(root),
        "commit": _git_commit(),
    }
    save_judge(out_path, model, feature_mean, feature_std, meta)
    return meta


# -- file format ----------------------------------------------------------------------------------------

def save_judge(path: str | os.PathLike, model: JudgeNet, feature_mean: torch.Tensor, feature_std: torch.Tensor,
               meta: dict) -> Path:
    """Write weights (as `model.<name>`), the FID features' `feature_mean` and `feature_std` and metadata
    (each value a JSON string) atomically."""
    from ..checkpoint import write_safetensors_atomic

    path = _check_out_path(path)
    tensors = {WEIGHT_PREFIX + k: v.detach().to(torch.float32).contiguous().clone()
               for k, v in model.state_dict().items()}
    tensors[MEAN_KEY] = feature_mean.detach().to(torch.float32).contiguous().clone()
    tensors[STD_KEY] = feature_std.detach().to(torch.float32).contiguous().clone()
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NitroGenInputError(f"{path}: cannot save: tensor {name!r} contains NaN or Inf")
    metadata = {k: json.dumps(v, sort_keys=True, allow_nan=False) for k, v in meta.items()}
    return write_safetensors_atomic(path, tensors, metadata)


@dataclass(frozen=True)
class Judge:
    """A loaded judge: `.model` (eval mode, no grad), `.classes`, the FID features' `.feature_mean` and
    `.feature_std` (fid_dim,), `.meta`."""

    model: JudgeNet
    classes: tuple[str, ...]
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
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

    @property
    def dim(self) -> int:
        return self.model.fid_dim

    def features(self, images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
        """FID/KID features: (B, 3, S, S) uint8 0..255 or float in [-1, 1] -> float32 (B, fid_dim).
        Float images are first rounded to uint8 levels (as a saved PNG); each dimension is standardised
        with the mean and std over the judge's training images."""
        self._check_images(images)
        raw = _batched(lambda x: self.model.fid_features(_as_png_levels(x)), images.cpu(), batch_size)
        return ((raw.reshape(len(images), self.dim) - self.feature_mean) / self.feature_std).contiguous()

    def embedding(self, images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
        """The classifier's embedding (B, feature_dim), as in format 1 (no rounding, no standardising)."""
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
    if "kind" in meta and meta["kind"] != KIND:
        raise _fail(path, f"metadata kind is {meta['kind']!r}; expected {KIND!r}")
    if "format" in meta and meta["format"] != FORMAT_VERSION:
        raise _fail(path, f"format is {meta['format']!r}; this version reads format {FORMAT_VERSION} (retrain it: "
                          f"python -m nitrogen_core bench judge --data DIR)")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise _fail(path, f"metadata is missing {missing}")
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
    model = JudgeNet(len(classes), widths, feature_dim, groups)
    if meta["fid_features"] != model.fid_blocks:
        raise _fail(path, f"metadata fid_features {str(meta['fid_features'])[:120]} do not match this version's "
                          f"{model.fid_blocks}")
    return model


def load_judge(path: str | os.PathLike = BUNDLED_JUDGE) -> Judge:
    """Validate and load a judge file (default: the bundled checkpoints/judge-emoji32.safetensors).
    Bad files raise a one-line NitroGenInputError naming the path and the problem."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    entries, meta = _header(path)
    model = _model_from_meta(path, meta)
    expected = {WEIGHT_PREFIX + k: list(v.shape) for k, v in model.state_dict().items()}
    expected[MEAN_KEY] = expected[STD_KEY] = [model.fid_dim]
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
    if not (tensors[STD_KEY] >= torch.tensor(FEATURE_STD_FLOOR, dtype=torch.float32)).all():
        raise _fail(path, f"tensor {STD_KEY!r} has values below {FEATURE_STD_FLOOR} (features would be blown up)")
    model.load_state_dict({k[len(WEIGHT_PREFIX):]: v for k, v in tensors.items()
                           if k.startswith(WEIGHT_PREFIX)}, strict=True)
    model.eval().requires_grad_(False)
    return Judge(model=model, classes=tuple(meta["classes"]), feature_mean=tensors[MEAN_KEY],
                 feature_std=tensors[STD_KEY], meta=meta, path=str(path), image_size=meta["image_size"])


# -- calibration: does the judge see blur, noise and hue shifts? ----------------------------------------

# Strengths per corruption; the REQUIRED ones must move FID beyond the clean interval (issue 11).
CORRUPTIONS = {"blur": (4 / 3, 2.0, 4.0), "noise": (0.02, 0.05, 0.1, 0.2), "hue": (0.02, 0.05, 0.1, 0.25)}
REQUIRED = (("blur", 2.0), ("noise", 0.1), ("hue", 0.1))
NOISE_SEED = 0
CALIBRATION_MARKDOWN = "docs/judge_calibration.md"
CALIBRATION_JSON = "docs/judge_calibration.json"


def blur(images: torch.Tensor, factor: float) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> uint8: area-average down to round(S / factor) px, then bilinear back up to S
    (align_corners=False). factor 2: each 2x2 block averaged, then interpolated back."""
    size = images.shape[-1]
    small = F.interpolate(images.float(), size=max(1, round(size / factor)), mode="area")
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)


def add_noise(images: torch.Tensor, sigma: float, seed: int = NOISE_SEED) -> torch.Tensor:
    """uint8 -> uint8: Gaussian noise of std `sigma` on [0, 1] pixels (fixed seed), clipped to [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    unit = images.float() / 255 + sigma * torch.randn(images.shape, generator=generator)
    return (unit.clamp(0, 1) * 255).round().to(torch.uint8)


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> hue in turns [0, 1), saturation, value, each (B, H, W)."""
    r, g, b = rgb.unbind(1)
    value, low = rgb.amax(1), rgb.amin(1)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == r, ((g - b) / safe) % 6,
                      torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), value * 0)
    return hue, saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    def channel(n: int) -> torch.Tensor:
        k = (n + hue * 6) % 6
        return value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return torch.stack([channel(5), channel(3), channel(1)], 1)                     # (B, 3, H, W)


def hue_shift(images: torch.Tensor, turns: float) -> torch.Tensor:
    """uint8 -> uint8: HSV hue rotated by `turns` (0.1 = 36 degrees); greys and white are unchanged."""
    hue, saturation, value = _rgb_to_hsv(images.float() / 255)
    return (_hsv_to_rgb((hue + turns) % 1, saturation, value) * 255).round().clamp(0, 255).to(torch.uint8)


def corrupt(images: torch.Tensor, kind: str, strength: float) -> torch.Tensor:
    if kind == "blur":
        return blur(images, strength)
    if kind == "noise":
        return add_noise(images, strength)
    if kind == "hue":
        return hue_shift(images, strength)
    raise NitroGenInputError(f"corruption {kind!r} is unknown; use one of {sorted(CORRUPTIONS)}")


def corruption_label(kind: str, strength: float) -> str:
    if kind == "blur":
        return f"blur: area down to {round(32 / strength)} px of 32, bilinear up (x{strength:.3g})"
    if kind == "noise":
        return f"Gaussian noise sigma {strength:g} (of [0, 1]), clipped"
    return f"hue shift {strength:g} turns ({360 * strength:g} deg)"


def calibrate(judge: Judge, sets: RealSets, *, resamples: int = 200, seed: int = 0,
              corruptions: dict | None = None, embedding_check: bool = True) -> dict:
    """FID/KID against the reference of: clean real images (the floor set at the reference's count and class
    mix), and the same images under each corruption at each strength. Every figure has its bootstrap
    interval (the probe set resampled, the reference fixed). A corruption is seen when its FID interval
    lies wholly above the clean one (fid_lo > clean fid_hi). `corruptions` (default CORRUPTIONS) maps a
    kind to its strengths; it must hold the REQUIRED ones. With `embedding_check`, the embedding block
    alone (format 1's features) is measured on the required corruptions for comparison."""
    from .metrics import psnr, set_distance

    reference_counts = torch.bincount(sets.reference_labels, minlength=len(sets.classes)).tolist()
    probe = sets.floor_pool[matched_draw(sets.floor_labels, reference_counts, seed)]      # (n, 3, S, S) uint8
    reference_feats = judge.features(sets.reference)
    distance = lambda images: set_distance(judge.features(images), reference_feats, resamples=resamples, seed=seed)
    clean = distance(probe)
    corruptions = CORRUPTIONS if corruptions is None else corruptions
    absent = [f"{kind} {strength:g}" for kind, strength in REQUIRED if strength not in corruptions.get(kind, ())]
    if absent:
        raise NitroGenInputError(f"calibrate: corruptions must include the required {absent}")
    rows = []
    for kind, strengths in corruptions.items():
        for strength in strengths:
            images = corrupt(probe, kind, strength)
            d = distance(images)
            rows.append({"corruption": kind, "strength": strength, "label": corruption_label(kind, strength),
                         "psnr_to_clean": float(psnr(_as_float_images(images), _as_float_images(probe))
                                                .clamp(max=100).mean()),
                         **d.as_dict(), "fid_beyond_clean": d.fid_lo > clean.fid_hi,
                         "kid_beyond_clean": d.kid_lo > clean.kid_hi})
    reference_embedding = judge.embedding(sets.reference)
    embedding_rows = []
    for kind, strength in (("clean", None), *REQUIRED) if embedding_check else ():
        images = probe if kind == "clean" else corrupt(probe, kind, strength)
        d = set_distance(judge.embedding(images), reference_embedding, resamples=resamples, seed=seed)
        embedding_rows.append({"corruption": kind, "strength": strength, **d.as_dict()})
    for row in embedding_rows[1:]:
        row["fid_beyond_clean"] = row["fid_lo"] > embedding_rows[0]["fid_hi"]
    required = {f"{kind} {strength:g}": next(r["fid_beyond_clean"] for r in rows
                                             if r["corruption"] == kind and r["strength"] == strength)
                for kind, strength in REQUIRED}
    from .evaluate import display_path
    return {"judge": {"path": display_path(judge.path), "fid_dim": judge.dim, "fid_features": judge.model.fid_blocks,
                      "held_out_accuracy": judge.meta.get("held_out_accuracy"), "data": judge.meta.get("data"),
                      "commit": judge.meta.get("commit")},
            "sets": sets.describe(), "probe_images": int(len(probe)), "resamples": resamples, "seed": seed,
            "level": clean.level, "clean": clean.as_dict(), "rows": rows, "embedding_only": embedding_rows,
            "required": required, "passed": all(required.values())}


def _interval(row: dict, key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f} [{row[key + '_lo']:.{digits}f}, {row[key + '_hi']:.{digits}f}]"


def render_calibration(result: dict) -> str:
    """docs/judge_calibration.md from a calibrate() result (plus its "command"); deterministic."""
    clean, sets, judge = result["clean"], result["sets"], result["judge"]
    accuracy = judge.get("held_out_accuracy")
    lines = [
        "# Judge calibration: does the domain FID see blur, noise and hue shifts?",
        "",
        f"Generated by `{result.get('command', 'python -m nitrogen_core bench judge-check')}`.",
        "",
        f"- Judge: `{judge['path']}`, {judge['fid_dim']}-d FID features "
        f"({', '.join(f'{k} {v}' for k, v in judge['fid_features'].items())}), each standardised by its spread "
        f"over the judge's training images; held-out accuracy "
        f"{'unknown' if accuracy is None else f'{accuracy:.1%}'}.",
        f"- Data `{sets['data']}`, layout `{sets['layout']}`: {sets['note']}.",
        f"- Probe: {result['probe_images']} real images drawn from the floor pool at the reference's count and "
        f"class mix; every corruption is applied to these same images (rounded to uint8, as a PNG).",
        f"- Intervals: {result['level']:.0%} percentile bootstrap, {result['resamples']} resamples (seed "
        f"{result['seed']}) of the probe set with replacement; the reference is fixed. KID: mean over subsets of "
        f"{clean['kid_subset_size']} images from each set. Resamples hold ~63% distinct images, so FID's "
        f"interval sits above its point figure; compare intervals with intervals.",
        "- **Seen** = the corrupted FID interval lies wholly above the clean one (lo > clean hi).",
        "",
        f"Clean (floor): FID {_interval(clean, 'fid', 3)}, KID {_interval(clean, 'kid', 4)}.",
        "",
        "| corruption | strength | PSNR to clean (dB) | FID [90% interval] | KID [90% interval] | seen |",
        "|---|---|---|---|---|---|",
        f"| none (clean) | – | – | {_interval(clean, 'fid', 3)} | {_interval(clean, 'kid', 4)} | – |",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['label']} | {row['strength']:.3g} | {row['psnr_to_clean']:.1f} | "
                     f"{_interval(row, 'fid', 3)} | {_interval(row, 'kid', 4)} | "
                     f"{'yes' if row['fid_beyond_clean'] else '**no**'} |")
    lines += ["", "Required (issue 11): " + ", ".join(f"{k}: {'seen' if v else '**not seen**'}"
                                                       for k, v in result["required"].items())
              + (". All seen." if result["passed"] else ". **Not all seen.**"), ""]
    if not result["embedding_only"]:
        return "\n".join(lines) + "\n"
    lines += ["For comparison, the classifier's embedding alone (the 32-d feature of judge format 1, not "
              "standardised), same images and bootstrap:", "",
              "| corruption | strength | FID [90% interval] | seen |", "|---|---|---|---|"]
    for row in result["embedding_only"]:
        strength = "–" if row["strength"] is None else f"{row['strength']:.3g}"
        seen = "–" if row["corruption"] == "clean" else ("yes" if row["fid_beyond_clean"] else "**no**")
        lines.append(f"| {row['corruption']} | {strength} | {_interval(row, 'fid', 3)} | {seen} |")
    return "\n".join(lines) + "\n"


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


def add_judge_check_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--data DIR (required), --judge PATH, --json PATH, --markdown PATH, --resamples N, --seed S."""
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="real images: DIR/train + DIR/heldout, or a plain ImageFolder (split half/half)")
    parser.add_argument("--judge", default=str(BUNDLED_JUDGE), metavar="PATH",
                        help="judge file to check (default: the bundled one)")
    parser.add_argument("--json", default=None, metavar="PATH", help=f"write the result here (e.g. {CALIBRATION_JSON})")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help=f"write the calibration table here (e.g. {CALIBRATION_MARKDOWN})")
    parser.add_argument("--resamples", type=int, default=200, metavar="N", help="bootstrap resamples (default 200)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the probe draw and bootstrap (default 0)")
    parser.set_defaults(func=cmd_judge_check)
    return parser


def judge_check_command(args: argparse.Namespace) -> str:
    """This run's command line: the flags given, paths as given."""
    given = [("--data", args.data), ("--judge", None if args.judge == str(BUNDLED_JUDGE) else args.judge),
             ("--resamples", None if args.resamples == 200 else args.resamples),
             ("--seed", None if args.seed == 0 else args.seed), ("--json", args.json), ("--markdown", args.markdown)]
    return " ".join(["python -m nitrogen_core bench judge-check",
                     *(f"{flag} {shlex.quote(str(value))}" for flag, value in given if value is not None)])


def cmd_judge_check(args: argparse.Namespace) -> int:
    """Print the calibration table; write --json/--markdown. Exit 1 when a required corruption is not seen."""
    _check_int("resamples", args.resamples, 10, 100_000)
    _check_int("seed", args.seed, 0, MAX_SEED)
    for flag, value, suffix in (("--json", args.json, ".json"), ("--markdown", args.markdown, ".md")):
        if value is not None and Path(value).suffix.lower() != suffix:
            raise NitroGenInputError(f"{flag} {value!r} must end in {suffix}")
    judge = load_judge(args.judge)
    sets = load_real_sets(args.data, judge.image_size, judge.classes)
    result = {**calibrate(judge, sets, resamples=args.resamples, seed=args.seed), "command": judge_check_command(args)}
    text = render_calibration(result)
    print(text, end="")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0 if result["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nitrogen_core.bench.judge ...` = `python -m nitrogen_core bench judge ...`."""
    from ..__main__ import main as cli_main
    return cli_main(["bench", "judge", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
