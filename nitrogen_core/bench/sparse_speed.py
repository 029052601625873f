"""Sparse vs dense forward on CPU: wall clock and MACs at several active fractions.

    python -m nitrogen_core bench kernels [--preset emoji32] [--batch 16] [--repeats 7] [--width 1.0]
    python -m nitrogen_core bench kernels --preset emoji32-dit      # the transformer's table
    python -m nitrogen_core bench kernels --train-probe             # DiT sizes: training img/s

Each repeat times every mode once, in one process, interleaved, so drift hits all modes alike;
we report the median per mode as a ratio to dense. Active blocks (units) are drawn uniformly per
image. Also reports the approximation error of a sparse step against the true dense forward of
the same input (see nitrogen_core/sparse.py and token_sparse.py for what is approximated).

The transformer's table (token-sparse execution, token_sparse.py) has the target of issue 13:
time(a) <= 1.15 * a * dense for every active fraction a >= 0.1.
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
DIT_TARGET = 1.15          # issue 13: time(a) <= 1.15 * a * dense


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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--train-probe", action="store_true",
                    help="instead: training throughput (forward+backward img/s) of candidate DiT sizes and the U-Net")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.train_probe:
        return train_probe(args)
    if preset(args.preset).backbone == "dit":
        return dit_table(args)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = preset(args.preset)
    if args.block_size is not None:
        cfg = preset(args.preset, block_size=args.block_size, patch_size=min(cfg.patch_size, args.block_size))
    model = _perturbed_model(cfg)
    unet, B, nb = model.unet, args.batch, cfg.image_size // cfg.block_size
    x1, x2, labels, t1, t2 = _trajectory_inputs(cfg, B, gen)       # two consecutive points of one trajectory

    with torch.no_grad():
        out1, cache, _ = dense_forward(unet, x1, t1, labels, args.width)
        truth = unet(x2, t2, labels, args.width)
    masks = {a: random_blocks(B, nb, a, gen) for a in FRACTIONS}
    caches = {a: cache.clone() for a in FRACTIONS}
    costs = step_costs(unet, args.width)

    median = _median_times({"dense": lambda: unet(x2, t2, labels, args.width),
                            **{f"sparse@{a}": (lambda a=a: sparse_forward(unet, x2, t2, labels, caches[a], masks[a]))
                               for a in FRACTIONS}}, args.repeats)

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


def _perturbed_model(cfg) -> NitroGenModel:
    """Untrained nets output zeros (zero-init); perturb every weight so outputs are non-trivial."""
    model = NitroGenModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _median_times(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each named call over `repeats` interleaved rounds (a first warm-up round
    is discarded), all in one process so the modes compare as ratios."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(repeats + 1):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v[1:]) for name, v in times.items()}


def _trajectory_inputs(cfg, B: int, gen: torch.Generator):
    """Two consecutive points x1 (t=600), x2 (t=550) of one trajectory, labels, timesteps."""
    sched = Schedule(cfg.train_timesteps)
    x0 = torch.rand(B, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    (a1, s1), (a2, s2) = sched.alpha_sigma(600), sched.alpha_sigma(550)
    labels = torch.randint(0, cfg.num_classes, (B,), generator=gen)
    return a1 * x0 + s1 * eps, a2 * x0 + s2 * eps, labels, torch.full((B,), 600.0), torch.full((B,), 550.0)


def dit_table(args) -> dict:
    """Token-sparse step vs dense forward of the transformer, with the target time(a) <= 1.15 a dense."""
    from ..token_sparse import dense_forward as dit_dense, sparse_forward as dit_sparse, step_costs as dit_costs
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = preset(args.preset)
    model = _perturbed_model(cfg)
    dit, B, nb = model.dit, args.batch, cfg.image_size // cfg.block_size
    x1, x2, labels, t1, t2 = _trajectory_inputs(cfg, B, gen)
    with torch.no_grad():
        out1, cache, _ = dit_dense(dit, x1, t1, labels, args.width)
        truth = dit(x2, t2, labels, args.width)
    masks = {a: random_blocks(B, nb, a, gen) for a in FRACTIONS}
    one_unit = random_blocks(B, nb, 1 / (nb * nb), gen)       # the floor: one unit per image
    caches = {a: cache.clone() for a in FRACTIONS}
    costs = dit_costs(dit, args.width)

    median = _median_times({"dense": lambda: dit(x2, t2, labels, args.width),
                            "dense+record": lambda: dit_dense(dit, x2, t2, labels, args.width),
                            "one unit": lambda: dit_sparse(dit, x2, t2, labels, caches[1.0], one_unit),
                            **{f"sparse@{a}": (lambda a=a: dit_sparse(dit, x2, t2, labels, caches[a], masks[a]))
                               for a in FRACTIONS}}, args.repeats)

    rows = []
    for a in FRACTIONS:
        out, macs = dit_sparse(dit, x2, t2, labels, cache.clone(), masks[a])
        pix = masks[a].repeat_interleave(cfg.block_size, 1).repeat_interleave(cfg.block_size, 2)[:, None]
        pix = pix.expand_as(out)
        ratio = median[f"sparse@{a}"] / median["dense"]
        rows.append({"active": a, "time_ratio": ratio, "target": DIT_TARGET * a, "meets_target": ratio <= DIT_TARGET * a,
                     "mac_ratio": macs.float().mean().item() / costs.dense,
                     "rms_err_sparse": (out - truth)[pix].pow(2).mean().sqrt().item(),
                     "rms_err_reuse": (out1 - truth)[pix].pow(2).mean().sqrt().item()})
    n_params = sum(p.numel() for p in dit.parameters())
    result = {"preset": args.preset, "backbone": "dit", "token_size": cfg.token_size, "block_size": cfg.block_size,
              "batch": B, "width": args.width, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "params": n_params, "macs_dense": costs.dense, "dense_ms": median["dense"] * 1e3,
              "dense_record_ms": median["dense+record"] * 1e3, "one_unit_ratio": median["one unit"] / median["dense"],
              "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset} (DiT, {n_params / 1e6:.2f} M params, {costs.dense / 1e6:.0f} M MACs/forward) tokens "
              f"{cfg.token_size} px, units {cfg.block_size} px, batch {B}, width {args.width}: dense {result['dense_ms']:.1f} ms, "
              f"dense + cache {result['dense_record_ms']:.1f} ms (median of {args.repeats}, {result['threads']} threads)")
        print("active  time/dense  target 1.15a  meets  MACs/dense  rms err sparse  rms err reuse-cache")
        for r in rows:
            print(f"{r['active']:6.2f}  {r['time_ratio']:10.3f}  {r['target']:12.3f}  {'yes' if r['meets_target'] else 'NO':>5}  "
                  f"{r['mac_ratio']:10.3f}  {r['rms_err_sparse']:14.4f}  {r['rms_err_reuse']:19.4f}")
        print(f"floor: one unit per image takes {result['one_unit_ratio']:.3f} of dense time "
              f"({1 / (nb * nb):.3f} of its tokens): weights and every cached key/value are read whatever is active")
    return result


PROBE_SIZES = {   # name: DiT overrides of emoji32-dit (token_size, dit_dim, dit_mlp_ratio)
    "dit t4 d192 mlp3": dict(token_size=4, dit_dim=192, dit_mlp_ratio=3),
    "dit t4 d192 mlp4": dict(token_size=4, dit_dim=192, dit_mlp_ratio=4),
    "dit t2 d192 mlp3": dict(token_size=2, dit_dim=192, dit_mlp_ratio=3, block_size=4, patch_size=4),
    "dit t2 d128 mlp3": dict(token_size=2, dit_dim=128, dit_mlp_ratio=3, block_size=4, patch_size=4),
}


def train_probe(args) -> dict:
    """Forward + backward img/s at batch 32 (default --batch 16 is doubled, as a CFG model batch is),
    interleaved rounds, median; the U-Net preset emoji32 as the reference."""
    B = 2 * args.batch
    gen = torch.Generator().manual_seed(0)
    nets = {}
    for name, kw in PROBE_SIZES.items():
        torch.manual_seed(0)
        nets[name] = NitroGenModel(preset("emoji32-dit", **kw)).dit
    torch.manual_seed(0)
    nets["unet emoji32"] = NitroGenModel(preset("emoji32")).unet
    x = torch.randn(B, 3, 32, 32, generator=gen)
    t = torch.rand(B, generator=gen) * 999
    labels = torch.randint(0, 10, (B,), generator=gen)
    times: dict[str, list[float]] = {k: [] for k in nets}
    for _ in range(args.repeats + 1):                    # first round is warm-up, discarded
        for name, net in nets.items():
            start = time.perf_counter()
            net(x, t, labels, 1.0).square().mean().backward()
            times[name].append(time.perf_counter() - start)
            net.zero_grad(set_to_none=True)
    rows = []
    for name, net in nets.items():
        cfg = net.cfg
        macs = net.macs(1.0, (cfg.image_size // cfg.token_size) ** 2) if cfg.backbone == "dit" else step_costs(net, 1.0).dense
        rows.append({"net": name, "params": sum(p.numel() for p in net.parameters()), "macs": macs,
                     "img_per_s": B / statistics.median(times[name][1:])})
    result = {"batch": B, "repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"training throughput, forward+backward, batch {B}, median of {args.repeats}, {result['threads']} threads")
        print("net                 params (M)  MACs/forward (M)  img/s")
        for r in rows:
            print(f"{r['net']:<18}  {r['params'] / 1e6:10.2f}  {r['macs'] / 1e6:16.0f}  {r['img_per_s']:5.1f}")
    return result


if __name__ == "__main__":
    main()
