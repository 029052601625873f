"""What both training stages share: distributed setup, run folders, resumable training state
(safetensors, never pickle), EMA, the learning-rate schedule, batches and sample grids."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..errors import NitroGenInputError

STATE_FILE = "train_state.safetensors"


# -- distributed ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK; gloo on CPU, nccl on CUDA. A single process needs nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def broadcast_parameters(module: torch.nn.Module, d: Dist) -> None:
    """Every rank starts from rank 0's weights."""
    if d.world > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """All-reduce gradients as one flat bucket (the model is small), then divide by world size.
    Manual instead of DDP so a step may run several forwards (the sandwich rule) freely."""
    if d.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_mean(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / d.world


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


# -- schedule, EMA, batches ---------------------------------------------------------------------

def learning_rate(step: int, total: int, peak: float, warmup: int, final_fraction: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to `final_fraction * peak` at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def set_learning_rate(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_step(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, lr: float, d: Dist,
                   max_grad_norm: float = 1.0) -> torch.Tensor:
    """Average gradients across ranks, clip, set the learning rate and step; returns the grad norm."""
    average_gradients(params, d)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    set_learning_rate(opt, lr)
    opt.step()
    return grad_norm


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA with warm-up: decay = min(max_decay, (1 + step) / (10 + step)), so early weights fade fast."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def batch_indices(n_items: int, batch: int, step: int, seed: int, d: Dist) -> torch.Tensor:
    """This rank's sample indices for `step`: DistributedSampler semantics (each epoch a seeded
    permutation, split across ranks), computed from the step alone so resuming needs no state."""
    per_rank_epoch = max(1, n_items // d.world)
    steps_per_epoch = max(1, per_rank_epoch // batch)
    epoch, k = divmod(step, steps_per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    mine = perm[d.rank::d.world]
    if len(mine) < batch:                              # tiny data: repeat the permutation
        mine = mine.repeat(math.ceil(batch / len(mine)))
    return mine[k * batch:(k + 1) * batch] if (k + 1) * batch <= len(mine) else mine[:batch]


def step_generator(seed: int, step: int, d: Dist) -> torch.Generator:
    """Noise, timesteps and label dropout for one step and rank, reproducible on resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + d.rank)


# -- run folder and resumable state -------------------------------------------------------------

class RunDir:
    """RUN/config.json (resolved config and settings), RUN/log.jsonl, RUN/samples/*.png,
    RUN/train_state.safetensors (resumable), and the exported checkpoint."""

    def __init__(self, path: str | os.PathLike, d: Dist):
        self.path, self.d = Path(path), d
        if self.path.exists() and not self.path.is_dir():
            raise NitroGenInputError(f"--out {str(self.path)!r} exists and is not a directory")
        if d.main:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
        barrier(d)

    def check_or_write_config(self, settings: dict) -> None:
        """First run writes the settings; a rerun must ask for the same run, or it is refused."""
        file = self.path / "config.json"
        settings = json.loads(json.dumps(settings))        # tuples -> lists, as they read back
        if file.exists():
            saved = _with_resolved_config(json.loads(file.read_text()))
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k)
                             and k not in RESUMABLE_CHANGES)
            if changed:
                diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:4])
                raise NitroGenInputError(f"{file} was written by a different command ({diffs}); "
                                         f"use a new --out folder or rerun the same command to resume")
        if self.d.main:
            file.write_text(json.dumps(settings, indent=1, sort_keys=True))

    def log(self, record: dict) -> None:
        if self.d.main:
            with open(self.path / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def save_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Atomic: a crash mid-write leaves the previous state intact."""
        if not self.d.main:
            return
        tmp = self.state_file.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"nitrogen.train_state": json.dumps(meta)})
        os.replace(tmp, self.state_file)

    def load_state(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        if not self.state_file.exists():
            return None
        from safetensors import safe_open
        try:
            with safe_open(str(self.state_file), "pt") as f:
                meta = json.loads(f.metadata()["nitrogen.train_state"])
            return load_file(str(self.state_file)), meta
        except Exception as exc:   # noqa: BLE001 - any unreadable state is the same user-facing problem
            raise NitroGenInputError(f"{self.state_file} is unreadable ({exc}); delete it to restart the run") from None


def _with_resolved_config(saved: dict) -> dict:
    """A run's saved settings with its model config resolved as the current code reads it, so a
    config field added since the run started (at its default value) does not refuse the rerun."""
    from ..config import NitroGenConfig
    if not isinstance(saved.get("config"), dict):
        return saved
    try:
        resolved = NitroGenConfig.from_dict(saved["config"]).to_dict()
    except (ValueError, TypeError):
        return saved                                   # not readable now: compared as written
    return {**saved, "config": json.loads(json.dumps(resolved))}


# Settings a rerun may change without starting over: when to stop, log and save, and the student's
# post-training calibration (rerunning a finished student with a new bound, refresh period, forecast or
# guidance scale recalibrates width schedule, gate and threshold without distilling again).
RESUMABLE_CHANGES = {"minutes", "stop_after", "sample_every", "save_every",
                     "width_error_bound", "tau_p1_psnr", "tau_worst_psnr", "tau_images", "gate_trajectories",
                     "gate_steps", "refresh_every", "forecast", "kv_forecast", "accumulate", "dense_above",
                     "sample_cfg"}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"opt.{idx}.{key}": torch.as_tensor(value) for idx, st in sd["state"].items()
               for key, value in st.items()}
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(sub, strict=True)


def restore_run(run: "RunDir", modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
                d: Dist) -> tuple[int, float]:
    """Load RUN's training state into `modules` (by prefix) and `opt` if there is one, then make every
    rank hold rank 0's weights. Returns (step, seconds trained so far)."""
    step, seconds = 0, 0.0
    state = run.load_state()
    if state is not None:
        tensors, meta = state
        for prefix, module in modules.items():
            load_module(prefix, module, tensors)
        load_optimizer(opt, tensors, meta["param_groups"])
        step, seconds = meta["step"], meta["seconds"]
    for module in modules.values():
        broadcast_parameters(module, d)
    return step, seconds


def save_run(run: "RunDir", modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
             step: int, seconds: float) -> None:
    tensors, groups = optimizer_tensors(opt)
    for prefix, module in modules.items():
        tensors.update(module_tensors(prefix, module))
    run.save_state(tensors, {"step": step, "seconds": seconds, "param_groups": groups})


class Timer:
    """Budget of this invocation: `--minutes` of wall clock and/or a number of new steps.
    The run continues on the next rerun."""

    def __init__(self, minutes: float | None, new_steps: int | None = None, first_step: int = 0):
        self.start = time.monotonic()
        self.limit = None if minutes is None else minutes * 60.0
        self.last_step = None if new_steps is None else first_step + new_steps

    def expired(self, step: int) -> bool:
        if self.last_step is not None and step >= self.last_step:
            return True
        return self.limit is not None and time.monotonic() - self.start >= self.limit


def save_grid(images: torch.Tensor, path: Path, columns: int, scale: int = 2) -> None:
    """(N, 3, H, W) in [-1, 1] -> a PNG grid with `columns` images per row, upscaled `scale`x."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)   # (N, H, W, 3)
    canvas = torch.full((rows * (h + 2), columns * (w + 2), 3), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = arr[i]
    img = Image.fromarray(canvas.numpy())
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
