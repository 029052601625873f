"""Adaptive vs full sampling on one checkpoint: MACs and CPU time per image for a few thresholds.

    python -m nitrogen_core.bench.adaptive_speed --ckpt PATH [--taus 0,0.3,0.6] [--steps 20] [--batch 8] [--repeats 3]

Every mode runs in one process, interleaved per repeat; times are medians. MACs come from
the compute record. With an untrained gate these numbers say how the machinery performs, not
how good the gate's choices are.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ..checkpoint import load_checkpoint
from ..sampler import SamplerSettings, make_noise, sample
from .metrics import psnr


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--taus", default="0,0.3,0.6,1.0")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    ck = load_checkpoint(args.ckpt)
    noise = make_noise(ck.config, args.batch, seed=0)
    labels = torch.arange(args.batch) % ck.config.num_classes
    # The sampler runs full compute (width 1.0) for mode "full" and threshold 0; adaptive rows
    # with a threshold above 0 use the checkpoint's width schedule as well as the gate.
    modes = {"full": SamplerSettings(steps=args.steps, cfg=args.cfg, mode="full")}
    for tau in (float(x) for x in args.taus.split(",")):
        modes[f"adaptive tau={tau:g}"] = SamplerSettings(steps=args.steps, cfg=args.cfg, threshold=tau,
                                                          **ck.recommended_guards())
    times = {name: [] for name in modes}
    results = {}
    for rep in range(args.repeats + 1):                  # round 0 warms up and is discarded
        for name, settings in modes.items():
            start = time.perf_counter()
            results[name] = sample(ck.model, noise, labels, settings, width_schedule=ck.width_schedule)
            if rep:
                times[name].append(time.perf_counter() - start)
    full = results["full"]
    t_full = statistics.median(times["full"])
    rows = []
    for name, res in results.items():
        rec = res.record
        rows.append({"mode": name, "mac_ratio": rec.macs_used / full.record.macs_full,
                     "psnr_to_full": float(psnr(res.images, full.images).mean()),
                     "time_ratio": statistics.median(times[name]) / t_full,
                     "seconds_per_image": statistics.median(times[name]) / args.batch,
                     "max_abs_diff_to_full": (res.images - full.images).abs().max().item()})
    out = {"ckpt": args.ckpt, "steps": args.steps, "batch": args.batch, "cfg": args.cfg, "rows": rows}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.ckpt}: {args.steps} steps, batch {args.batch}, cfg {args.cfg}, median of {args.repeats}")
        print(f"{'mode':22s} MACs/full  time/full  s/image  PSNR to full (dB)  max|img - full|")
        for r in rows:
            print(f"{r['mode']:22s} {r['mac_ratio']:9.3f}  {r['time_ratio']:9.3f}  {r['seconds_per_image']:7.3f}"
                  f"  {r['psnr_to_full']:17.1f}  {r['max_abs_diff_to_full']:.4f}")
    return out


if __name__ == "__main__":
    main()
