"""The quality bar (issue 12): does the model generate, or does it recall its training images?

    python -m nitrogen_core bench quality --ckpt PATH --data DIR [--images 1000] [--judge PATH]
        [--json docs/quality.json] [--figures docs] [--readme README.md] [--block quality]

Full compute only (width 1.0, every unit, every step; the checkpoint's steps and cfg), on N images
(default 1000) with labels in proportion to the training data (largest remainders, as `bench tau`).
Image k's noise comes from seed QUALITY_SEED + k: disjoint from `bench` (one generator seeded
BENCH_SEED = 2025) and from `bench tau` (seeds 10,000,000 + k), so no figure here reuses their images.

Measured:
- near-copy rate: the share of samples whose PSNR (uint8, whole image) to the nearest training image
  exceeds 30 dB; the same against the held-out split as the second check; both per class too;
- domain FID/KID (the judge's features, `bench judge`) against the reference (the held-out split, or
  half B of a plain ImageFolder, which the output says), with bootstrap 90% intervals, and the floor:
  real training images against the same reference, drawn at the generated set's count and class mix;
- per class: how often the judge names the class the sample was drawn for (a recognisability proxy),
  and, for a `data emoji` corpus, the styles of the samples' nearest training images.

The bar: near-copy rate <= 10% and FID <= 1.5x the floor (point against point: both sets have the same
count, so FID's small-sample bias is alike), measured on >= 1000 samples against a held-out split.
Anything short of that is reported as not meeting the bar, with the reason.

Figures (with --figures DIR, small PNGs for committing): DIR/quality_<backbone>_grid.png, one row per
class holding its first samples (not selected), and DIR/quality_<backbone>_nearest.png, samples beside
their nearest training image: the most-copied first, then a random draw of the others.
--readme writes the markdown block between <!-- quality:begin --> and <!-- quality:end -->
(--block NAME for another block, e.g. one per backbone).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
from ..errors import NitroGenInputError
from ..sampler import MAX_BATCH, SamplerSettings, make_noise, sample
from .evaluate import (DEFAULT_DATA, DEFAULT_JUDGE, FLOOR_SEED, _markdown_table, block_markers, check_readme,
                       command_line, display_path, write_readme)
from .metrics import NEAR_COPY_DB, _as_uint8_images, nearest_psnr, set_distance
from .tau import proportional_labels

# Image k: seed QUALITY_SEED + k. `bench` draws from one generator seeded BENCH_SEED (2025); `bench tau`'s
# image k (k < 100,000) uses CALIBRATION_SEED + k = 10,000,000 + k: no seed is shared.
QUALITY_SEED = 20_000_000
DEFAULT_IMAGES = 1000
BAR_IMAGES = 1000                    # the bar is measured on >= this many samples
MIN_IMAGES, MAX_IMAGES = 4, 100_000  # FID/KID need 4
NEAR_COPY_BAR = 0.10                 # share of samples above NEAR_COPY_DB to the nearest training image
FID_FLOOR_BAR = 1.5                  # FID <= this x the floor
GRID_COLUMNS = 10                    # samples per class row in the grid
NEAREST_TOP, NEAREST_RANDOM = 8, 8   # pairs in the nearest-neighbour picture
FIGURE_SEED = 0                      # the random rows of the nearest-neighbour picture
SCALE = 2                            # figure pixels per image pixel
COPY_PSNR = 100.0                    # an exact copy's PSNR (+inf) as written to JSON
QUALITY_MARKERS = block_markers("quality")


# -- samples and nearest training images --------------------------------------------------------------

def quality_noise(config, n: int) -> torch.Tensor:
    """(n, C, H, W): image k from seed QUALITY_SEED + k, so any prefix is reproducible alone."""
    return torch.cat([make_noise(config, 1, QUALITY_SEED + k) for k in range(n)])


@torch.no_grad()
def full_samples(ck, labels: torch.Tensor, log=None, cfg: float | None = None,
                 steps: int | None = None) -> torch.Tensor:
    """Full-compute samples (n, C, H, W) in [-1, 1] for `labels`, in calls of at most MAX_BATCH, at
    guidance `cfg` and `steps` DDIM steps (default: the checkpoint's)."""
    settings = sampling_settings(ck, cfg, steps)
    noise = quality_noise(ck.config, len(labels))
    out = []
    for lo in range(0, len(labels), MAX_BATCH):
        out.append(sample(ck.model, noise[lo:lo + MAX_BATCH], labels[lo:lo + MAX_BATCH], settings).images)
        if log is not None:
            log(f"  samples {min(lo + MAX_BATCH, len(labels))}/{len(labels)}")
    return torch.cat(out)


def nearest_index(samples: torch.Tensor, pool: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (B,) of each sample's nearest pool image and the PSNR (B,) float64 to it, by the same
    uint8 whole-image L2 as metrics.nearest_psnr (+inf for an exact copy)."""
    a, b = _as_uint8_images("samples", samples), _as_uint8_images("pool", pool)
    y = b.flatten(1).to(torch.float64)                                                # (P, D)
    y_sq = y.square().sum(1)
    index, best = [], []
    for lo in range(0, len(a), chunk):
        x = a[lo:lo + chunk].flatten(1).to(torch.float64)                             # (c, D)
        sse = (x.square().sum(1, keepdim=True) + y_sq[None] - 2 * x @ y.T).clamp(min=0)   # (c, P)
        value, where = sse.min(1)
        index.append(where)
        best.append(value)
    mse = torch.cat(best) / a[0].numel()
    return torch.cat(index), 10 * torch.log10(255.0**2 / mse)


def _training_set(data: str, image_size: int):
    """The training images with their files and, for a `data emoji` corpus, their styles."""
    from ..train.data import is_split_corpus, load_image_folder, load_split
    from .judge import training_folder
    if is_split_corpus(data):
        return load_split(data, "train", image_size)
    return load_image_folder(training_folder(data), image_size)


def _finite(value: float) -> float:
    return COPY_PSNR if math.isinf(value) else float(value)


# -- measuring --------------------------------------------------------------------------------------------

def sampling_settings(ck, cfg: float | None = None, steps: int | None = None) -> SamplerSettings:
    """Full compute at the checkpoint's recommended steps and cfg unless given."""
    return SamplerSettings(mode="full", steps=ck.sampler.get("steps", 20) if steps is None else steps,
                           cfg=ck.sampler.get("cfg", 1.5) if cfg is None else cfg).validate()


def measure(ckpt: str, data: str, judge_path: str, images: int, log=print,
            cfg: float | None = None, steps: int | None = None) -> tuple[dict, dict]:
    """The quality result (JSON-ready) and what the figures need: {samples, labels, train, picks}.
    `cfg`, `steps`: guidance scale and DDIM steps (default: the checkpoint's recommended ones)."""
    from .judge import load_judge, load_real_sets, matched_draw
    ck = load_checkpoint(ckpt)
    judge = load_judge(judge_path)
    if tuple(judge.classes) != tuple(ck.labels):
        raise NitroGenInputError(f"judge {judge_path} was trained on classes {list(judge.classes)}, "
                                 f"the checkpoint has {list(ck.labels)}")
    sets = load_real_sets(data, judge.image_size, ck.labels)
    train = _training_set(data, judge.image_size)
    n_classes = len(ck.labels)
    train_counts = torch.bincount(train.labels, minlength=n_classes).tolist()
    labels = proportional_labels(train_counts, images)                                 # (N,) grouped by class
    counts = torch.bincount(labels, minlength=n_classes).tolist()
    backbone = getattr(ck.config, "backbone", "unet") or "unet"
    log(f"bench quality: {backbone}, {images} full-compute samples, labels in proportion to {len(train)} training "
        f"images; {sets.describe()['note']}")
    start = time.perf_counter()
    settings = sampling_settings(ck, cfg, steps)
    samples = full_samples(ck, labels, log, cfg=settings.cfg, steps=settings.steps)
    seconds = time.perf_counter() - start

    # Near-copies: the shared metric for the rates, nearest_index for which image (same distances).
    to_train = nearest_psnr(samples, train.images)                                     # (N,)
    near_train = to_train > NEAR_COPY_DB
    near_held = None if sets.heldout is None else nearest_psnr(samples, sets.heldout) > NEAR_COPY_DB
    index, _ = nearest_index(samples, train.images)                                    # (N,)

    reference = judge.features(sets.reference)
    generated = set_distance(judge.features(samples), reference)
    floor_images = sets.floor_pool[matched_draw(sets.floor_labels, counts, FLOOR_SEED)]
    floor = set_distance(judge.features(floor_images), reference)
    agrees = judge.logits(samples).argmax(1) == labels                                 # (N,)

    styles = list(train.styles) if train.styles else None
    per_class = []
    for c, name in enumerate(ck.labels):
        mine = labels == c
        n = int(mine.sum())
        entry = {"class": name, "samples": n, "train_images": train_counts[c],
                 "near_copy": float(near_train[mine].double().mean()) if n else None,
                 "near_copy_heldout": None if near_held is None or not n else float(near_held[mine].double().mean()),
                 "judge_agrees": float(agrees[mine].double().mean()) if n else None}
        if styles is not None and n:
            nearest_styles = [styles[int(i)] for i in index[mine]]
            entry["nearest_styles"] = {s: nearest_styles.count(s) for s in sorted(set(nearest_styles))}
        per_class.append(entry)

    near_copy = float(near_train.double().mean())
    fid_ratio = generated.fid / floor.fid if floor.fid > 0 else math.inf
    checks = [
        {"key": "images", "met": images >= BAR_IMAGES,
         "label": f"measured on ≥ {BAR_IMAGES} samples", "figures": f"{images} samples"},
        {"key": "heldout", "met": sets.layout == "heldout", "label": "FID against a held-out split",
         "figures": "the held-out split" if sets.layout == "heldout" else
         "no held-out split in this folder: half B of a plain ImageFolder stands in"},
        {"key": "near_copy", "met": near_copy <= NEAR_COPY_BAR,
         "label": f"near-copy rate ≤ {NEAR_COPY_BAR:.0%}",
         "figures": f"{near_copy:.1%} of samples within {NEAR_COPY_DB:g} dB of a training image"
                    + ("" if near_held is None else f"; {float(near_held.double().mean()):.1%} of a held-out image")},
        {"key": "fid", "met": fid_ratio <= FID_FLOOR_BAR,
         "label": f"domain FID ≤ {FID_FLOOR_BAR:g}× the floor",
         "figures": f"FID {generated.fid:.3f} [{generated.fid_lo:.3f}, {generated.fid_hi:.3f}] vs floor "
                    f"{floor.fid:.3f} [{floor.fid_lo:.3f}, {floor.fid_hi:.3f}] at {len(floor_images)} images: "
                    f"{fid_ratio:.2f}× (upper ends: {generated.fid_hi / floor.fid_hi:.2f}×)"},
    ]
    picks = pick_nearest_rows(to_train)
    result = {
        "ckpt": display_path(str(ckpt)), "backbone": backbone, "images": images, "steps": settings.steps,
        "cfg": settings.cfg, "seed_range": [QUALITY_SEED, QUALITY_SEED + images - 1],
        "labels": dict(zip(ck.labels, counts)), "train_counts": dict(zip(ck.labels, train_counts)),
        "sampling_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "near_copy_db": NEAR_COPY_DB, "near_copy": near_copy,
        "near_copy_heldout": None if near_held is None else float(near_held.double().mean()),
        "nearest_psnr": {"mean": float(to_train.clamp(max=COPY_PSNR).mean()),
                         "p99": float(torch.quantile(to_train.clamp(max=COPY_PSNR), 0.99)),
                         "max": _finite(float(to_train.max()))},
        "judge_agrees": float(agrees.double().mean()),
        "fid": generated.as_dict(), "floor": {**floor.as_dict(), "images": int(len(floor_images))},
        "fid_to_floor": fid_ratio, "reference": sets.describe(),
        "judge": {"path": display_path(str(judge_path)), "held_out_accuracy": judge.meta.get("held_out_accuracy"),
                  "data": judge.meta.get("data")},
        "per_class": per_class, "checks": checks, "passed": all(c["met"] for c in checks),
        "nearest_rows": [{"sample": int(k), "label": ck.labels[int(labels[k])], "psnr": _finite(float(to_train[k])),
                          "nearest": train.files[int(index[k])] if train.files else int(index[k]),
                          "kind": kind} for k, kind in picks],
    }
    return result, {"samples": samples, "labels": labels, "train": train, "index": index, "picks": picks,
                    "classes": list(ck.labels)}


def pick_nearest_rows(to_train: torch.Tensor, top: int = NEAREST_TOP, random: int = NEAREST_RANDOM,
                      seed: int = FIGURE_SEED) -> list[tuple[int, str]]:
    """(sample index, "most copied" | "random") rows: the `top` samples closest to a training image,
    then `random` others drawn with a fixed seed, in index order."""
    order = torch.argsort(to_train, descending=True, stable=True)
    first = order[:top].tolist()
    rest = order[top:]
    generator = torch.Generator().manual_seed(seed)
    drawn = sorted(rest[torch.randperm(len(rest), generator=generator)[:random]].tolist())
    return [(k, "most copied") for k in first] + [(k, "random") for k in drawn]


# -- figures --------------------------------------------------------------------------------------------

def _tile(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] or uint8 -> a PIL image upscaled SCALE x (nearest)."""
    arr = _as_uint8_images("figure", image[None])[0].permute(1, 2, 0).numpy()
    im = Image.fromarray(arr)
    return im.resize((im.width * SCALE, im.height * SCALE), Image.NEAREST)


def class_grid(samples: torch.Tensor, labels: torch.Tensor, classes: list[str], columns: int = GRID_COLUMNS
               ) -> Image.Image:
    """One row per class: its first `columns` samples (in sample order, not selected), the name at the left."""
    font = ImageFont.load_default()
    side = samples.shape[-1] * SCALE
    gap, label_w = 2, 70
    rows = [c for c in range(len(classes)) if bool((labels == c).any())]
    sheet = Image.new("RGB", (label_w + columns * (side + gap), max(1, len(rows)) * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, c in enumerate(rows):
        y = r * (side + gap)
        draw.text((4, y + side // 2 - 6), classes[c][:11], fill="black", font=font)
        for j, k in enumerate(torch.nonzero(labels == c).flatten()[:columns].tolist()):
            sheet.paste(_tile(samples[k]), (label_w + j * (side + gap), y))
    return sheet


def nearest_sheet(samples: torch.Tensor, labels: torch.Tensor, classes: list[str], train, index: torch.Tensor,
                  picks: list[tuple[int, str]], psnrs: list[float]) -> Image.Image:
    """Rows of sample | its nearest training image | PSNR and class: the most-copied block, then the random one."""
    font = ImageFont.load_default()
    side = samples.shape[-1] * SCALE
    gap, text_w, head = 4, 150, 16
    half = (len(picks) + 1) // 2
    cell_w = 2 * side + gap + text_w
    sheet = Image.new("RGB", (2 * cell_w + 3 * gap, head + half * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    kinds = list(dict.fromkeys(kind for _, kind in picks))
    for b, kind in enumerate(kinds):
        draw.text((gap + b * (cell_w + gap), 2), f"{kind}: sample | nearest training image", fill="black", font=font)
    for kind_index, kind in enumerate(kinds):
        block = [(k, p) for (k, kd), p in zip(picks, psnrs) if kd == kind]
        x0 = gap + kind_index * (cell_w + gap)
        for r, (k, p) in enumerate(block[:half]):
            y = head + r * (side + gap)
            sheet.paste(_tile(samples[k]), (x0, y))
            sheet.paste(_tile(train.images[int(index[k])]), (x0 + side + 2, y))
            style = f" ({train.styles[int(index[k])]})" if train.styles else ""
            text = "copy" if p >= COPY_PSNR else f"{p:.1f} dB"
            draw.text((x0 + 2 * side + gap + 4, y + side // 2 - 12), text, fill="black", font=font)
            draw.text((x0 + 2 * side + gap + 4, y + side // 2), f"{classes[int(labels[k])][:10]}{style}"[:24],
                      fill=(90, 90, 90), font=font)
    return sheet


def figure_paths(folder: Path, backbone: str) -> dict[str, Path]:
    return {"grid": folder / f"quality_{backbone}_grid.png", "nearest": folder / f"quality_{backbone}_nearest.png"}


def write_figures(result: dict, parts: dict, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = figure_paths(folder, result["backbone"])
    class_grid(parts["samples"], parts["labels"], parts["classes"]).save(paths["grid"], optimize=True)
    nearest_sheet(parts["samples"], parts["labels"], parts["classes"], parts["train"], parts["index"], parts["picks"],
                  [row["psnr"] for row in result["nearest_rows"]]).save(paths["nearest"], optimize=True)
    return {name: str(path) for name, path in paths.items()}


# -- markdown ---------------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def render_quality_markdown(result: dict, readme: str | None = None) -> str:
    """The README block: what was measured, the bar's verdict with its figures, per class, the figures."""
    ref = result["reference"]
    lines = [
        f"Generated by `{result.get('command', 'python -m nitrogen_core bench quality')}`: backbone "
        f"**{result['backbone']}**, {result['images']} full-compute samples ({result['steps']} DDIM steps, cfg "
        f"{result['cfg']:g}), labels in proportion to the training data, noise from seeds "
        f"{result['seed_range'][0]}..{result['seed_range'][1]} (disjoint from `bench` and `bench tau`). "
        f"FID/KID reference: {ref['note']}. Near-copy: PSNR to the nearest training image above "
        f"{result['near_copy_db']:g} dB (uint8, whole image).",
        "",
        f"**Quality bar (near-copy ≤ {NEAR_COPY_BAR:.0%}, FID ≤ {FID_FLOOR_BAR:g}× floor, on ≥ {BAR_IMAGES} samples "
        f"against a held-out split): {'met' if result['passed'] else 'not met'}.**",
        "",
    ]
    lines += [f"- {c['label']}: {'yes' if c['met'] else '**no**'} ({c['figures']})" for c in result["checks"]]
    kid = result["fid"]
    lines += ["", f"KID {kid['kid']:.4f} [{kid['kid_lo']:.4f}, {kid['kid_hi']:.4f}], floor "
              f"{result['floor']['kid']:.4f} [{result['floor']['kid_lo']:.4f}, {result['floor']['kid_hi']:.4f}]; "
              f"the judge names the intended class for {result['judge_agrees']:.1%} of the samples.", ""]
    held = result.get("near_copy_heldout") is not None
    with_styles = any("nearest_styles" in c for c in result["per_class"])
    table = []
    for c in result["per_class"]:
        row = [c["class"], str(c["samples"]), str(c["train_images"]), _pct(c["near_copy"])]
        row += [_pct(c["near_copy_heldout"])] if held else []
        row += [_pct(c["judge_agrees"])]
        if with_styles:
            styles = c.get("nearest_styles") or {}
            row.append(", ".join(f"{s} {n}" for s, n in sorted(styles.items(), key=lambda kv: (-kv[1], kv[0]))) or "–")
        table.append(row)
    header = ["class", "samples", "training images", "near-copy"] + (["near-copy (held-out)"] if held else [])
    header += ["judge agrees"] + (["styles of the nearest training images"] if with_styles else [])
    lines.append(_markdown_table(header, table))
    figures = result.get("figures")
    if figures:
        base = Path(readme).parent if readme else Path(".")
        rel = {k: Path(os.path.relpath(v, base)).as_posix() for k, v in figures.items()}
        lines += ["", f"Samples, one row per class (the first {GRID_COLUMNS} of each, not selected):", "",
                  f"![samples per class]({rel['grid']})", "",
                  f"Samples beside their nearest training image: the {NEAREST_TOP} closest to a training image, "
                  f"then {NEAREST_RANDOM} drawn at random (seed {FIGURE_SEED}):", "",
                  f"![nearest training images]({rel['nearest']})"]
    return "\n".join(lines) + "\n"


# -- command line ------------------------------------------------------------------------------------------

def add_quality_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=str(BUNDLED_CHECKPOINT), help="checkpoint, either backbone (default: bundled)")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="the training data: DIR/train + DIR/heldout (the bar's layout), or a plain ImageFolder "
                        f"(then half/half; default {DEFAULT_DATA})")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                   help=f"full-compute samples (default {DEFAULT_IMAGES}; the bar needs >= {BAR_IMAGES})")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale (default: the checkpoint's recommended one)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's recommended ones)")
    p.add_argument("--judge", default=str(DEFAULT_JUDGE), help="judge classifier for FID/KID (bench judge)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--figures", default=None,
                   help="write quality_<backbone>_grid.png and quality_<backbone>_nearest.png into this folder")
    p.add_argument("--readme", default=None,
                   help=f"replace the text between the {QUALITY_MARKERS[0]} and {QUALITY_MARKERS[1]} lines "
                        "(see --block) of this markdown file")
    p.add_argument("--block", default="quality",
                   help="name of the README's generated block (default quality; e.g. quality-dit)")


def quality_command(args) -> str:
    given = [("--ckpt", None if args.ckpt == str(BUNDLED_CHECKPOINT) else args.ckpt),
             ("--data", None if args.data == DEFAULT_DATA else args.data),
             ("--images", None if args.images == DEFAULT_IMAGES else args.images), ("--cfg", args.cfg), ("--steps", args.steps),
             ("--judge", None if args.judge == str(DEFAULT_JUDGE) else args.judge),
             ("--json", args.json), ("--figures", args.figures), ("--readme", args.readme),
             ("--block", None if args.block == "quality" else args.block)]
    return command_line(["python -m nitrogen_core bench quality"], given)


def cmd_quality(args) -> int:
    # Every flag is checked before sampling (about 5 minutes at 1000 images).
    if isinstance(args.images, bool) or not MIN_IMAGES <= args.images <= MAX_IMAGES:
        raise NitroGenInputError(f"--images {args.images} is out of range; allowed {MIN_IMAGES}..{MAX_IMAGES} "
                                 f"(the bar needs >= {BAR_IMAGES})")
    if args.json is not None and Path(args.json).is_dir():
        raise NitroGenInputError(f"--json {args.json!r} is a directory; give a file path")
    if args.figures is not None and Path(args.figures).exists() and not Path(args.figures).is_dir():
        raise NitroGenInputError(f"--figures {args.figures!r} exists and is not a folder; give a folder for the PNGs")
    SamplerSettings(mode="full", **{k: v for k, v in (("cfg", args.cfg), ("steps", args.steps))
                                    if v is not None}).validate()     # one line naming the value
    markers = block_markers(args.block)
    if args.readme:
        check_readme(Path(args.readme), markers)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    result, parts = measure(args.ckpt, args.data, args.judge, args.images, log=log, cfg=args.cfg, steps=args.steps)
    result["command"] = quality_command(args)
    if args.figures:
        result["figures"] = write_figures(result, parts, Path(args.figures))
    markdown = render_quality_markdown(result, args.readme)
    print(markdown)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.readme:
        write_readme(Path(args.readme), markdown, markers)
    return 0
