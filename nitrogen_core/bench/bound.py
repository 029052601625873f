"""How good could per-unit skipping get? The adaptive sampler against its own upper bounds, on either backbone.

    python -m nitrogen_core bench bound [--ckpt PATH] [--seeds N] [--taus T,T,...] [--json PATH]
                                        [--readme PATH] [--block NAME] [--from-json PATH]

Four adaptive variants on the same seeds, the same rule (tau, warm-up, refresh, exits) and the
same MAC accounting (the trained gate's MACs per gated step), next to step caching:
- gate            the shipped sampler: the trained gate decides, the sparse executor recomputes;
- gate + exact    the same decisions, but every image with recomputed units gets the exact dense
                  eps instead of the sparse executor's stale-context approximation (an extra dense
                  forward that is *not* counted; the executor's cache and MACs are the shipped ones);
- oracle gate     the gate's prediction replaced by the true residual per patch,
                  ||eps_fresh - eps_skip|| at width 1.0 (another uncounted dense forward), eps_skip
                  being what a skip would use (the cached eps, or its forecast: sampler.EpsForecast);
- oracle + exact  both.
The last three are bounds, not methods: they tell whether a loss comes from the predictor, the
executor, or per-unit skipping itself. Quality is PSNR to full compute on the same seeds.

Both variants work through the backbone's seams only: the oracle calls `model.net` (the U-Net or
the DiT), and the exact executor wraps whatever `model.executor(record)` returns (sparse.UNetExecutor
or token_sparse.DiTExecutor), so they need nothing from either executor's internals.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import sampler as sampler_module
from ..checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
from ..diffusion import Schedule, split_prediction
from ..errors import NitroGenInputError
from ..model import NitroGenModel
from ..sampler import SamplerSettings, make_noise
from .evaluate import (BENCH_SEED, _markdown_table, block_markers, check_readme, command_line, display_path,
                       interpolate, read_saved_result, sample_in_chunks, write_readme)
from .metrics import psnr

DEFAULT_TAUS = (0.005, 0.01, 0.02, 0.04)
BOUND_MARKERS = block_markers("bound")
CACHE_TAUS = (0.003, 0.01, 0.03, 0.1)


class OracleGate(nn.Module):
    """Stands in for the trained gate: returns the true per-patch residual RMS of
    (eps_fresh - eps_skip), (B, Hp, Wp), the quantity the gate is trained to predict, computed
    with a dense forward of the guided eps. eps_skip is the eps a skip would use, as the sampler
    reports it through select_images (the cached eps if it does not). Its MACs are reported as the
    trained gate's, so the MAC accounting is the shipped sampler's."""

    def __init__(self, model: NitroGenModel, labels: torch.Tensor, cfg_scale: float):
        super().__init__()
        self.trained_gate_macs = model.gate.macs()
        self.net, self.config = model.net, model.config
        self.labels, self.cfg_scale = labels, cfg_scale
        self.rows: torch.Tensor | None = None
        self.skipped_eps: torch.Tensor | None = None
        self.schedule = Schedule(model.config.train_timesteps)

    def select_images(self, rows: torch.Tensor, skipped_eps: torch.Tensor | None = None) -> None:
        """Called by the sampler before each gate call: the batch rows (n,) it is about to see
        (images sitting the step out, or short of budget, are not gated), and the eps (n, C, H, W)
        those rows would use where skipped."""
        self.rows, self.skipped_eps = rows, skipped_eps

    def forward(self, x_t, t, eps_cached, eps_delta, age=None):
        B, cfg = x_t.shape[0], self.config
        labels = self.labels if self.rows is None else self.labels[self.rows]
        skipped_eps = eps_cached if self.skipped_eps is None else self.skipped_eps
        self.rows = self.skipped_eps = None
        if B != len(labels):
            raise RuntimeError(f"oracle gate called on {B} images, set up for {len(labels)}")
        guided = self.cfg_scale != 1.0
        labels = labels.to(x_t.device)
        model_labels = torch.cat([labels, torch.full_like(labels, cfg.num_classes)]) if guided else labels
        x_in, t_in = (torch.cat([x_t, x_t]), torch.cat([t, t])) if guided else (x_t, t)
        with torch.no_grad():
            out = self.net(x_in, t_in, model_labels, 1.0)                                # (B or 2B, C, H, W)
        alpha, sigma = self.schedule.alpha_sigma(int(t[0]))
        eps, _ = split_prediction(sampler_module._guide(out, self.cfg_scale), x_t.float(), alpha, sigma,
                                  cfg.prediction)                                   # (B, C, H, W)
        diff = (eps - skipped_eps.float()).square().mean(1, keepdim=True)           # (B, 1, H, W)
        return F.avg_pool2d(diff, cfg.patch_size)[:, 0].sqrt()                      # (B, Hp, Wp)

    def macs(self) -> int:
        return self.trained_gate_macs


class ExactExecutor:
    """Wraps a backbone's executor (the sampler's seam: costs(width), step(...), width, nbytes): every
    step runs the wrapped executor, so its cache, its decisions' bookkeeping and its MACs are the
    shipped ones, and then every sample that had units recomputed sparsely gets a dense forward's
    output instead (not counted). The sampler reads the output only where units were computed, so
    those units get their exact eps. Samples computed whole are dense already."""

    def __init__(self, inner, net: nn.Module):
        self.inner, self.net = inner, net

    def __getattr__(self, name: str):
        return getattr(self.inner, name)            # width, nbytes, cache, out: the wrapped executor's

    def costs(self, width: float):
        return self.inner.costs(width)

    def step(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, width: float,
             dense_rows: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, macs = self.inner.step(x, t, labels, width, dense_rows, blocks)
        sparse = (blocks & ~dense_rows[:, None, None]).flatten(1).any(1)              # (Bm,)
        rows = sparse.nonzero(as_tuple=True)[0]
        if len(rows):
            out = out.clone()                        # the wrapped executor keeps its own last output
            with torch.no_grad():                    # at the width the sparse rows ran at: the cache's
                out[rows] = self.net(x[rows], t[rows], labels[rows], self.inner.width).to(out.dtype)
        return out, macs


@contextlib.contextmanager
def variant(model: NitroGenModel, name: str, labels: torch.Tensor, cfg_scale: float):
    """Temporarily swap the gate of `model` for the oracle ("oracle ..." variants) and wrap the
    executors it hands the sampler in ExactExecutor ("... + exact" variants)."""
    if name not in VARIANTS:
        raise ValueError(f"variant {name!r} is not one of {VARIANTS}")
    trained = model.gate
    with contextlib.ExitStack() as stack:
        if name.startswith("oracle"):
            model.gate = OracleGate(model, labels, cfg_scale)
            stack.callback(setattr, model, "gate", trained)
        if name.endswith("+ exact"):
            shipped = model.executor
            stack.enter_context(mock.patch.object(
                model, "executor", lambda record, **kw: ExactExecutor(shipped(record, **kw), model.net)))
        yield


VARIANTS = ("gate", "gate + exact", "oracle gate", "oracle + exact")


def run_bound(ckpt_path: str, seeds: int, taus: tuple[float, ...], log=print) -> dict:
    ck = load_checkpoint(ckpt_path)
    model, cfg = ck.model, ck.config
    backbone = getattr(cfg, "backbone", "unet") or "unet"
    steps, cfg_scale = ck.sampler.get("steps", 20), ck.sampler.get("cfg", 1.5)
    labels = torch.arange(cfg.num_classes).repeat(seeds)                       # (n,) seeds per class
    noise = make_noise(cfg, len(labels), seed=BENCH_SEED)                      # (n, C, H, W)
    base = dict(steps=steps, cfg=cfg_scale)

    def sample_all(settings: SamplerSettings, schedule=(1.0,)) -> tuple[torch.Tensor, float, dict]:
        """Images (n, C, H, W), mean MACs per image and where they went (mac_composition, the mean
        over all n images); the oracle is told each chunk's labels."""
        def tell_oracle(lo: int, hi: int) -> None:
            if isinstance(model.gate, OracleGate):
                model.gate.labels = labels[lo:hi]
        composition: dict[str, float] = {}

        def add_composition(record) -> None:
            for kind, share in record.mac_composition().items():
                composition[kind] = composition.get(kind, 0.0) + share * record.batch / len(labels)
        images, macs, _ = sample_in_chunks(model, noise, labels, settings, schedule, before_chunk=tell_oracle,
                                           after_chunk=add_composition)
        return images, float(macs.mean()), composition

    full_images, full_macs, _ = sample_all(SamplerSettings(mode="full", **base))
    rows = []

    def add(name: str, tau: float, settings: SamplerSettings, schedule=(1.0,)) -> None:
        images, macs, composition = sample_all(settings, schedule)
        p = psnr(images, full_images).clamp(max=100)                          # identical images: 100 dB
        rows.append({"mode": name, "backbone": backbone, "threshold": tau, "mac_ratio": macs / full_macs,
                     "psnr_to_full": float(p.mean()), "psnr_to_full_p1": float(torch.quantile(p.double(), 0.01)),
                     "psnr_to_full_min": float(p.min()), "mac_composition": composition})
        log(f"  {name:15s} tau={tau:<7g} MACs/full {rows[-1]['mac_ratio']:.3f}  "
            f"PSNR {rows[-1]['psnr_to_full']:.1f} / worst {rows[-1]['psnr_to_full_min']:.1f} dB")

    guards = ck.recommended_guards()                                           # what its tau was calibrated with
    for name in VARIANTS:
        with variant(model, name, labels, cfg_scale):
            for tau in taus:
                add(name, tau, SamplerSettings(threshold=tau, **base, **guards), ck.width_schedule)
    for tau in CACHE_TAUS:
        add("cache", tau, SamplerSettings(mode="cache", threshold=tau, forecast=guards.get("forecast", 0.0), **base))
    return {"rows": rows, "backbone": backbone, "ckpt": display_path(str(ckpt_path)), "seeds": seeds,
            "images": len(labels), "steps": steps, "cfg": cfg_scale}


def format_bound(result: dict) -> str:
    lines = [f"{'variant':15s} {'tau':>7s} {'MACs/full':>9s} {'PSNR':>6s} {'worst':>6s}"]
    for r in result["rows"]:
        lines.append(f"{r['mode']:15s} {r['threshold']:7g} {r['mac_ratio']:9.3f} "
                     f"{r['psnr_to_full']:6.1f} {r['psnr_to_full_min']:6.1f}")
    return "\n".join(lines)


def render_bound_markdown(result: dict) -> str:
    """The rows as a markdown table, each next to step caching's PSNR interpolated at its MACs."""
    backbone = f"backbone **{result['backbone']}**, " if result.get("backbone") else ""
    head = (f"Generated by `{result.get('command', 'python -m nitrogen_core bench bound')}`: {backbone}"
            f"{result['images']} images ({result['seeds']} per class), {result['steps']} DDIM steps, "
            f"cfg {result['cfg']:g}; PSNR to full compute on the same seeds, mean / 1st percentile / worst image. "
            f"Oracle MACs are counted as the trained gate's. The MACs split into whole-image passes on the "
            f"sampler's scheduled dense steps (warm-up, refresh), whole-image passes an image chose on other "
            f"steps (it wanted more than dense_above of its units), and sparse passes with the gate calls: "
            f"only the last is per-unit compute.")
    rows = []
    for r in result["rows"]:
        if r["mode"] == "cache":
            continue
        cache = interpolate(result["rows"], "cache", "mac_ratio", r["mac_ratio"], "psnr_to_full")
        rows.append([r["mode"], f"{r['threshold']:g}", f"{r['mac_ratio']:.3f}", _composition(r),
                     f"{_tail(r)} dB",
                     "–" if cache is None else f"{cache:.1f} dB",
                     "–" if cache is None else f"{r['psnr_to_full'] - cache:+.1f} dB"])
    cache_rows = [f"τ {r['threshold']:g}: {r['mac_ratio']:.3f} MACs, {_tail(r)} dB"
                  for r in result["rows"] if r["mode"] == "cache"]
    table = _markdown_table(["variant", "τ", "MACs/full", "of which scheduled / chosen dense / sparse",
                             "PSNR to full (mean / p1 / worst)",
                             "cache at same MACs (mean)", "vs cache"], rows)
    return "\n\n".join([head, table, "Step caching's measured points: " + "; ".join(cache_rows) + "."])


def _composition(row: dict) -> str:
    """Where a row's MACs went, as fractions of full compute (rows from before it was recorded: –)."""
    comp = row.get("mac_composition")
    if not comp:
        return "–"
    return " / ".join(f"{comp[kind]:.3f}" for kind in ("scheduled", "chosen_dense", "sparse"))


def _tail(row: dict) -> str:
    """mean / 1st percentile / worst PSNR to full (rows from before the percentile: mean / worst)."""
    p1 = row.get("psnr_to_full_p1")
    return " / ".join(f"{v:.1f}" for v in (row["psnr_to_full"], p1, row["psnr_to_full_min"]) if v is not None)


def _taus(text: str) -> tuple[float, ...]:
    try:
        taus = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise NitroGenInputError(f"--taus {text!r} must be comma-separated numbers, e.g. 0.005,0.01") from None
    bad = [t for t in taus if not 0 < t <= 100]
    if bad:
        raise NitroGenInputError(f"--taus {text!r}: {bad[0]:g} is out of range; allowed (0, 100]")
    return taus


def add_bound_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=str(BUNDLED_CHECKPOINT),
                   help="checkpoint, either backbone (default: the bundled one)")
    p.add_argument("--seeds", type=int, default=2, help="images per class (default 2)")
    p.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS), help="adaptive thresholds")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--readme", default=None,
                   help=f"replace the text between the {BOUND_MARKERS[0]} and {BOUND_MARKERS[1]} lines of this file")
    p.add_argument("--block", default="bound",
                   help="name of the README's generated block: <!-- NAME:begin --> ... <!-- NAME:end --> "
                        "(default bound; e.g. bound-dit for a second backbone)")
    p.add_argument("--from-json", default=None,
                   help="no sampling: print and write --readme/--json from a result saved by --json "
                        "(the sampling flags are ignored)")


def cmd_bound(args) -> int:
    if not 1 <= args.seeds <= 1000:
        raise NitroGenInputError(f"--seeds {args.seeds} is out of range; allowed 1..1000")
    taus = _taus(args.taus)
    markers = block_markers(args.block)
    if args.readme:
        check_readme(Path(args.readme), markers)
    if args.from_json:
        result = load_bound_result(Path(args.from_json))
    else:
        log = lambda msg: print(msg, file=sys.stderr, flush=True)
        result = run_bound(args.ckpt, args.seeds, taus, log=log)
        result["command"] = bound_command(args)
    print(format_bound(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.readme:
        write_readme(Path(args.readme), render_bound_markdown(result), markers)
    return 0


BOUND_RESULT_KEYS = ("rows", "images", "seeds", "steps", "cfg", "command")
BOUND_ROW_KEYS = ("mode", "threshold", "mac_ratio", "psnr_to_full", "psnr_to_full_min")


def load_bound_result(path: Path) -> dict:
    """A result written by `bench bound --json`, checked for what printing and rendering read."""
    return read_saved_result(path, BOUND_RESULT_KEYS, BOUND_ROW_KEYS, "bench bound --json")


def bound_command(args) -> str:
    """The command line of this run: the flags that differ from their defaults, as typed."""
    default_taus = ",".join(f"{t:g}" for t in DEFAULT_TAUS)
    given = [("--ckpt", None if args.ckpt == str(BUNDLED_CHECKPOINT) else args.ckpt),
             ("--seeds", None if args.seeds == 2 else args.seeds),
             ("--taus", None if args.taus == default_taus else args.taus),
             ("--json", args.json), ("--readme", args.readme),
             ("--block", None if args.block == "bound" else args.block)]
    return command_line(["python -m nitrogen_core bench bound"], given)
