"""Stage 2: the student (every width) distilled from the teacher, its width schedule, and its gate.

    python -m nitrogen_core train student --teacher RUN/teacher.safetensors --data DIR --out RUN2 \
        [--steps N] [--minutes M]

1. Distillation (resumable, `--steps`): the student starts as the teacher. Each step trains the
   sandwich of widths - the largest (1.0), the smallest (0.25) and one random middle width -
   all regressing the frozen teacher's prediction on the same noisy batch (in-place
   distillation; Yu & Huang 2019, slimmable networks). EMA weights are kept.
2. Width schedule: along teacher DDIM trajectories, the RMS eps error of each width against
   the teacher is measured per step and weighted by how far an eps error at that step moves
   the final image; each trajectory segment takes the narrowest width whose extra image-space
   error over width 1.0 stays under `--width-error-bound`.
3. Gate: trajectories of the student under the width schedule and random skip patterns like
   the adaptive sampler's (warm-up, refresh, capped consecutive skips). At every step the
   dense fresh eps is computed too, so the target for each patch is the RMS of
   (eps_fresh - eps_cached), the error a skip would have caused. The gate regresses it in log
   space. Then a second round on its own decisions (DAgger-style): trajectories where blocks are
   skipped by the trained gate at thresholds around the default's range, the states the sampler
   will really visit; the gate is fine-tuned on both sets. Held-out trajectories of both kinds
   measure it.
4. Export: RUN2/student.safetensors, kind "student", with gate, width schedule, labels,
   recommended sampler settings and training metadata.
"""
from __future__ import annotations

import copy
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..bench.tau import TailRule, confirm_threshold, proportional_labels, threshold_sweep
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import NitroGenConfig
from ..diffusion import Schedule, split_prediction
from ..errors import NitroGenInputError
from ..model import NitroGenModel
from ..sampler import EpsForecast, _blocks_to_patches, ddim_step, image_weights, make_noise, width_for_step
from .common import (RunDir, Timer, all_mean, batch_indices, ema_update, init_distributed, learning_rate,
                     optimizer_step, restore_run, save_run, set_learning_rate, step_generator)
from .data import load_image_folder
from .teacher import drop_labels, min_snr_weight, sample_grid

SCHEDULE_SEGMENTS = 4
# Thresholds of the gate's own decisions in the on-policy round: the range the tail rule has chosen
# from (0.003 on the first bundled model), one per trajectory batch.
ON_POLICY_TAUS = (0.001, 0.003, 0.01, 0.03)


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings:
    """What `train student` and `train gate` share: the gate's data and the default threshold's rule
    and guards."""
    seed: int = 0
    tau_p1_psnr: float = 32.0       # default threshold: the tail rule (bench/tau.py) on PSNR to full compute,
    tau_worst_psnr: float = 25.0    # 1st percentile >= this and worst image >= that, over
    tau_images: int = 540           # this many images (>= 512 for a real model; tests use fewer)
    gate_trajectories: int = 48
    gate_steps: int = 1500
    refresh_every: int = 3          # recommended dense refresh period; the threshold is calibrated with it
    forecast: float = 0.0           # recommended eps forecast strength (sampler.EpsForecast); the gate learns the
                                    # forecast's error and the threshold is calibrated with it
    kv_forecast: float = 0.0        # transformer: recommended key/value forecast strength (token_sparse.KVForecast)
    accumulate: float = 0.0         # recommended weight of a block's skips since computed (SamplerSettings.accumulate)
    dense_above: float | None = None   # recommended share of units above which a step runs dense (None: the
                                       # backbone's break-even, Executor.dense_above)


@dataclass(frozen=True, kw_only=True)
class StudentSettings(CalibrationSettings):
    teacher: str
    data: str
    out_dir: str
    steps: int = 1000
    batch: int = 64
    lr: float = 2e-4
    warmup: int = 50
    ema: float = 0.998
    label_dropout: float = 0.1
    min_snr: float = 5.0
    sample_every: int = 250
    save_every: int = 50
    minutes: float | None = None
    stop_after: int | None = None   # end this invocation after this many new steps (scripted runs, tests)
    sample_steps: int = 20
    sample_cfg: float = 1.5
    width_error_bound: float = 0.01     # image units: extra final-image error a narrow width may add per segment


# -- 1. distillation ---------------------------------------------------------------------------------

def sandwich_widths(widths: tuple[float, ...], gen: torch.Generator) -> list[float]:
    """Largest, smallest and one random width in between (all of them if there are <= 3)."""
    ws = sorted(widths, reverse=True)
    if len(ws) <= 3:
        return ws
    middle = ws[1:-1]
    return [ws[0], ws[-1], middle[int(torch.randint(len(middle), (1,), generator=gen))]]


def distill_step(student_net, teacher_net, x0, labels, schedule: Schedule, gen: torch.Generator,
                 cfg: NitroGenConfig, gamma: float) -> dict[float, float]:
    """Forward/backward every sandwich width against the teacher's prediction; returns loss per width."""
    B = x0.shape[0]
    t = torch.randint(0, schedule.timesteps, (B,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    alpha, sigma = (v.view(B, 1, 1, 1) for v in schedule.alpha_sigma(t))
    x_t = alpha * x0 + sigma * eps
    with torch.no_grad():
        target = teacher_net(x_t, t.float(), labels, 1.0)
    weight = min_snr_weight(alpha.view(B), sigma.view(B), gamma, cfg.prediction)
    losses = {}
    for width in sandwich_widths(cfg.widths, gen):
        pred = student_net(x_t, t.float(), labels, width)
        loss = ((pred - target).square().mean(dim=(1, 2, 3)) * weight).mean()
        loss.backward()                              # gradients add up over the sandwich
        losses[width] = loss.item()
    return losses


# -- 2. width schedule -----------------------------------------------------------------------------

@torch.no_grad()
def guided_eps(net, x: torch.Tensor, t: int, labels: torch.Tensor, width: float, cfg_scale: float,
               schedule: Schedule, cfg: NitroGenConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG-guided (eps, x0) of one dense forward, the same arithmetic as the sampler."""
    B = x.shape[0]
    alpha, sigma = schedule.alpha_sigma(t)
    null = torch.full_like(labels, cfg.num_classes)
    out = net(torch.cat([x, x]), torch.full((2 * B,), float(t)), torch.cat([labels, null]), width)
    cond, uncond = out.chunk(2)
    return split_prediction(uncond + cfg_scale * (cond - uncond), x, alpha, sigma, cfg.prediction)


@torch.no_grad()
def width_errors(student_net, teacher_net, cfg: NitroGenConfig, steps: int, cfg_scale: float,
                 n: int, seed: int) -> dict[float, list[float]]:
    """RMS eps error of each width against the teacher, per sampling step, along teacher DDIM paths."""
    schedule = Schedule(cfg.train_timesteps)
    timesteps = schedule.sampling_timesteps(steps)
    x = make_noise(cfg, n, seed)
    labels = torch.arange(n) % cfg.num_classes
    errors = {w: [] for w in cfg.widths}
    for i, t in enumerate(timesteps):
        eps_t, x0_t = guided_eps(teacher_net, x, t, labels, 1.0, cfg_scale, schedule, cfg)
        for w in cfg.widths:
            eps_w, _ = guided_eps(student_net, x, t, labels, w, cfg_scale, schedule, cfg)
            errors[w].append(float((eps_w - eps_t).square().mean().sqrt()))
        a_prev, s_prev = schedule.alpha_sigma(timesteps[i + 1] if i + 1 < steps else -1)
        x = a_prev * x0_t + s_prev * eps_t
    return errors


def choose_width_schedule(errors: dict[float, list[float]], step_weight: list[float], bound: float,
                          segments: int) -> tuple[float, ...]:
    """Per segment of the trajectory, the narrowest width whose extra image-space error over the
    widest width, sum_i (err_w[i] - err_max[i]) * step_weight[i], stays <= bound.

    step_weight[i] is how far an eps error at step i moves the final image (sampler.image_weights),
    so the bound is in image units ([-1, 1] pixels): narrow widths land where errors matter least.
    """
    steps = len(next(iter(errors.values())))
    widest = max(errors)
    schedule = []
    for k in range(segments):
        idx = [i for i in range(steps) if i * segments // steps == k]
        extra = {w: sum((errors[w][i] - errors[widest][i]) * step_weight[i] for i in idx) for w in errors}
        schedule.append(min(w for w in errors if extra[w] <= bound))
    return tuple(schedule)


# -- 3. gate ------------------------------------------------------------------------------------------

@torch.no_grad()
def gate_trajectories(model: NitroGenModel, width_schedule: tuple[float, ...], n: int, steps: int,
                      cfg_scale: float, seed: int, batch: int = 16, policy=None,
                      taus: tuple[float, ...] = ON_POLICY_TAUS, forecast: float = 0.0) -> dict[str, torch.Tensor]:
    """Gate inputs and per-patch targets along sampler-like trajectories.

    policy None: random skip patterns (a keep probability per batch), which explore states the
    sampler rarely reaches. policy = a gate: its own decisions at a threshold drawn per batch from
    `taus`, by the sampler's rule (a block is recomputed when its worst patch's predicted residual
    times the step's image weight reaches tau, or after max_skips skips in a row).

    The target is the per-patch RMS of fresh eps minus the eps a skip would use: the last computed
    eps, or with `forecast` > 0 its forecast (sampler.EpsForecast), which skipped units also step with.

    Returns x (N, C, H, W), t (N,), eps_cached, eps_delta, age and target (N, Hp, Wp) over all gated
    steps; age is the steps since each patch was computed (the gate reads it with config.gate_age).
    """
    cfg, net = model.config, model.net
    schedule = Schedule(cfg.train_timesteps)
    timesteps = schedule.sampling_timesteps(steps)
    step_weight, _ = image_weights(schedule, timesteps)
    rng = random.Random(seed)
    p, nb = cfg.patch_size, cfg.image_size // cfg.block_size
    per_block = cfg.block_size // p
    rows = {k: [] for k in ("x", "t", "eps_cached", "eps_delta", "age", "target")}
    for start in range(0, n, batch):
        B = min(batch, n - start)
        x = make_noise(cfg, B, seed * 7919 + start)
        labels = torch.tensor([rng.randrange(cfg.num_classes) for _ in range(B)])
        eps_cached = torch.zeros_like(x)                                   # last computed eps
        eps_delta = torch.zeros_like(x)
        eps_forecast = EpsForecast(x, forecast)
        skip_run = torch.zeros(B, nb, nb, dtype=torch.long)
        warmup, refresh, max_skips = rng.choice([1, 2, 3]), rng.choice([0, 4, 5, 8]), rng.choice([2, 3, 4])
        keep_prob = rng.uniform(0.1, 0.9)             # random policy: how often a block is recomputed
        tau = rng.choice(taus)                        # gate policy: its threshold for this batch
        prev_width = None
        for i, t in enumerate(timesteps):
            width = width_for_step(width_schedule, i, steps)
            fresh_eps, fresh_x0 = guided_eps(net, x, t, labels, width, cfg_scale, schedule, cfg)
            dense = i < warmup or width != prev_width or (refresh and (i - warmup) % refresh == 0)
            if not dense:                              # this is a step the gate decides: record it
                diff = (fresh_eps - eps_forecast.skipped()).square().mean(1, keepdim=True)   # (B, 1, H, W)
                rows["x"].append(x.clone())
                rows["t"].append(torch.full((B,), float(t)))
                rows["eps_cached"].append(eps_cached.clone())
                rows["eps_delta"].append(eps_delta.clone())
                age = _blocks_to_patches(skip_run + 1, per_block).float()
                rows["age"].append(age)                                                   # (B, Hp, Wp)
                rows["target"].append(F.avg_pool2d(diff, p)[:, 0].sqrt())             # (B, Hp, Wp)
                if policy is None:
                    gen = torch.Generator().manual_seed(seed * 131 + start * 17 + i)
                    wanted = torch.rand(B, nb, nb, generator=gen) < keep_prob
                else:
                    r = policy(x, torch.full((B,), float(t)), eps_cached, eps_delta, age)     # (B, Hp, Wp)
                    wanted = F.max_pool2d(r[:, None], per_block)[:, 0] * step_weight[i] >= tau  # (B, nb, nb)
                blocks = wanted | (skip_run >= max_skips)
            else:
                blocks = torch.ones(B, nb, nb, dtype=torch.bool)
            computed = blocks.repeat_interleave(cfg.block_size, 1).repeat_interleave(cfg.block_size, 2)[:, None]
            eps_delta = torch.where(computed, fresh_eps - eps_cached, eps_delta)
            eps_cached, eps = eps_forecast.step(fresh_eps, computed)
            alpha, sigma = schedule.alpha_sigma(t)
            a_prev, s_prev = schedule.alpha_sigma(timesteps[i + 1] if i + 1 < steps else -1)
            x, _ = ddim_step(x, eps, fresh_x0, computed, alpha, sigma, a_prev, s_prev)
            skip_run = torch.where(blocks, torch.zeros_like(skip_run), skip_run + 1)
            prev_width = width
    return {k: torch.cat(v) for k, v in rows.items()}


LOG_FLOOR = 1e-3   # residuals below this are all "negligible" to the gate's log-space loss


def gate_loss(gate, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    pred = gate(batch["x"], batch["t"], batch["eps_cached"], batch["eps_delta"], batch["age"])   # (B, Hp, Wp)
    return (torch.log(pred + LOG_FLOOR) - torch.log(batch["target"] + LOG_FLOOR)).square().mean()


@torch.no_grad()
def gate_report(gate, data: dict[str, torch.Tensor], thresholds: tuple[float, ...]) -> dict:
    """Held-out error of the gate: log-space RMSE, rank correlation proxy, and skip-decision accuracy."""
    pred = gate(data["x"], data["t"], data["eps_cached"], data["eps_delta"], data["age"])
    target = data["target"]
    log_rmse = float((torch.log(pred + LOG_FLOOR) - torch.log(target + LOG_FLOOR)).square().mean().sqrt())
    pc, tc = pred.flatten() - pred.mean(), target.flatten() - target.mean()
    corr = float((pc * tc).sum() / (pc.norm() * tc.norm()).clamp(min=1e-12))
    decisions = {}
    for tau in thresholds:
        truth, guess = target >= tau, pred >= tau
        decisions[str(tau)] = {"accuracy": float((truth == guess).float().mean()),
                               "missed_recomputes": float((truth & ~guess).float().mean()),
                               "true_skip_fraction": float((~truth).float().mean())}
    return {"log_rmse": log_rmse, "pearson": corr, "decisions": decisions,
            "target_median": float(target.median()), "n_patches": int(target.numel())}


def train_gate(gate, train: dict[str, torch.Tensor], steps: int, seed: int, batch: int = 64,
               lr: float = 2e-3) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    gate.requires_grad_(True).train()
    opt = torch.optim.AdamW(gate.parameters(), lr=lr, weight_decay=1e-4)
    n, losses = len(train["t"]), []
    for step in range(steps):
        idx = torch.randint(n, (batch,), generator=gen)
        loss = gate_loss(gate, {k: v[idx] for k, v in train.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        set_learning_rate(opt, learning_rate(step, steps, lr, 50))
        opt.step()
        losses.append(loss.item())
    gate.requires_grad_(False).eval()
    return losses


# -- 4. default threshold: bench/tau.py (the tail rule over >= 512 images) -------------------------------

# -- driver ---------------------------------------------------------------------------------------------

def _load_start(path: str, kind: str, data_dir: str, kv_forecast: float):
    """The checkpoint a stage starts from (`--teacher` or `--student`) and its dataset, checked:
    the right kind, a key/value forecast only for the transformer, the same classes in order."""
    ck = load_checkpoint(path)
    if ck.kind != kind:
        what = "give the teacher" if kind == "teacher" else "give a student (`train student` makes one)"
        raise NitroGenInputError(f"--{kind} {path!r} is a {ck.kind!r} checkpoint; {what}")
    if kv_forecast and ck.config.backbone != "dit":
        raise NitroGenInputError(f"--kv-forecast {kv_forecast} applies to the transformer backbone; "
                                 f"{path!r} is a {ck.config.backbone!r} (use 0)")
    data = load_image_folder(data_dir, ck.config.image_size)
    if tuple(data.classes) != tuple(ck.labels):
        raise NitroGenInputError(f"--data classes {list(data.classes)} differ from the {kind}'s labels "
                                 f"{list(ck.labels)}")
    return ck, data


def train_student(s: StudentSettings) -> dict:
    d = init_distributed()
    torch.set_num_threads(max(1, torch.get_num_threads() // d.world))
    teacher_ck, data = _load_start(s.teacher, "teacher", s.data, s.kv_forecast)
    cfg = teacher_ck.config
    run = RunDir(s.out_dir, d)
    run.check_or_write_config({**asdict(s), "config": cfg.to_dict(), "classes": list(data.classes), "world": d.world})

    teacher = teacher_ck.model
    student = NitroGenModel(cfg)
    student.net.load_state_dict(teacher.net.state_dict())
    ema = copy.deepcopy(student).requires_grad_(False).eval()
    params = list(student.net.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = Schedule(cfg.train_timesteps)
    x_all = data.as_float()

    modules = {"model": student.net, "ema": ema}
    step, seconds = restore_run(run, modules, opt, d)
    if step and d.main:
        print(f"resuming {run.path} at distillation step {step}/{s.steps}", file=sys.stderr)

    timer = Timer(s.minutes, s.stop_after, step)
    bar = tqdm(total=s.steps, initial=step, desc="student", unit="step", file=sys.stderr, disable=not d.main)
    last = time.monotonic()
    while step < s.steps and not timer.expired(step):
        gen = step_generator(s.seed, step, d)
        idx = batch_indices(len(x_all), s.batch, step, s.seed, d)
        labels = drop_labels(data.labels[idx], cfg.num_classes, s.label_dropout, gen)
        opt.zero_grad(set_to_none=True)
        losses = distill_step(student.net, teacher.net, x_all[idx], labels, schedule, gen, cfg, s.min_snr)
        lr = learning_rate(step, s.steps, s.lr, s.warmup)
        optimizer_step(params, opt, lr, d)
        ema_update(ema.net, student.net, step, s.ema)
        step += 1
        now = time.monotonic()
        seconds += now - last
        last = now
        losses = {w: all_mean(v, d) for w, v in losses.items()}
        if d.main:
            bar.update(1)
            bar.set_postfix(loss_full=f"{losses.get(1.0, float('nan')):.4f}",
                            loss_025=f"{losses.get(min(cfg.widths), float('nan')):.4f}")
        if step % 25 == 0 or step == s.steps:
            run.log({"step": step, "lr": lr, "seconds": round(seconds, 1),
                     **{f"loss_w{w}": v for w, v in losses.items()}})
        if step % s.save_every == 0:
            save_run(run, modules, opt, step, seconds)
        if d.main and (step % s.sample_every == 0 or step == s.steps):
            sample_grid(ema, data.classes, run.path / "samples" / f"student_{step:06d}.png", s.sample_cfg)
    bar.close()
    save_run(run, modules, opt, step, seconds)
    if step < s.steps:
        if d.main:
            print(f"stopped at distillation step {step}/{s.steps} (--minutes); rerun to continue", file=sys.stderr)
        return {"step": step, "done": False, "net": student.net, "unet": student.net}   # "unet": old name
    if not d.main:                 # calibration and gate training are cheap: rank 0 does them
        return {"step": step, "done": True, "net": student.net, "unet": student.net}
    result = _finish(s, run, ema, teacher, data, seconds)
    result["net"] = result["unet"] = student.net
    return result


def _finish(s: StudentSettings, run: RunDir, student: NitroGenModel, teacher: NitroGenModel, data,
            distill_seconds: float) -> dict:
    cfg = student.config
    t0 = time.monotonic()
    print("measuring width errors along teacher trajectories", file=sys.stderr)
    errors = width_errors(student.net, teacher.net, cfg, s.sample_steps, s.sample_cfg, n=16, seed=s.seed + 1)
    schedule = Schedule(cfg.train_timesteps)
    step_weight, _ = image_weights(schedule, schedule.sampling_timesteps(s.sample_steps))
    width_schedule = choose_width_schedule(errors, step_weight, s.width_error_bound, SCHEDULE_SEGMENTS)
    print(f"width schedule {width_schedule} (bound {s.width_error_bound})", file=sys.stderr)
    train = {"stage": "student", "teacher": s.teacher, "data": s.data, "distill_steps": s.steps,
             "width_error_bound": s.width_error_bound}
    result = calibrate_gate(s, run.path, student, width_schedule, data, train, {"width_errors": errors},
                            seconds_before=distill_seconds, t0=t0)
    return {"step": s.steps, "done": True, **result}


def calibrate_gate(s: CalibrationSettings, out_dir: Path, student: NitroGenModel, width_schedule: tuple[float, ...], data, train: dict,
                   summary: dict, seconds_before: float, t0: float) -> dict:
    """Train the gate of `student` and choose its default threshold; write out_dir/calibration.json
    and out_dir/student.safetensors. `s`: StudentSettings or GateSettings (with sample_steps and
    sample_cfg resolved); `train` and `summary` are the caller's metadata."""
    print(f"collecting gate trajectories ({s.gate_trajectories} train + 16 held out)", file=sys.stderr)
    trajectories = dict(model=student, width_schedule=width_schedule, steps=s.sample_steps, cfg_scale=s.sample_cfg,
                        forecast=s.forecast)
    train_set = gate_trajectories(n=s.gate_trajectories, seed=s.seed + 2, **trajectories)
    held_out = gate_trajectories(n=16, seed=s.seed + 3, **trajectories)
    torch.manual_seed(s.seed)
    gate_losses = train_gate(student.gate, train_set, s.gate_steps, seed=s.seed)
    n_on_policy = max(1, s.gate_trajectories // 2)
    print(f"on its own decisions: {n_on_policy} train + 16 held-out trajectories, thresholds {ON_POLICY_TAUS}",
          file=sys.stderr)
    on_policy = gate_trajectories(n=n_on_policy, seed=s.seed + 4, policy=student.gate, **trajectories)
    held_on_policy = gate_trajectories(n=16, seed=s.seed + 5, policy=student.gate, **trajectories)
    both = {k: torch.cat([train_set[k], on_policy[k]]) for k in train_set}
    gate_losses += train_gate(student.gate, both, max(1, s.gate_steps // 2), seed=s.seed + 1)
    student.gate.eval()
    report = gate_report(student.gate, held_out, thresholds=(0.02, 0.05, 0.1))
    report["on_policy"] = gate_report(student.gate, held_on_policy, thresholds=(0.02, 0.05, 0.1))
    print(f"gate held-out: log-RMSE {report['log_rmse']:.3f}, pearson {report['pearson']:.3f} (random skips); "
          f"{report['on_policy']['log_rmse']:.3f}, {report['on_policy']['pearson']:.3f} (its own decisions)",
          file=sys.stderr)

    rule = TailRule(s.tau_p1_psnr, s.tau_worst_psnr)
    print(f"choosing the default threshold on {s.tau_images} images: {rule.text()}", file=sys.stderr)
    counts = list(data.counts().values())
    tau_labels = proportional_labels(counts, s.tau_images)
    # the guards the threshold is calibrated with, stored as the checkpoint recommends them
    base = {"refresh_every": s.refresh_every,
            **{k: v for k, v in (("forecast", s.forecast), ("kv_forecast", s.kv_forecast),
                                 ("accumulate", s.accumulate)) if v},
            **({} if s.dense_above is None else {"dense_above": s.dense_above})}
    say = lambda m: print(m, file=sys.stderr, flush=True)
    sweep = threshold_sweep(student, width_schedule, s.sample_steps, s.sample_cfg, tau_labels, stop_rule=rule,
                            base=base, log=say)
    threshold, confirmation = confirm_threshold(student, width_schedule, s.sample_steps, s.sample_cfg, tau_labels,
                                                sweep, rule, base=base, log=say)
    print(f"default threshold {threshold}", file=sys.stderr)
    calib_seconds = time.monotonic() - t0

    summary = {**summary, "width_schedule": width_schedule, "gate": report,
               "threshold_rule": asdict(rule), "threshold_images": s.tau_images,
               "threshold_sweep": sweep, "threshold_confirmation": confirmation, "threshold": threshold,
               "gate_final_train_loss": sum(gate_losses[-50:]) / min(50, len(gate_losses)),
               "distill_seconds": round(seconds_before, 1), "calibration_seconds": round(calib_seconds, 1)}
    (out_dir / "calibration.json").write_text(json.dumps(summary, indent=1))
    out = out_dir / "student.safetensors"
    from ..__main__ import _git_commit
    save_checkpoint(out, student, kind="student", labels=list(data.classes), width_schedule=width_schedule,
                    train={**train, "seed": s.seed, "seconds": round(seconds_before + calib_seconds, 1),
                           "gate_log_rmse": report["log_rmse"], "class_counts": counts, "commit": _git_commit()},
                    sampler={"steps": s.sample_steps, "cfg": s.sample_cfg, "threshold": threshold, **base})
    print(f"student done: {out}", file=sys.stderr)
    return {"checkpoint": str(out), **summary}


# -- a new gate for a finished student (no teacher needed) ----------------------------------------------

@dataclass(frozen=True, kw_only=True)
class GateSettings(CalibrationSettings):
    """`train gate`: the calibration half of `train student` on a finished student checkpoint."""
    student: str
    data: str
    out_dir: str
    sample_steps: int | None = None  # None: the checkpoint's recommended steps
    sample_cfg: float | None = None  # None: the checkpoint's recommended guidance scale
    gate_age: bool = False           # the new gate also reads each patch's age (model/gate.py)


def retrain_gate(g: GateSettings) -> dict:
    """A fresh gate for a finished student, and a new default threshold: the student's network and
    width schedule are kept as they are; only the gate (optionally age-aware) and the sampler
    settings change. For a shipped checkpoint whose teacher is not at hand, or new guards."""
    t0 = time.monotonic()
    ck, data = _load_start(g.student, "student", g.data, g.kv_forecast)
    g = replace(g, sample_steps=g.sample_steps or ck.sampler.get("steps", 20),
                sample_cfg=ck.sampler.get("cfg", 1.5) if g.sample_cfg is None else g.sample_cfg)
    torch.manual_seed(g.seed)                                  # the fresh gate's initial weights
    student = NitroGenModel(replace(ck.config, gate_age=g.gate_age))
    student.net.load_state_dict(ck.model.net.state_dict())
    student.requires_grad_(False).eval()
    out_dir = Path(g.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = {"stage": "gate", "student": g.student, "data": g.data, "gate_age": g.gate_age, "student_train": ck.train}
    return calibrate_gate(g, out_dir, student, ck.width_schedule, data, train, {}, seconds_before=0.0, t0=t0)
