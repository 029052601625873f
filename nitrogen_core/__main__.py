"""Command line: `python -m nitrogen_core {info,init,generate,data,train} ...`.

Every flag is checked before any work starts. Bad input ends with one line `error: <cause>` on
stderr and exit code 2, never a traceback (DESIGN §6). Sampler ranges (steps, cfg, threshold,
budget, mode) are checked by SamplerSettings.validate, not here, so the CLI and the ComfyUI
nodes share one set of rules.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import NitroGenInputError

PROG = "python -m nitrogen_core"
MAX_BATCH = 64
MAX_SEED = 2**63 - 1
DEFAULT_OUT = "outputs/nitrogen.png"


# -- argparse types: parse only; ranges are checked later with a NitroGenInputError ----------

def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# -- shared checks --------------------------------------------------------------------------

def _check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise NitroGenInputError(f"--seed {seed} is out of range; use an integer in 0..{MAX_SEED}")
    return seed


def _check_png_path(flag: str, value: str) -> Path:
    path = Path(value)
    if path.suffix.lower() != ".png":
        raise NitroGenInputError(f"{flag} {value!r} must be a .png file path")
    if path.is_dir():
        raise NitroGenInputError(f"{flag} {value!r} is a directory; give a .png file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NitroGenInputError(f"{flag} {value!r}: {str(parent)!r} exists and is not a directory")
            break
    return path


def _save_png(flag: str, path: Path, image) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
    except OSError as exc:
        raise NitroGenInputError(f"{flag} {str(path)!r}: cannot write: {exc.strerror or exc}") from None


def _git_commit() -> str | None:
    """The repo's HEAD commit for train metadata, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _grid(images):
    """float [B,3,H,W] in [-1,1] -> one PIL image: a near-square grid, native resolution, 2 px gaps."""
    import numpy as np
    import torch
    from PIL import Image

    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).numpy()                                     # (B, H, W, 3)
    b, h, w, _ = arr.shape
    if b == 1:
        return Image.fromarray(arr[0])
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    gap = 2
    canvas = np.zeros((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = arr[i]
    return Image.fromarray(canvas)


def _hstack(images):
    from PIL import Image

    out = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width
    return out


# -- info -----------------------------------------------------------------------------------

def cmd_info(args) -> int:
    from .checkpoint import FORMAT_VERSION, load_checkpoint

    ck = load_checkpoint(args.ckpt)  # full validation, so `info` also tells you whether it loads
    data = {
        "path": ck.path,
        "kind": ck.kind,
        "format": FORMAT_VERSION,
        "config": json.loads(ck.config.to_json()),
        "labels": list(ck.labels),
        "width_schedule": list(ck.width_schedule),
        "train": ck.train,
        "sampler": ck.sampler,
        "n_params": ck.n_params,
        "size_bytes": ck.size_bytes,
        "size_mb": round(ck.size_bytes / 1e6, 3),
    }
    if args.json:
        return _emit_json(args, data)
    print(f"checkpoint:     {ck.path}")
    print(f"kind:           {ck.kind}")
    print(f"format:         {FORMAT_VERSION}")
    print(f"parameters:     {ck.n_params:,}")
    print(f"file size:      {ck.size_bytes / 1e6:.2f} MB")
    print(f"labels ({len(ck.labels)}):     " + ", ".join(f"{i}={name}" for i, name in enumerate(ck.labels)))
    print(f"width schedule: {list(ck.width_schedule)}")
    print(f"sampler:        {json.dumps(ck.sampler, sort_keys=True) if ck.sampler else '(defaults)'}")
    print(f"train:          {json.dumps(ck.train, sort_keys=True)}")
    print("config:")
    for key, value in ck.config.to_dict().items():
        print(f"  {key:16s}{value}")
    return 0


# -- init -----------------------------------------------------------------------------------

def cmd_init(args) -> int:
    import torch

    from .checkpoint import check_labels, save_checkpoint
    from .config import PRESETS, preset
    from .model import NitroGenModel

    if args.preset not in PRESETS:
        raise NitroGenInputError(f"--preset {args.preset!r} is unknown; choose one of {sorted(PRESETS)}")
    _check_seed(args.seed)
    out = Path(args.out)
    if out.suffix.lower() != ".safetensors":
        raise NitroGenInputError(f"--out {args.out!r} must end in .safetensors")
    if out.is_dir():
        raise NitroGenInputError(f"--out {args.out!r} is a directory; give a .safetensors file path")
    if out.exists() and not args.force:
        raise NitroGenInputError(f"--out {args.out!r} already exists; pass --force to overwrite it")

    if args.labels is None:
        config = preset(args.preset)
        labels = [f"class{i}" for i in range(config.num_classes)]
    else:
        labels = [s.strip() for s in args.labels.split(",")]
        try:
            check_labels(labels, len(labels))
        except NitroGenInputError as exc:
            raise NitroGenInputError(f"--labels {args.labels!r}: {exc}") from None
        config = preset(args.preset, num_classes=len(labels))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = NitroGenModel(config)
    train = {"data": None, "steps": 0, "seed": args.seed, "commit": _git_commit(),
             "preset": args.preset, "note": "untrained: written by `init`"}
    save_checkpoint(out, model, kind=args.kind, labels=labels, train=train)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({args.kind}, preset {args.preset}, {len(labels)} classes, "
          f"{n_params:,} params, {out.stat().st_size / 1e6:.2f} MB)")
    return 0


# -- generate -------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    from .checkpoint import BUNDLED_CHECKPOINT, load_checkpoint, resolve_device, resolve_label

    # Cheap flag checks first, before loading anything.
    if not 1 <= args.batch <= MAX_BATCH:
        raise NitroGenInputError(f"--batch {args.batch} is out of range; use 1..{MAX_BATCH}")
    _check_seed(args.seed)
    out = _check_png_path("--out", args.out)
    heatmap = None if args.heatmap is None else _check_png_path("--heatmap", args.heatmap)
    if heatmap is not None and heatmap.resolve() == out.resolve():
        raise NitroGenInputError(f"--heatmap {args.heatmap!r} is the same file as --out; give a different path")
    device = resolve_device(args.device)
    if args.ckpt is None:
        if not BUNDLED_CHECKPOINT.is_file():
            raise NitroGenInputError(
                f"no --ckpt given and the bundled checkpoint {BUNDLED_CHECKPOINT} does not exist; pass --ckpt PATH "
                f"or create one with `{PROG} init --preset emoji32 --out PATH`")
        ckpt_path = BUNDLED_CHECKPOINT
    else:
        ckpt_path = Path(args.ckpt)

    ck = load_checkpoint(ckpt_path, device=device)
    label_index = resolve_label(ck.labels, args.label if args.label is not None else 0)

    import torch

    from .compute import render_heatmap
    from .sampler import SamplerSettings, make_noise, sample

    # Checkpoint's recommended settings, then the flags the user actually gave.
    overrides = {k: getattr(args, k) for k in ("steps", "cfg", "threshold", "budget", "mode")
                 if getattr(args, k) is not None}
    fields = {f.name for f in dataclasses.fields(SamplerSettings)}
    settings = SamplerSettings(**{**{k: v for k, v in ck.sampler.items() if k in fields}, **overrides})
    settings.validate()

    noise = make_noise(ck.config, args.batch, args.seed).to(device)          # (B, 3, H, W)
    labels = torch.full((args.batch,), label_index, dtype=torch.long, device=device)

    from tqdm import tqdm

    with tqdm(total=settings.steps, desc="sampling", unit="step", file=sys.stderr,
              disable=args.quiet or None, leave=False) as bar:
        def on_step(step_index, total_steps, preview):
            if bar.total != total_steps:
                bar.total = total_steps
            bar.update(max(0, min(step_index + 1, total_steps) - bar.n))

        start = time.perf_counter()
        result = sample(ck.model, noise, labels, settings, width_schedule=ck.width_schedule, callback=on_step)
        seconds = time.perf_counter() - start

    images = result.images
    record = result.record
    _save_png("--out", out, _grid(images))
    if heatmap is not None:
        overlay = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)  # (B, H, W, 3)
        _save_png("--heatmap", heatmap, _hstack(render_heatmap(record, mode="share", image=overlay)))

    macs_full, macs_used = int(record.macs_full), int(record.macs_used)
    saved = 1.0 - macs_used / macs_full if macs_full else 0.0
    summary = {
        "ckpt": str(ckpt_path),
        "out": os.path.abspath(out),
        "heatmap": None if heatmap is None else os.path.abspath(heatmap),
        "label": ck.labels[label_index],
        "label_index": label_index,
        "seed": args.seed,
        "batch": args.batch,
        "device": str(device),
        "mode": settings.mode,
        "steps": settings.steps,
        "cfg": settings.cfg,
        "threshold": settings.threshold,
        "budget": settings.budget,
        "macs_full": macs_full,
        "macs_used": macs_used,
        "saved_fraction": saved,
        "mac_composition": record.mac_composition(),
        "seconds": seconds,
    }
    if args.json:
        return _emit_json(args, summary)
    extra = f", heatmap {heatmap}" if heatmap is not None else ""
    print(f"wrote {out}{extra}: {args.batch} x {ck.labels[label_index]!r}, {settings.mode}, {settings.steps} steps, "
          f"{100 * saved:.1f}% of MACs saved ({macs_used / 1e6:.1f}M of {macs_full / 1e6:.1f}M per image), "
          f"{seconds:.2f} s")
    return 0


def _emit_json(args, obj) -> int:
    # While --json runs, stdout is redirected to stderr (see main); the one object goes to the real stdout.
    args.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    args.stdout.flush()
    return 0


# -- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="NitroGen: adaptive-compute class-conditional diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,init,generate,data,train,bench}")

    p = sub.add_parser("info", help="show a checkpoint's metadata (validates the whole file)")
    p.add_argument("ckpt", help="path to a .safetensors checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write an untrained checkpoint from a preset")
    p.add_argument("--preset", required=True, help="config preset name, e.g. tiny or emoji32")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--labels", default=None,
                   help="comma-separated class names; sets num_classes (default: class0..classN-1 from the preset)")
    p.add_argument("--seed", type=_int, default=0, help="weight-init seed (default 0)")
    p.add_argument("--kind", choices=("student", "teacher"), default="student", help="checkpoint kind (default student)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("generate", help="sample images (+ compute heatmap and stats)")
    p.add_argument("--ckpt", default=None, help="checkpoint path (default: the bundled checkpoints/nitrogen-emoji32.safetensors)")
    p.add_argument("--label", default=None, help="class name (case-insensitive) or index (default 0)")
    p.add_argument("--seed", type=_int, default=0, help="noise seed (default 0)")
    p.add_argument("--batch", type=_int, default=1, help=f"images to generate, 1..{MAX_BATCH} (default 1)")
    p.add_argument("--steps", type=_int, default=None, help="sampling steps (default: checkpoint's recommendation)")
    p.add_argument("--cfg", type=_finite_float, default=None, help="classifier-free guidance scale")
    p.add_argument("--threshold", type=_finite_float, default=None,
                   help="quality threshold tau: a patch whose recomputation is predicted to change the final image "
                        "by less than this (pixels in [-1, 1]) is skipped (0 = full compute)")
    p.add_argument("--budget", type=_finite_float, default=None,
                   help="max MACs per image as a fraction of full compute (default 1.0)")
    p.add_argument("--mode", default=None, help="sampler mode: full, adaptive or cache (step caching, a baseline) (default adaptive)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output PNG grid (default {DEFAULT_OUT})")
    p.add_argument("--heatmap", default=None, help="also write a compute-share heatmap PNG here")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object of stats on stdout")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="evidence benchmark: adaptive vs full, fewer steps, step caching, slim "
                                     "(subcommands: judge, judge-check, kernels, bound, tau, quality)")
    from .bench.evaluate import add_arguments, cmd_bench
    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    bench_sub = p.add_subparsers(dest="bench_command", metavar="{judge,judge-check,kernels,bound,tau,quality}")
    pj = bench_sub.add_parser("judge", help="train the judge classifier behind the domain FID")
    from .bench.judge import add_judge_arguments, add_judge_check_arguments, cmd_judge
    add_judge_arguments(pj)
    pj.set_defaults(func=cmd_judge)
    add_judge_check_arguments(bench_sub.add_parser(
        "judge-check", help="does the judge's FID see blur, noise and hue shifts? (calibration table)"))
    pb = bench_sub.add_parser("bound", help="the adaptive sampler against an oracle gate and an exact executor: "
                                            "where its loss to step caching comes from")
    from .bench.bound import add_bound_arguments, cmd_bound
    add_bound_arguments(pb)
    pb.set_defaults(func=cmd_bound)
    pt = bench_sub.add_parser("tau", help="choose the default threshold by the tail rule on >= 512 images")
    from .bench.tau import add_tau_arguments, cmd_tau
    add_tau_arguments(pt)
    pt.set_defaults(func=cmd_tau)
    pq = bench_sub.add_parser("quality", help="the quality bar: near-copy rate and domain FID against held-out "
                                              "images and the floor, on >= 1000 full-compute samples, with figures")
    from .bench.quality import add_quality_arguments, cmd_quality
    add_quality_arguments(pq)
    pq.set_defaults(func=cmd_quality)
    # Listed for --help; main() hands `bench kernels ...` to bench.sparse_speed with its own flags.
    bench_sub.add_parser("kernels", help="sparse vs dense forward speed of either backbone (bench.sparse_speed; its own --help)")

    from .train.cli import add_train_parser
    from .train.data import add_data_parser
    add_data_parser(sub)
    add_train_parser(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "kernels"]:
        from .bench import sparse_speed
        sparse_speed.main(argv[2:])
        return 0
    args = build_parser().parse_args(argv)
    args.stdout = sys.stdout
    # With --json, stdout carries exactly one JSON object: anything else printed meanwhile goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) is True else contextlib.nullcontext()
    try:
        with redirect:
            return args.func(args)
    except NitroGenInputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
