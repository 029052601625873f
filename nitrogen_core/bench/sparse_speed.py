"""Sparse vs dense U-Net forward on CPU: wall clock and MACs at several active fractions.

    python -m nitrogen_core.bench.sparse_speed [--preset emoji32] [--batch 16] [--repeats 7] [--width 1.0]

Each repeat times every mode once, in one process, interleaved, so drift hits all modes alike;
we report the median per mode as a ratio to dense. Active blocks are drawn uniformly per image.
Also reports the approximation error of a sparse step against the true dense forward of the
same input (see nitrogen_core/sparse.py for what is approximated).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ..config import preset
from ..diffusion import Schedule
from ..model import NitroGenModel
from ..sparse import dense_forward, sparse_forward, step_costs

FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.1)


def random_blocks(batch: int, nb: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    k = round(fraction * nb * nb)
    order = torch.rand(batch, nb * nb, generator=gen).argsort(1)
    mask = torch.zeros(batch, nb * nb, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(batch, nb, nb)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="emoji32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--block-size", type=int, default=None, help="override the preset's block_size (image px)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = preset(args.preset)
    if args.block_size is not None:
        cfg = preset(args.preset, block_size=args.block_size, patch_size=min(cfg.patch_size, args.block_size))
    model = NitroGenModel(cfg).eval()
    with torch.no_grad():   # untrained nets output zeros (zero-init); perturb so outputs are non-trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    unet, B, nb = model.unet, args.batch, cfg.image_size // cfg.block_size
    sched = Schedule(cfg.train_timesteps)
    t_now, t_next = 600, 550
    x0 = torch.rand(B, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    a1, s1 = sched.alpha_sigma(t_now)
    a2, s2 = sched.alpha_sigma(t_next)
    x1, x2 = a1 * x0 + s1 * eps, a2 * x0 + s2 * eps        # two consecutive points of one trajectory
    labels = torch.randint(0, cfg.num_classes, (B,), generator=gen)
    t1, t2 = torch.full((B,), float(t_now)), torch.full((B,), float(t_next))

    with torch.no_grad():
        out1, cache, _ = dense_forward(unet, x1, t1, labels, args.width)
        truth = unet(x2, t2, labels, args.width)
    masks = {a: random_blocks(B, nb, a, gen) for a in FRACTIONS}
    caches = {a: cache.clone() for a in FRACTIONS}
    costs = step_costs(unet, args.width)

    times: dict[str, list[float]] = {"dense": [], **{f"sparse@{a}": [] for a in FRACTIONS}}
    with torch.no_grad():
        for _ in range(args.repeats + 1):               # first round is warm-up, discarded
            start = time.perf_counter()
            unet(x2, t2, labels, args.width)
            times["dense"].append(time.perf_counter() - start)
            for a in FRACTIONS:
                start = time.perf_counter()
                sparse_forward(unet, x2, t2, labels, caches[a], masks[a])
                times[f"sparse@{a}"].append(time.perf_counter() - start)
    median = {k: statistics.median(v[1:]) for k, v in times.items()}

    rows = []
    for a in FRACTIONS:
        out, macs = sparse_forward(unet, x2, t2, labels, cache.clone(), masks[a])
        pix = masks[a].repeat_interleave(cfg.block_size, 1).repeat_interleave(cfg.block_size, 2)[:, None]
        pix = pix.expand_as(out)
        # Error of the sparse recompute vs the true dense output, relative to the error of reusing the cache.
        err_sparse = (out - truth)[pix].pow(2).mean().sqrt().item()
        err_reuse = (out1 - truth)[pix].pow(2).mean().sqrt().item()
        rows.append({"active": a, "time_ratio": median[f"sparse@{a}"] / median["dense"],
                     "mac_ratio": macs.float().mean().item() / costs.dense,
                     "rms_err_sparse": err_sparse, "rms_err_reuse": err_reuse})
    result = {"preset": args.preset, "block_size": cfg.block_size, "batch": B, "width": args.width, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "dense_ms": median["dense"] * 1e3, "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset} block {cfg.block_size} batch {B} width {args.width}: dense {result['dense_ms']:.1f} ms "
              f"(median of {args.repeats}, {result['threads']} threads)")
        print("active  time/dense  MACs/dense  rms err sparse  rms err reuse-cache")
        for r in rows:
            print(f"{r['active']:6.2f}  {r['time_ratio']:10.2f}  {r['mac_ratio']:10.2f}  "
                  f"{r['rms_err_sparse']:14.4f}  {r['rms_err_reuse']:19.4f}")
    return result


if __name__ == "__main__":
    main()
