"""NitroGen Adaptive Sampler: NITROGEN_MODEL -> IMAGE + NITROGEN_COMPUTE."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..nitrogen_core.checkpoint import resolve_label
from ..nitrogen_core.errors import NitroGenInputError
from ..nitrogen_core.sampler import LIMITS, MAX_BATCH, SamplerSettings, make_noise, sample
from . import _comfy
from .loader import NitroGenModelHandle, known_labels

MAX_SEED = 0xFFFFFFFFFFFFFFFF                  # torch.Generator.manual_seed takes any 64-bit value
PREVIEW_MAX = 512                              # ComfyUI's default preview size (--preview-size)
DEFAULTS = SamplerSettings()                   # widget defaults are static: the core's defaults
# steps, cfg, threshold and budget are set by the widgets; everything else (warm-up, refresh, skip
# cap, exit patience) comes from the checkpoint (LoadedCheckpoint.recommended_guards), since those
# guards are calibrated with the model.
# The least budget offered runs on every bundled model at the default 20 steps (tests/test_nodes.py
# checks both): the U-Net's cheapest step (width 0.25) is 0.064 of a full-width one, 0.0032 of full
# compute; the transformer's is 0.27 (its token embedding, attention over all keys and per-image
# conditioning do not slim), 0.0135 of full compute.
BUDGET_MIN = 0.02


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise NitroGenInputError(f"{name}={value!r} must be an integer in {lo}..{hi}")
    return int(value)


def preview_image(x0: torch.Tensor) -> Image.Image:
    """x0 (B, C, H, W) in about [-1, 1] -> one near-square grid, upscaled (nearest) towards PREVIEW_MAX.

    Both the step previews and the final images the node shows are drawn by this, so they look
    the same. ComfyUI resizes previews bilinearly to fit its preview size; upscaling 32 px images
    ourselves with nearest keeps them sharp."""
    arr = ((x0.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()                                # (B, H, W, 3)
    b, h, w, _ = arr.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = arr[i]
    scale = max(1, PREVIEW_MAX // max(grid.shape[:2]))
    img = Image.fromarray(grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def settings_for(handle: NitroGenModelHandle, steps, cfg, threshold, budget) -> SamplerSettings:
    settings = SamplerSettings(**handle.checkpoint.recommended_guards(), steps=steps, cfg=cfg, threshold=threshold,
                               budget=budget, mode="adaptive")
    return settings.validate()


def run_sampler(handle, seed, label, batch_size, steps, cfg, threshold, budget):
    if not isinstance(handle, NitroGenModelHandle):
        raise NitroGenInputError(f"model is a {type(handle).__name__}; connect a NitroGen Loader's model output")
    ck = handle.checkpoint
    seed = _check_int("seed", seed, 0, MAX_SEED)
    batch_size = _check_int("batch_size", batch_size, 1, MAX_BATCH)
    label_index = resolve_label(ck.labels, label)
    settings = settings_for(handle, steps, cfg, threshold, budget)

    mm = _comfy.model_management()
    mm.throw_exception_if_processing_interrupted()
    bar = _comfy.utils().ProgressBar(settings.steps)

    def on_step(step: int, total: int, x0: torch.Tensor) -> None:
        # Raising here aborts the sampler, so an interrupt stops within one step.
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(step + 1, total, ("JPEG", preview_image(x0), PREVIEW_MAX))

    device = next(ck.model.parameters()).device
    noise = make_noise(ck.config, batch_size, seed).to(device)                 # (B, C, H, W)
    labels = torch.full((batch_size,), label_index, dtype=torch.long, device=device)
    with torch.inference_mode():
        result = sample(ck.model, noise, labels, settings, width_schedule=ck.width_schedule,
                        callback=on_step)
        images = ((result.images.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)   # (B, H, W, 3)
        shown = preview_image(result.images)
    # Out of inference mode: downstream nodes may run outside it and write into their inputs.
    images = images.clone().contiguous().to(mm.intermediate_device())
    return images, result.record, shown


class NitroGenAdaptiveSampler:
    DESCRIPTION = ("Generates images of one class with NitroGen's adaptive sampler: deterministic DDIM with "
                   "classifier-free guidance that recomputes only the patches whose predicted change is at or "
                   "above the threshold, under a hard cap on MACs per image. Threshold 0 computes everything "
                   "and reproduces the full model exactly. Shows its images in the node, upscaled (nearest).")
    CATEGORY = "NitroGen"
    FUNCTION = "generate"
    # It shows its final images itself (below), so Loader -> Sampler is a complete graph ComfyUI runs.
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "NITROGEN_COMPUTE")
    RETURN_NAMES = ("images", "compute")
    OUTPUT_TOOLTIPS = ("The generated images, at the model's resolution (32x32 for the bundled model).",
                       "Where the sampler spent compute, per step and patch: connect NitroGen Compute Map.")

    @classmethod
    def INPUT_TYPES(cls):
        s_lo, s_hi = LIMITS["steps"]
        c_lo, c_hi = LIMITS["cfg"]
        t_lo, t_hi = LIMITS["threshold"]
        return {
            "required": {
                "model": ("NITROGEN_MODEL", {"tooltip": "A model from NitroGen Loader."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Noise seed. The same seed, label and settings give the same images on any device."}),
                "label": (known_labels(), {
                    "tooltip": "Class to generate. Lists the class names of every available checkpoint; the run "
                               "fails with the valid names if the loaded model does not know this one."}),
                "batch_size": ("INT", {
                    "default": 4, "min": 1, "max": MAX_BATCH,
                    "tooltip": "Number of images, each from its own noise."}),
                "steps": ("INT", {
                    "default": DEFAULTS.steps, "min": s_lo, "max": s_hi,
                    "tooltip": "Denoising steps (DDIM)."}),
                "cfg": ("FLOAT", {
                    "default": DEFAULTS.cfg, "min": c_lo, "max": c_hi, "step": 0.1,
                    "tooltip": "Classifier-free guidance scale. 1.0 runs no unconditional pass (half the MACs)."}),
                "threshold": ("FLOAT", {
                    "default": DEFAULTS.threshold, "min": t_lo, "max": t_hi, "step": 0.001,
                    "tooltip": "Quality threshold tau: a patch whose recomputation is predicted to change the final "
                               "image by less than this (pixels in -1..1) reuses its cached prediction. 0 = full "
                               "compute (full width, every patch, every step). Above 0 the checkpoint's per-step "
                               "width schedule applies too."}),
                "budget": ("FLOAT", {
                    "default": DEFAULTS.budget, "min": BUDGET_MIN, "max": 1.0, "step": 0.01,
                    "tooltip": "Most MACs allowed per image, as a fraction of full compute. Never exceeded, "
                               "whatever the gate says. Below one full-width step (1/steps) every step runs "
                               "narrower (down to width 0.25, ~6% of a step's MACs); at 20 steps any budget "
                               "here works, with fewer steps an error names the least one."}),
            }
        }

    def generate(self, model, seed, label, batch_size, steps, cfg, threshold, budget):
        images, record, shown = run_sampler(model, seed, label, batch_size, steps, cfg, threshold, budget)
        # The final images, drawn in the node as one grid like the step previews. ComfyUI keeps a
        # node's "ui" in its cache and history and re-sends it when the node is cached
        # (execution.py: execute), so they show after every run, not only after one that sampled.
        return {"ui": {"images": [_comfy.save_temp_png(shown, "nitrogen_samples")]}, "result": (images, record)}
