"""The README's figures, regenerated from a checkpoint (and optionally its training runs).

    python -m nitrogen_core.bench.figures --ckpt checkpoints/nitrogen-emoji32.safetensors \
        [--teacher-run RUN --student-run RUN2] --out docs/

Writes docs/samples_full.png and docs/samples_adaptive.png (one row per class, the same 8 seeds;
full = width 1.0 and every patch at every step; adaptive = the checkpoint's width schedule
and default threshold), docs/compute_map.png (where the adaptive sampler spent compute, first
seed of each class), docs/loss.png (training curves, if the runs are given) and
docs/figures.json (MACs, PSNR to full, per class). Without the runs, an existing loss.png and the
final losses in an existing figures.json are kept.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import load_checkpoint
from ..compute import render_heatmap
from ..sampler import SamplerSettings, make_noise, sample
from ..train.common import save_grid
from .metrics import psnr

COLUMNS = 8


def class_rows(ck, settings: SamplerSettings, width_schedule) -> tuple[torch.Tensor, list]:
    """(classes * COLUMNS, 3, H, W) images, one row per class on the same noise, and the records."""
    noise = make_noise(ck.config, COLUMNS, seed=2024)
    images, records = [], []
    for k in range(len(ck.labels)):
        res = sample(ck.model, noise, torch.full((COLUMNS,), k), settings, width_schedule=width_schedule)
        images.append(res.images)
        records.append(res.record)
    return torch.cat(images), records


def loss_plot(curves: dict[str, list[tuple[int, float]]], path: Path, size=(720, 360)) -> None:
    """Log-scale loss curves with Pillow (no plotting dependency)."""
    import math
    W, H = size
    left, right, top, bottom = 60, 150, 20, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    points = [p for c in curves.values() for p in c if p[1] > 0]
    x_max = max(p[0] for p in points)
    y_lo, y_hi = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
    y_hi = max(y_hi, y_lo + 1e-6)
    def xy(step, value):
        x = left + (W - left - right) * step / x_max
        y = top + (H - top - bottom) * (y_hi - math.log10(value)) / (y_hi - y_lo)
        return x, y
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for e in range(math.floor(y_lo), math.ceil(y_hi) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if y_lo <= math.log10(v) <= y_hi:
                _, y = xy(0, v)
                draw.line([left, y, W - right, y], fill=(225, 225, 225))
                draw.text((4, y - 6), f"{v:g}", fill="black", font=font)
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        step = int(x_max * frac)
        x, _ = xy(step, 10 ** y_lo)
        draw.text((x - 10, H - bottom + 6), str(step), fill="black", font=font)
    draw.text((left + (W - left - right) // 2 - 10, H - 16), "step", fill="black", font=font)
    palette = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    for i, (name, pts) in enumerate(curves.items()):
        pts = [p for p in pts if p[1] > 0]
        draw.line([xy(s, v) for s, v in pts], fill=palette[i % len(palette)], width=2)
        draw.line([W - right + 10, top + 10 + 16 * i, W - right + 30, top + 10 + 16 * i],
                  fill=palette[i % len(palette)], width=3)
        draw.text((W - right + 35, top + 4 + 16 * i), name, fill="black", font=font)
    img.save(path)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--teacher-run", default=None)
    ap.add_argument("--student-run", default=None)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(args.ckpt)
    steps, cfg_scale = ck.sampler.get("steps", 20), ck.sampler.get("cfg", 1.5)
    threshold = ck.sampler.get("threshold", SamplerSettings.threshold)

    full, full_recs = class_rows(ck, SamplerSettings(steps=steps, cfg=cfg_scale, mode="full"), ck.width_schedule)
    adaptive, ada_recs = class_rows(ck, SamplerSettings(steps=steps, cfg=cfg_scale, threshold=threshold,
                                                    **ck.recommended_guards()),
                                    ck.width_schedule)
    save_grid(full, out / "samples_full.png", COLUMNS)
    save_grid(adaptive, out / "samples_adaptive.png", COLUMNS)

    overlay = ((adaptive + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)          # (N, H, W, 3)
    maps = [render_heatmap(rec, mode="share", image=overlay[k * COLUMNS:(k + 1) * COLUMNS], size=128)[0]
            for k, rec in enumerate(ada_recs)]                                # first seed of each class
    sheet = Image.new("RGB", (sum(m.width for m in maps[:5]), maps[0].height * 2), "white")
    for k, m in enumerate(maps[:10]):
        sheet.paste(m, ((k % 5) * m.width, (k // 5) * m.height))
    sheet.save(out / "compute_map.png")

    per_class = []
    for k, name in enumerate(ck.labels):
        p = psnr(adaptive[k * COLUMNS:(k + 1) * COLUMNS], full[k * COLUMNS:(k + 1) * COLUMNS])
        per_class.append({"class": name, "psnr_mean": float(p.mean()), "psnr_min": float(p.min()),
                          "mac_ratio": ada_recs[k].macs_used / full_recs[k].macs_full})
    stats = {"ckpt": args.ckpt, "steps": steps, "cfg": cfg_scale, "threshold": threshold,
             "width_schedule": list(ck.width_schedule),
             "mac_ratio": sum(r["mac_ratio"] for r in per_class) / len(per_class),
             "psnr_mean": sum(r["psnr_mean"] for r in per_class) / len(per_class),
             "psnr_min": min(r["psnr_min"] for r in per_class), "per_class": per_class}

    if args.teacher_run or args.student_run:
        curves = {}
        if args.teacher_run:
            curves["teacher (v, min-SNR)"] = [(r["step"], r["loss"]) for r in read_log(Path(args.teacher_run))]
        if args.student_run:
            log = read_log(Path(args.student_run))
            for key in sorted({k for r in log for k in r if k.startswith("loss_w")}):
                curves[f"student {key[6:]} (distill)"] = [(r["step"], r[key]) for r in log if key in r]
        loss_plot(curves, out / "loss.png")
        stats["final_losses"] = {name: pts[-1][1] for name, pts in curves.items()}
    elif (out / "figures.json").exists():
        # No runs given (e.g. a new gate on a bundled checkpoint whose training runs are gone):
        # loss.png is left as it is, and so are the losses it shows.
        previous = json.loads((out / "figures.json").read_text())
        if "final_losses" in previous:
            stats["final_losses"] = previous["final_losses"]
    (out / "figures.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps({k: v for k, v in stats.items() if k != "per_class"}))
    return stats


if __name__ == "__main__":
    main()
