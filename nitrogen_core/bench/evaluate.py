"""The evidence benchmark: adaptive vs full vs fewer uniform steps vs step caching vs slim width.

    python -m nitrogen_core bench [--quick] [--data DIR] [--json PATH] [--plot PATH] [--readme PATH]
                                  [--ckpt PATH] [--seeds N] [--judge PATH] [--repeats R]
    python -m nitrogen_core bench --from-json PATH [--plot PATH] [--readme PATH]   # no sampling

One process, fixed seeds and labels (the same noise for every mode): seeds x classes images, split over
the classes in proportion to the FID reference set, so that FID compares like with like.
Modes, all on the same DDIM solver with the same CFG:
- full      N steps, width 1.0, every patch (the reference for PSNR/SSIM);
- adaptive  N steps, the checkpoint's gate, swept over tau;
- uniform   k < N steps, including the k that matches each adaptive point's MACs;
- cache     N steps, whole steps skipped per image (sampler mode "cache"), swept over its tau;
- slim      N steps at width 0.5.
Each configuration runs `repeats` times, interleaved (round r runs every configuration once);
seconds per image are the median over rounds. Quality comes from the first round (sampling is
deterministic). Metrics per row: MACs per image from the compute record, CPU seconds per image,
PSNR and SSIM to `full` on the same seeds, the domain FID and KID in the judge's feature space
(`bench judge`; not Inception-FID) with bootstrap 90% intervals (the generated set resampled with
replacement, 200 times, seed 0; the reference fixed), the floor beside them, and the near-copy rate.

Real images come from `--data DIR` (`load_real_sets`): with DIR/train + DIR/heldout the reference is the
held-out split and the floor is training images vs it; a plain ImageFolder is split half/half (fixed,
stratified): half B is the reference, half A the floor set, and the output says so. The floor is FID/KID
of real images drawn at the generated set's count and class mix, so a row's FID reads against it.
Near-copy rate: the share of samples whose PSNR (uint8, whole image) to the nearest training image
exceeds 30 dB; with a held-out split also against the held-out images.

`--readme PATH` replaces the text between the marker lines `<!-- bench:begin -->` and
`<!-- bench:end -->` in PATH with `render_markdown(result)`; `--from-json` re-renders a saved result.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import BUNDLED_CHECKPOINT, atomic_file, load_checkpoint
from ..errors import NitroGenInputError
from ..sampler import SamplerSettings, make_noise, sample
from .metrics import NEAR_COPY_DB, near_copy_rate, psnr, set_distance, ssim

DEFAULT_JUDGE = BUNDLED_CHECKPOINT.parent / "judge-emoji32.safetensors"
DEFAULT_DATA = "data/emoji32"               # where the README's setup puts `data emoji`
FLOOR_SEED = 0
BENCH_SEED = 2025
CHUNK = 32                                 # images per sampler call
SWEEPS = {   # (adaptive taus, cache taus, uniform step counts) as fractions of N for uniform
    "full": ((0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.03, 0.05), (0.003, 0.01, 0.03, 0.1, 0.3),
             (0.25, 0.35, 0.5, 0.65, 0.8)),
    "quick": ((0.003, 0.01, 0.03), (0.003, 0.01, 0.1), (0.35, 0.5, 0.75)),
}


class Config:
    def __init__(self, mode: str, settings: SamplerSettings, threshold: float | None, schedule=(1.0,)):
        self.mode, self.settings, self.threshold, self.schedule = mode, settings, threshold, schedule
        self.seconds: list[float] = []
        self.images: torch.Tensor | None = None
        self.macs_per_image: float = 0.0
        self.macs_full: int = 0

    def run(self, model, noise: torch.Tensor, labels: torch.Tensor) -> None:
        """Sample every image once; keep images and MACs the first time, time every time."""
        start = time.perf_counter()
        images, macs, self.macs_full = sample_in_chunks(model, noise, labels, self.settings, self.schedule)
        self.seconds.append((time.perf_counter() - start) / len(noise))
        if self.images is None:
            self.images, self.macs_per_image = images, float(macs.mean())


def sample_in_chunks(model, noise: torch.Tensor, labels: torch.Tensor, settings: SamplerSettings,
                     schedule=(1.0,), before_chunk=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sample in calls of at most CHUNK images. Returns images (n, C, H, W), MACs used per image
    (n,) float64 and full compute's MACs per image. `before_chunk(lo, hi)` runs before each call."""
    images, macs, macs_full = [], [], 0
    for lo in range(0, len(noise), CHUNK):
        hi = min(lo + CHUNK, len(noise))
        if before_chunk is not None:
            before_chunk(lo, hi)
        res = sample(model, noise[lo:hi], labels[lo:hi], settings, schedule)
        images.append(res.images)
        macs.append(torch.as_tensor(res.record.macs_used_per_image, dtype=torch.float64))
        macs_full = res.record.macs_full
    return torch.cat(images), torch.cat(macs), macs_full


def build_configs(steps: int, cfg_scale: float, schedule, sweep) -> list[Config]:
    taus, cache_taus, fractions = sweep
    base = dict(steps=steps, cfg=cfg_scale)
    configs = [Config("full", SamplerSettings(mode="full", **base), None)]
    configs += [Config("adaptive", SamplerSettings(threshold=t, **base), t, schedule) for t in taus]
    configs += [Config("cache", SamplerSettings(mode="cache", threshold=t, **base), t) for t in cache_taus]
    configs += [Config("slim", SamplerSettings(mode="full", width=0.5, **base), None)]
    ks = sorted({max(1, min(steps - 1, round(f * steps))) for f in fractions})
    configs += [Config("uniform", SamplerSettings(mode="full", steps=k, cfg=cfg_scale), None) for k in ks]
    return configs


def matched_uniform(configs: list[Config], steps: int, cfg_scale: float) -> list[Config]:
    """Uniform-step configurations matching each adaptive point's MACs that are not there yet."""
    have = {c.settings.steps for c in configs if c.mode == "uniform"}
    extra = []
    for c in configs:
        if c.mode == "adaptive":
            k = max(1, min(steps - 1, round(c.macs_per_image / c.macs_full * steps)))
            if k not in have:
                have.add(k)
                extra.append(Config("uniform", SamplerSettings(mode="full", steps=k, cfg=cfg_scale), None))
    return extra


def evaluate(args) -> dict:
    ck = load_checkpoint(args.ckpt)
    from .judge import counts_in_proportion, labels_for_counts, load_judge, load_real_sets, matched_draw
    judge = load_judge(args.judge)
    if tuple(judge.classes) != tuple(ck.labels):
        raise NitroGenInputError(f"judge {args.judge} was trained on classes {list(judge.classes)}, "
                                 f"the checkpoint has {list(ck.labels)}")
    sets = load_real_sets(args.data, judge.image_size, ck.labels)
    steps = args.steps or ck.sampler.get("steps", 20)
    cfg_scale = ck.sampler.get("cfg", 1.5)
    n_classes = ck.config.num_classes
    counts = counts_in_proportion(sets.reference_labels, n_classes, args.seeds * n_classes)
    labels = labels_for_counts(counts)                                       # (n,) in the reference's class mix
    if len(labels) < 4:
        raise NitroGenInputError(f"--seeds {args.seeds} gives {len(labels)} images for {n_classes} classes; FID and "
                                 f"KID need at least 4 (use --seeds {-(-4 // n_classes)} or more)")
    noise = make_noise(ck.config, len(labels), seed=BENCH_SEED)              # (n, C, H, W)
    configs = build_configs(steps, cfg_scale, ck.width_schedule, SWEEPS["quick" if args.quick else "full"])

    total = len(configs)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    log(f"bench: {len(labels)} images (classes in the reference's proportions), {steps} steps, cfg {cfg_scale}, "
        f"{args.repeats} interleaved round(s); {sets.describe()['note']}")
    for r in range(args.repeats):
        for i, c in enumerate(configs):
            c.run(ck.model, noise, labels)
            log(f"  round {r + 1}/{args.repeats} [{i + 1}/{total}] {c.mode} steps={c.settings.steps} "
                f"tau={c.threshold}: {c.seconds[-1]:.3f} s/image")
        if r == 0:
            extra = matched_uniform(configs, steps, cfg_scale)
            for c in extra:
                c.run(ck.model, noise, labels)
                log(f"  round 1/{args.repeats} [matched] uniform steps={c.settings.steps}: {c.seconds[-1]:.3f} s/image")
            configs += extra
            total = len(configs)

    full = configs[0]
    reference = judge.features(sets.reference)                               # (M, D)
    floor_images = sets.floor_pool[matched_draw(sets.floor_labels, counts, FLOOR_SEED)]
    floor = set_distance(judge.features(floor_images), reference)
    rows = []
    for c in configs:
        d = set_distance(judge.features(c.images), reference)
        p, s = psnr(c.images, full.images), ssim(c.images, full.images)
        rows.append({
            "mode": c.mode, "steps": c.settings.steps, "threshold": c.threshold, "width": c.settings.width,
            "macs_per_image": int(round(c.macs_per_image)),
            "seconds_per_image": statistics.median(c.seconds),
            "psnr_to_full": float(p.clamp(max=100).mean()), "psnr_to_full_min": float(p.min()),
            "ssim_to_full": float(s.mean()),
            "fid": d.fid, "fid_lo": d.fid_lo, "fid_hi": d.fid_hi, "kid": d.kid, "kid_lo": d.kid_lo, "kid_hi": d.kid_hi,
            "floor": floor.fid,
            "near_copy": near_copy_rate(c.images, sets.train),
            "near_copy_heldout": None if sets.heldout is None else near_copy_rate(c.images, sets.heldout),
        })
    # MAC ratios against full compute at N steps (a uniform k-step row's own macs_full is smaller).
    full_macs = rows[0]["macs_per_image"]
    for row in rows:
        row["mac_ratio"] = row["macs_per_image"] / full_macs
        row["time_ratio"] = row["seconds_per_image"] / rows[0]["seconds_per_image"]
    order = {"full": 0, "adaptive": 1, "uniform": 2, "cache": 3, "slim": 4}
    rows.sort(key=lambda r: (order[r["mode"]], -r["mac_ratio"]))
    return {"rows": rows, "ckpt": str(args.ckpt), "seeds": args.seeds, "images": len(labels),
            "labels": dict(zip(ck.labels, counts)),
            "device": "cpu", "threads": torch.get_num_threads(), "steps": steps, "cfg": cfg_scale,
            "repeats": args.repeats, "quick": bool(args.quick),
            "judge": {"path": str(args.judge), "held_out_accuracy": judge.meta.get("held_out_accuracy"),
                      "feature_dim": judge.dim, "reference_images": int(len(sets.reference))},
            "reference": sets.describe(),
            "floor": {**floor.as_dict(), "images": int(len(floor_images)), "generated_images": len(labels),
                      "what": "real images (floor pool) at the generated set's count and class mix vs the reference"},
            "intervals": {"level": floor.level, "resamples": floor.resamples, "kid_subset_size": floor.kid_subset_size,
                          "resampled": "the generated (or floor) set, with replacement; the reference is fixed"},
            "near_copy_db": NEAR_COPY_DB,
            "default_threshold": SamplerSettings().threshold,
            "default_point": default_point(rows, SamplerSettings().threshold)}


def nearest(rows: list[dict], mode: str, mac_ratio: float) -> dict | None:
    candidates = [r for r in rows if r["mode"] == mode]
    return min(candidates, key=lambda r: abs(r["mac_ratio"] - mac_ratio)) if candidates else None


def default_point(rows: list[dict], threshold: float) -> dict:
    """The adaptive row at the default tau next to the baselines nearest its MACs, and the targets."""
    ada = next((r for r in rows if r["mode"] == "adaptive" and r["threshold"] == threshold), None)
    if ada is None:
        return {}
    full = rows[0]
    uni, cache = nearest(rows, "uniform", ada["mac_ratio"]), nearest(rows, "cache", ada["mac_ratio"])
    targets = {
        "macs_3x_fewer": ada["mac_ratio"] <= 1 / 3,
        "time_2.5x_lower": ada["time_ratio"] <= 1 / 2.5,
        "fid_within_3pct": ada["fid"] <= 1.03 * full["fid"],
        "psnr_at_least_30": ada["psnr_to_full"] >= 30.0,
        "beats_uniform": bool(uni) and ada["fid"] < uni["fid"] and ada["psnr_to_full"] > uni["psnr_to_full"],
        "beats_cache": bool(cache) and ada["fid"] < cache["fid"] and ada["psnr_to_full"] > cache["psnr_to_full"],
    }
    return {"adaptive": ada, "uniform": uni, "cache": cache, "targets": targets}


def _tau(row: dict) -> str:
    return "" if row["threshold"] is None else f"{row['threshold']:g}"


def _mode_label(row: dict) -> str:
    return row["mode"] if row["mode"] != "slim" else f"slim {row['width']:g}"


def _figure(row: dict, key: str, digits: int) -> str:
    """"1.234 [1.100, 1.400]" (the figure and its interval), "1.234" without an interval, "–" if absent
    (a result written before the intervals were measured)."""
    value = row.get(key)
    if value is None:
        return "–"
    lo, hi = row.get(key + "_lo"), row.get(key + "_hi")
    text = f"{value:.{digits}f}"
    return text if lo is None or hi is None else f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _floor(row: dict) -> str:
    return "–" if row.get("floor") is None else f"{row['floor']:.3f}"


def _near_copy(row: dict) -> str:
    """Share of near-copies of training images (and of held-out images, when measured)."""
    if row.get("near_copy") is None:
        return "–"
    held = row.get("near_copy_heldout")
    return f"{row['near_copy']:.1%}" + ("" if held is None else f" / {held:.1%}")


def format_table(result: dict) -> str:
    head = (f"{'mode':9s} {'steps':>5s} {'tau':>7s} {'MACs/full':>9s} {'time/full':>9s} {'s/image':>8s} "
            f"{'PSNR':>6s} {'min':>6s} {'SSIM':>6s} {'FID [90% interval]':>25s} {'floor':>7s} "
            f"{'KID [90% interval]':>28s} {'near-copy':>13s}")
    lines = [head]
    for r in result["rows"]:
        lines.append(f"{_mode_label(r):9s} {r['steps']:5d} {_tau(r):>7s} {r['mac_ratio']:9.3f} {r['time_ratio']:9.3f} "
                     f"{r['seconds_per_image']:8.4f} {r['psnr_to_full']:6.1f} {r['psnr_to_full_min']:6.1f} "
                     f"{r['ssim_to_full']:6.3f} {_figure(r, 'fid', 3):>25s} {_floor(r):>7s} "
                     f"{_figure(r, 'kid', 4):>28s} {_near_copy(r):>13s}")
    return "\n".join(lines)


# -- markdown for the README (deterministic: the same result always gives the same text) -------------

# What an older results JSON (written before "command" was recorded) was produced with.
FALLBACK_COMMAND = "python -m nitrogen_core bench --json docs/bench.json --plot docs/bench.png"
TARGET_LABELS = {
    "macs_3x_fewer": "3× fewer MACs",
    "time_2.5x_lower": "2.5× lower time",
    "fid_within_3pct": "FID within +3%",
    "psnr_at_least_30": "PSNR to full ≥ 30 dB",
    "beats_uniform": "strictly better FID and PSNR than uniform at matched MACs",
    "beats_cache": "strictly better FID and PSNR than cache at matched MACs",
}


def interpolate(rows: list[dict], mode: str, x_key: str, x: float, y_key: str) -> float | None:
    """y of `mode`'s curve at x, linear between its two neighbouring rows sorted by x_key;
    None where x lies outside the rows' range (no extrapolation) or the mode has no rows."""
    points = sorted((r[x_key], r[y_key]) for r in rows if r["mode"] == mode)
    # The last point also pairs with itself, so a one-row curve still matches its own x.
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[-1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    line = lambda cells: "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def _psnr_fid(psnr_value: float | None, fid_value: float | None) -> str:
    return "–" if psnr_value is None else f"{psnr_value:.1f} dB / {fid_value:.3f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary_line(result: dict, readme: str) -> str:
    command = result.get("command") or FALLBACK_COMMAND
    if "--readme" not in command.split():
        command += f" --readme {shlex.quote(readme)}"
    run = "a **quick run** (short sweep, one round; not the evidence): " if result.get("quick") else ""
    judge = result.get("judge") or {}
    accuracy = judge.get("held_out_accuracy")
    judge_facts = ["unknown held-out accuracy" if accuracy is None else f"{accuracy:.0%} held-out accuracy"]
    if "feature_dim" in judge:
        judge_facts.append(f"{judge['feature_dim']}-d features")
    if "reference_images" in judge:
        judge_facts.append(f"{judge['reference_images']} reference images")
    mix = ("classes in the reference's proportions" if "labels" in result else f"{result['seeds']} per class")
    line = (f"Generated by `{command}`: {run}{result['images']} images ({mix}), "
            f"{result['steps']} DDIM steps, cfg {result['cfg']:g}, "
            f"{_count(result['repeats'], 'interleaved timing round')} on {_count(result['threads'], 'CPU thread')}; "
            f"the judge behind the domain FID/KID: {', '.join(judge_facts)}.")
    return line + _reference_sentences(result)


def _reference_sentences(result: dict) -> str:
    """What FID is measured against, the floor, the intervals and the near-copy rule (newer results only)."""
    parts = []
    reference, floor, intervals = result.get("reference"), result.get("floor"), result.get("intervals")
    if reference:
        parts.append(f"FID/KID reference: {reference['note']}.")
    if floor:
        parts.append(f"Floor (real images vs the reference, {floor['images']} images): FID {_figure(floor, 'fid', 3)}, "
                     f"KID {_figure(floor, 'kid', 4)}; a row's FID reads against it.")
        wanted = floor.get("generated_images", floor["images"])
        if floor["images"] < wanted:
            parts.append(f"**The floor pool holds fewer real images than the {wanted} generated**: FID's small-sample "
                         f"bias differs between the two counts, so the floor is only a rough guide here.")
    if intervals:
        parts.append(f"Intervals: {intervals['level']:.0%} percentile bootstrap, {intervals['resamples']} resamples "
                     f"of {intervals['resampled']}; KID over subsets of {intervals['kid_subset_size']}. Resamples "
                     f"repeat images, so FID's interval sits above its figure: compare intervals.")
    if "near_copy_db" in result:
        held = reference and reference.get("heldout_images") is not None
        parts.append(f"Near-copy: share of samples whose PSNR to the nearest training image"
                     f"{' (/ held-out image)' if held else ''} exceeds {result['near_copy_db']:g} dB.")
    return "".join(" " + p for p in parts)


def _default_table(full: dict, point: dict, threshold: float) -> str:
    def cells(row: dict, label: str) -> list[str]:
        worst = "–" if row["mode"] == "full" else f"{row['psnr_to_full']:.1f} / {row['psnr_to_full_min']:.1f} dB"
        return [label, str(row["steps"]), _tau(row), f"{row['mac_ratio']:.3f}", f"{row['time_ratio']:.3f}",
                worst, f"{row['ssim_to_full']:.3f}", _figure(row, "fid", 3), _floor(row), _figure(row, "kid", 4),
                _near_copy(row)]
    rows = [cells(full, "full"), cells(point["adaptive"], "**adaptive**")]
    rows += [cells(point[mode], mode) for mode in ("uniform", "cache") if point.get(mode)]
    header = ["mode", "steps", "τ", "MACs/full", "time/full", "PSNR to full (mean / worst)", "SSIM",
              "domain FID [90%]", "floor", "KID [90%]", "near-copy"]
    return (f"The default τ = {threshold:g} next to the baselines nearest its MACs:\n\n"
            + _markdown_table(header, rows))


def _target_figures(key: str, full: dict, point: dict) -> str:
    ada = point["adaptive"]
    if key == "macs_3x_fewer":
        return f"{ada['mac_ratio']:.3f} of full"
    if key == "time_2.5x_lower":
        return f"{ada['time_ratio']:.3f} of full"
    if key == "fid_within_3pct":
        return f"{(ada['fid'] / full['fid'] - 1) * 100:+.1f}%"
    if key == "psnr_at_least_30":
        return f"{ada['psnr_to_full']:.1f} dB mean, {ada['psnr_to_full_min']:.1f} dB worst"
    if key in ("beats_uniform", "beats_cache"):
        mode = key.removeprefix("beats_")
        base = point.get(mode)
        if not base:
            return f"no {mode} rows"
        which = f"{base['steps']} steps" if mode == "uniform" else f"τ {base['threshold']:g}"
        return (f"adaptive {ada['psnr_to_full']:.1f} dB, FID {ada['fid']:.3f}; {mode} {which}, "
                f"{base['mac_ratio']:.3f} MACs: {base['psnr_to_full']:.1f} dB, FID {base['fid']:.3f}")
    return ""


def _targets_list(full: dict, point: dict) -> str:
    lines = ["Targets for the default point:", ""]
    for key, met in point["targets"].items():
        figures = _target_figures(key, full, point)
        lines.append(f"- {TARGET_LABELS.get(key, key)}: {'yes' if met else '**no**'}"
                     + (f" ({figures})" if figures else ""))
    return "\n".join(lines)


def _matched_table(rows: list[dict]) -> str:
    baselines = ("uniform", "cache")
    table = []
    for ada in (r for r in rows if r["mode"] == "adaptive"):
        at = {(mode, x_key): tuple(interpolate(rows, mode, x_key, ada[x_key], y) for y in ("psnr_to_full", "fid"))
              for mode in baselines for x_key in ("mac_ratio", "time_ratio")}
        psnr_at_macs = {"adaptive": ada["psnr_to_full"],
                        **{m: at[m, "mac_ratio"][0] for m in baselines if at[m, "mac_ratio"][0] is not None}}
        # With no baseline measured at these MACs there is nothing to compare against.
        best = max(psnr_at_macs, key=psnr_at_macs.get) if len(psnr_at_macs) > 1 else "–"
        table.append([_tau(ada), f"{ada['mac_ratio']:.3f}", f"{ada['time_ratio']:.3f}",
                      _psnr_fid(ada["psnr_to_full"], ada["fid"]),
                      *(_psnr_fid(*at[m, x]) for x in ("mac_ratio", "time_ratio") for m in baselines), best])
    header = ["adaptive τ", "MACs/full", "time/full", "adaptive PSNR / FID", "uniform at same MACs",
              "cache at same MACs", "uniform at same time", "cache at same time", "best PSNR at same MACs"]
    return ("Matched comparisons across the sweep: each baseline's PSNR to full (mean) and domain FID, "
            "linearly interpolated along its measured curve at the adaptive point's MACs/full and at its "
            "time/full (– outside the baseline's measured range):\n\n" + _markdown_table(header, table))


def _all_rows_table(rows: list[dict]) -> str:
    table = []
    for r in rows:
        psnr_cells = (["–", "–"] if r["mode"] == "full"
                      else [f"{r['psnr_to_full']:.1f}", f"{r['psnr_to_full_min']:.1f}"])
        table.append([_mode_label(r), str(r["steps"]), _tau(r), f"{r['mac_ratio']:.3f}", f"{r['time_ratio']:.3f}",
                      f"{r['seconds_per_image']:.4f}", *psnr_cells, f"{r['ssim_to_full']:.3f}",
                      _figure(r, "fid", 3), _floor(r), _figure(r, "kid", 4), _near_copy(r)])
    header = ["mode", "steps", "τ", "MACs/full", "time/full", "s/image", "PSNR to full (dB)", "worst (dB)",
              "SSIM", "domain FID [90%]", "floor", "KID [90%]", "near-copy"]
    return "All rows:\n\n" + _markdown_table(header, table)


def render_markdown(result: dict, readme: str = "README.md") -> str:
    """The README's evidence block from a bench result: summary line, default-τ table, targets,
    matched comparisons, all rows. `readme` only completes the shown command for older results."""
    rows = result["rows"]
    full = next(r for r in rows if r["mode"] == "full")
    point = result.get("default_point") or {}
    parts = [_summary_line(result, readme)]
    if point:
        parts += [_default_table(full, point, result["default_threshold"]), _targets_list(full, point)]
    else:
        parts.append(f"No adaptive row at the default τ = {result.get('default_threshold')}.")
    parts += [_matched_table(rows), _all_rows_table(rows)]
    return "\n\n".join(parts) + "\n"


# -- README block and saved results (one-line errors naming the path) -------------------------------

README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"
BENCH_MARKERS = (README_BEGIN, README_END)
ROW_KEYS = ("mode", "steps", "threshold", "width", "seconds_per_image", "psnr_to_full", "psnr_to_full_min",
            "ssim_to_full", "fid", "kid", "mac_ratio", "time_ratio")
RESULT_KEYS = ("images", "seeds", "steps", "cfg", "repeats", "threads", "default_threshold")


def _read_readme(path: Path, markers: tuple[str, str] = BENCH_MARKERS) -> str:
    if not path.is_file():
        raise NitroGenInputError(f"--readme {path} does not exist (it must hold the {markers[0]} and "
                                 f"{markers[1]} marker lines)")
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NitroGenInputError(f"--readme {path} cannot be read as UTF-8 text: {exc}") from None


def _generated_span(text: str, path: Path, markers: tuple[str, str] = BENCH_MARKERS) -> tuple[int, int]:
    """Offsets of the generated block: just after the begin marker's line, the start of the end marker's."""
    begin_marker, end_marker = markers
    lines = text.splitlines(keepends=True)
    found = {m: [i for i, line in enumerate(lines) if line.strip() == m] for m in markers}
    for marker, where in found.items():
        if len(where) != 1:
            count = "no" if not where else f"{len(where)}"
            raise NitroGenInputError(f"--readme {path} has {count} {marker} marker lines; exactly one "
                                     f"{begin_marker} line followed by one {end_marker} line is needed")
    begin, end = found[begin_marker][0], found[end_marker][0]
    if end < begin:
        raise NitroGenInputError(f"--readme {path} has its {end_marker} line before its {begin_marker} line")
    offset = lambda i: sum(map(len, lines[:i]))
    return offset(begin + 1), offset(end)


def check_readme(path: Path, markers: tuple[str, str] = BENCH_MARKERS) -> None:
    _generated_span(_read_readme(path, markers), path, markers)


def replace_generated(text: str, markdown: str, path: Path, markers: tuple[str, str] = BENCH_MARKERS) -> str:
    """`text` with the block between the markers replaced; every byte outside it, markers included, kept."""
    start, stop = _generated_span(text, path, markers)
    return text[:start] + "\n" + markdown.strip("\n") + "\n\n" + text[stop:]


def write_readme(path: Path, markdown: str, markers: tuple[str, str] = BENCH_MARKERS) -> None:
    text = _read_readme(path, markers)
    updated = replace_generated(text, markdown, path, markers)
    if updated == text:
        return
    with atomic_file(path) as tmp:
        tmp.write_bytes(updated.encode("utf-8"))
        os.chmod(tmp, path.stat().st_mode & 0o7777)           # mkstemp makes it 0600; keep the README's mode


def load_result(path: Path) -> dict:
    """A result written by `bench --json`, checked for what the printing and rendering read."""
    if not path.is_file():
        raise NitroGenInputError(f"--from-json {path} does not exist")
    try:
        result = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise NitroGenInputError(f"--from-json {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise NitroGenInputError(f"--from-json {path} is not JSON ({exc})") from None
    rows = result.get("rows") if isinstance(result, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise NitroGenInputError(f'--from-json {path} has no "rows" list; expected a file written by bench --json')
    missing = [k for k in RESULT_KEYS if k not in result]
    missing += sorted({k for r in rows for k in ROW_KEYS if k not in r})
    if missing:
        raise NitroGenInputError(f"--from-json {path} lacks {', '.join(missing)}; "
                                 "expected a file written by bench --json")
    if not any(r["mode"] == "full" for r in rows):
        raise NitroGenInputError(f'--from-json {path} has no "full" row to compare against')
    return result


# -- plot (Pillow; no plotting dependency) ----------------------------------------------------------

COLORS = {"full": (0, 0, 0), "adaptive": (214, 39, 40), "uniform": (31, 119, 180), "cache": (44, 160, 44),
          "slim": (148, 103, 189)}


def _panel(draw, font, box, rows, x_key, y_key, x_label, y_label) -> None:
    left, top, right, bottom = box
    pl, pr, pt, pb = left + 48, right - 10, top + 18, bottom - 30          # plot area
    xs = [r[x_key] for r in rows]
    ys = [r[y_key] for r in rows]
    # FID panels: each point's interval as a vertical bar, the floor as a dashed grey line.
    bars = [(r[x_key], r[y_key + "_lo"], r[y_key + "_hi"], r["mode"]) for r in rows
            if r.get(y_key + "_lo") is not None and r.get(y_key + "_hi") is not None]
    floor = rows[0].get("floor") if y_key == "fid" else None
    ys += [v for _, lo, hi, _ in bars for v in (lo, hi)] + ([floor] if floor is not None else [])
    x0, x1 = 0.0, max(xs) * 1.05
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    fx = lambda v: pl + (pr - pl) * (v - x0) / (x1 - x0)
    fy = lambda v: pb - (pb - pt) * (v - y0) / (y1 - y0)
    draw.rectangle([pl, pt, pr, pb], outline="black")
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        draw.line([fx(xv), pb, fx(xv), pb + 3], fill="black")
        draw.text((fx(xv) - 12, pb + 5), f"{xv:.2f}" if x1 < 10 else f"{xv:.0f}", fill="black", font=font)
        draw.line([pl, fy(yv), pr, fy(yv)], fill=(230, 230, 230))
        draw.text((left + 2, fy(yv) - 6), f"{yv:.3g}", fill="black", font=font)
    draw.text(((pl + pr) // 2 - 40, bottom - 14), x_label, fill="black", font=font)
    draw.text((pl, top + 2), y_label, fill="black", font=font)
    if floor is not None:
        for xa in range(int(pl), int(pr), 8):
            draw.line([xa, fy(floor), min(xa + 4, pr), fy(floor)], fill=(120, 120, 120))
        draw.text((pr - 40, fy(floor) - 12), "floor", fill=(120, 120, 120), font=font)
    for x, lo, hi, mode in bars:
        draw.line([fx(x), fy(lo), fx(x), fy(hi)], fill=COLORS[mode])
    for mode, color in COLORS.items():
        pts = sorted((fx(r[x_key]), fy(r[y_key])) for r in rows if r["mode"] == mode)
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)


def plot(result: dict, path: Path) -> None:
    """2x2: FID and PSNR-to-full against MACs/full and against seconds per image."""
    rows = result["rows"]
    W, H = 900, 640
    img = Image.new("RGB", (W, H + 30), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    capped = [{**r, "psnr_to_full": min(r["psnr_to_full"], 70.0)} for r in rows]  # full itself sits at the cap
    panels = [("mac_ratio", "fid", "MACs / full", "domain FID, 90% interval, floor (lower is better)"),
              ("mac_ratio", "psnr_to_full", "MACs / full", "PSNR to full, dB (capped at 70)"),
              ("seconds_per_image", "fid", "CPU seconds per image", "domain FID"),
              ("seconds_per_image", "psnr_to_full", "CPU seconds per image", "PSNR to full, dB")]
    for k, (xk, yk, xl, yl) in enumerate(panels):
        col, row = k % 2, k // 2
        _panel(draw, font, (col * W // 2, row * H // 2, (col + 1) * W // 2, (row + 1) * H // 2),
               capped, xk, yk, xl, yl)
    x = 10
    for mode, color in COLORS.items():
        draw.rectangle([x, H + 10, x + 14, H + 20], fill=color)
        draw.text((x + 18, H + 9), mode, fill="black", font=font)
        x += 110
    draw.text((x, H + 9), f"{result['images']} images, {result['steps']} steps, cfg {result['cfg']}",
              fill="black", font=font)
    img.save(path)


# -- command ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="2 seeds per class, a short sweep, 1 round (< 5 min)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write the quality-vs-compute plot (PNG) here")
    p.add_argument("--readme", default=None,
                   help=f"replace the text between the {README_BEGIN} and {README_END} lines of this markdown "
                        "file with the generated tables")
    p.add_argument("--from-json", default=None,
                   help="no sampling: print and write --plot/--readme/--json from a result saved by --json "
                        "(the sampling flags are ignored)")
    p.add_argument("--ckpt", default=str(BUNDLED_CHECKPOINT), help="checkpoint (default: the bundled one)")
    p.add_argument("--judge", default=str(DEFAULT_JUDGE), help="judge classifier for FID/KID (bench judge)")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help=f"real images for the FID reference, the floor and the near-copy check (default {DEFAULT_DATA}): "
                        "DIR/train + DIR/heldout, or a plain ImageFolder (then split half/half)")
    p.add_argument("--seeds", type=int, default=None,
                   help="images per class on average: seeds x classes images in the reference's class "
                        "proportions (default 12, quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds (default 3, quick 1)")
    p.add_argument("--steps", type=int, default=None, help="N, the full step count (default: checkpoint's)")


def command_line(words: list[str], given: list[tuple[str, object]]) -> str:
    """`words` then each (flag, value) whose value is not None, quoted for a shell."""
    return " ".join([*words, *(f"{flag} {shlex.quote(str(value))}" for flag, value in given if value is not None)])


def bench_command(args) -> str:
    """The command line of this run from the parsed flags: only those given, paths as given."""
    given = [("--seeds", args.seeds), ("--repeats", args.repeats), ("--steps", args.steps),
             ("--ckpt", None if args.ckpt == str(BUNDLED_CHECKPOINT) else args.ckpt),
             ("--judge", None if args.judge == str(DEFAULT_JUDGE) else args.judge),
             ("--data", None if args.data == DEFAULT_DATA else args.data),
             ("--json", args.json), ("--plot", args.plot), ("--readme", args.readme)]
    return command_line(["python -m nitrogen_core bench", *(["--quick"] if args.quick else [])], given)


def cmd_bench(args) -> int:
    # Everything that can be refused is checked before sampling, which takes up to ~17 minutes.
    if args.readme:
        check_readme(Path(args.readme))
    if args.from_json:
        result = load_result(Path(args.from_json))
    else:
        command = bench_command(args)                # before the defaults below fill in unset flags
        args.seeds = args.seeds if args.seeds is not None else (2 if args.quick else 12)
        args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
        for name in ("seeds", "repeats"):
            value = getattr(args, name)
            if not 1 <= value <= 1000:
                raise NitroGenInputError(f"--{name} {value} is out of range; allowed 1..1000")
        if args.steps is not None and not 2 <= args.steps <= 1000:
            raise NitroGenInputError(f"--steps {args.steps} is out of range; allowed 2..1000")
        result = {**evaluate(args), "command": command}
    print(format_table(result))
    point = result.get("default_point") or {}
    if point:
        met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in point["targets"].items())
        print(f"default tau {result['default_threshold']:g}: {met}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(result, Path(args.plot))
    if args.readme:
        write_readme(Path(args.readme), render_markdown(result, args.readme))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m nitrogen_core.bench.evaluate ...` = `python -m nitrogen_core bench ...`."""
    from ..__main__ import main as cli_main
    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
