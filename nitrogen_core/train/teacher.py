"""Stage 1: train the full-width teacher (v-prediction, min-SNR loss weighting, EMA, CFG dropout).

    python -m nitrogen_core train teacher --data DIR --preset emoji32 --out RUN [--steps N] [--minutes M]

Rerunning the same command continues from RUN/train_state.safetensors. When --minutes runs out
the state is saved and the command exits 0; rerun it to go on. At the last step the EMA
weights are exported as RUN/teacher.safetensors (kind "teacher").
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from ..checkpoint import save_checkpoint
from ..config import preset
from ..diffusion import Schedule, training_target
from ..model import NitroGenModel
from ..sampler import SamplerSettings, make_noise, sample
from .common import (Dist, RunDir, Timer, all_mean, batch_indices, ema_update, init_distributed, learning_rate,
                     optimizer_step, restore_run, save_grid, save_run, step_generator)
from .data import load_image_folder


@dataclass(frozen=True)
class TeacherSettings:
    data: str
    out_dir: str
    preset: str = "emoji32"
    steps: int = 6000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    ema: float = 0.999
    label_dropout: float = 0.1      # CFG: train the null class this often
    min_snr: float = 5.0            # min-SNR-gamma loss weighting (Hang et al. 2023)
    seed: int = 0
    sample_every: int = 500
    save_every: int = 100
    minutes: float | None = None
    stop_after: int | None = None   # end this invocation after this many new steps (scripted runs, tests)
    sample_cfg: float = 1.5


def min_snr_weight(alpha: torch.Tensor, sigma: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Per-sample loss weight, Min-SNR-gamma: min(SNR, g)/SNR for eps, min(SNR, g)/(SNR + 1) for v."""
    snr = (alpha / sigma.clamp(min=1e-8)).square()
    return snr.clamp(max=gamma) / (snr + (1.0 if prediction == "v" else 0.0)).clamp(min=1e-8)


def diffusion_loss(net, x0: torch.Tensor, labels: torch.Tensor, schedule: Schedule, gen: torch.Generator,
                   prediction: str, gamma: float, width: float = 1.0) -> torch.Tensor:
    """One noisy-sample regression loss. x0 (B, C, H, W) in [-1, 1]; labels may include the null class."""
    B = x0.shape[0]
    t = torch.randint(0, schedule.timesteps, (B,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = alpha.view(B, 1, 1, 1), sigma.view(B, 1, 1, 1)
    x_t = alpha * x0 + sigma * eps
    target = training_target(x0, eps, alpha, sigma, prediction)
    pred = net(x_t, t.float(), labels, width)
    per_sample = (pred - target).square().mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weight(alpha.view(B), sigma.view(B), gamma, prediction)).mean()


def drop_labels(labels: torch.Tensor, null_class: int, p: float, gen: torch.Generator) -> torch.Tensor:
    drop = torch.rand(labels.shape, generator=gen) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def sample_grid(model: NitroGenModel, classes: tuple[str, ...], path, cfg_scale: float, columns: int = 8) -> None:
    """One row per class (the same noise in every row), full-compute DDIM at 20 steps."""
    noise = make_noise(model.config, columns, seed=1234)
    settings = SamplerSettings(steps=20, cfg=cfg_scale, mode="full")
    rows = [sample(model, noise, torch.full((columns,), k), settings).images for k in range(len(classes))]
    save_grid(torch.cat(rows), path, columns)


def train_teacher(s: TeacherSettings) -> dict:
    d = init_distributed()
    torch.set_num_threads(max(1, torch.get_num_threads() // d.world))
    data = load_image_folder(s.data, preset(s.preset).image_size)
    cfg = preset(s.preset, num_classes=len(data.classes))
    return _train(s, d, data, cfg)


def _train(s: TeacherSettings, d: Dist, data, cfg) -> dict:
    run = RunDir(s.out_dir, d)
    run.check_or_write_config({**asdict(s), "config": cfg.to_dict(), "classes": list(data.classes),
                               "world": d.world})
    torch.manual_seed(s.seed)
    model = NitroGenModel(cfg)
    net = model.net                                                          # the backbone: U-Net or DiT
    ema_model = copy.deepcopy(model).requires_grad_(False).eval()
    params = list(net.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=s.weight_decay)
    schedule = Schedule(cfg.train_timesteps)
    x_all = data.as_float()                                                  # (N, 3, H, W) in [-1, 1]

    modules = {"model": net, "ema": ema_model.net}
    step, trained_seconds = restore_run(run, modules, opt, d)
    if step and d.main:
        print(f"resuming {run.path} at step {step}/{s.steps}", file=sys.stderr)

    timer = Timer(s.minutes, s.stop_after, step)
    bar = tqdm(total=s.steps, initial=step, desc="teacher", unit="step", file=sys.stderr, disable=not d.main)
    last = time.monotonic()
    while step < s.steps and not timer.expired(step):
        gen = step_generator(s.seed, step, d)
        idx = batch_indices(len(x_all), s.batch, step, s.seed, d)
        labels = drop_labels(data.labels[idx], cfg.num_classes, s.label_dropout, gen)
        loss = diffusion_loss(net, x_all[idx], labels, schedule, gen, cfg.prediction, s.min_snr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = learning_rate(step, s.steps, s.lr, s.warmup)
        grad_norm = optimizer_step(params, opt, lr, d)
        ema_update(ema_model.net, net, step, s.ema)
        step += 1

        now = time.monotonic()
        trained_seconds += now - last
        loss_value = all_mean(loss.item(), d)
        if d.main:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{s.batch * d.world / max(now - last, 1e-9):.0f}")
        last = now
        if step % 25 == 0 or step == s.steps:
            run.log({"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                     "seconds": round(trained_seconds, 1)})
        if step % s.save_every == 0:
            save_run(run, modules, opt, step, trained_seconds)
        if d.main and (step % s.sample_every == 0 or step == s.steps):
            sample_grid(ema_model, data.classes, run.path / "samples" / f"teacher_{step:06d}.png", s.sample_cfg)
    bar.close()
    save_run(run, modules, opt, step, trained_seconds)

    done = step >= s.steps
    out = run.path / "teacher.safetensors"
    if done and d.main:
        save_checkpoint(out, ema_model, kind="teacher", labels=list(data.classes), width_schedule=(1.0,),
                        train={"stage": "teacher", "data": s.data, "steps": step, "seed": s.seed,
                               "batch": s.batch * d.world, "seconds": round(trained_seconds, 1),
                               "commit": _commit()},
                        sampler={"steps": 20, "cfg": s.sample_cfg})
    if d.main:
        msg = f"teacher done: {out}" if done else f"stopped at step {step}/{s.steps} (--minutes); rerun to continue"
        print(msg, file=sys.stderr)
    return {"step": step, "done": done, "checkpoint": str(out) if done else None, "seconds": trained_seconds,
            "net": net, "unet": net, "ema": ema_model}       # "unet": the key's old name


def _commit() -> str | None:
    from ..__main__ import _git_commit
    return _git_commit()
