"""NitroGen Compute Map: NITROGEN_COMPUTE (+ optional IMAGE) -> heatmap IMAGE + stats STRING, previewed."""
from __future__ import annotations

import os
import uuid

import numpy as np
import torch
from PIL import Image

from ..nitrogen_core.compute import COLORMAPS, HEATMAP_MODES, SIZE_RANGE, ComputeRecord, heatmap_array, summary_text
from ..nitrogen_core.errors import NitroGenInputError
from . import _comfy

DEFAULT_SIZE = 256          # px per heatmap side: a 32 px image is too small for a legible legend
MAX_SIZE = 1024             # bounds memory: 64 heatmaps of 1024 px (+ legend) are ~1 GB as float32


def render_map(compute, mode="share", colormap="inferno", alpha=0.6, size=DEFAULT_SIZE, image=None):
    if not isinstance(compute, ComputeRecord):
        raise NitroGenInputError(f"compute is a {type(compute).__name__}; connect a NitroGen Adaptive Sampler's "
                                 "compute output")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not SIZE_RANGE[0] <= size <= MAX_SIZE:
        raise NitroGenInputError(f"size={size!r} must be an integer in {SIZE_RANGE[0]}..{MAX_SIZE}")
    heat = heatmap_array(compute, mode=mode, image=image, colormap=colormap, alpha=alpha, size=int(size))
    return heat, summary_text(compute)                                       # heat: (B, H, W, 3) float32


def save_previews(heat: np.ndarray) -> list[dict]:
    """One PNG per heatmap in ComfyUI's temp folder, in the form the frontend shows under an output node."""
    folder = _comfy.folder_paths().get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    prefix = f"nitrogen_heatmap_{uuid.uuid4().hex[:12]}"
    images = []
    for i, arr in enumerate(heat):
        filename = f"{prefix}_{i:05d}.png"
        Image.fromarray(np.rint(arr * 255.0).astype(np.uint8)).save(os.path.join(folder, filename),
                                                                     compress_level=1)
        images.append({"filename": filename, "subfolder": "", "type": "temp"})
    return images


class NitroGenComputeMap:
    DESCRIPTION = ("Shows where NitroGen's adaptive sampler spent compute: per patch, the share of steps it was "
                   "recomputed (share) or the step it exited (exit), or the U-Net width per step (width), with a "
                   "legend and the MACs saved. Drawn at a readable size (default 256 px per image), optionally "
                   "over the generated images.")
    CATEGORY = "NitroGen"
    FUNCTION = "render"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("heatmap", "stats")
    OUTPUT_TOOLTIPS = ("One heatmap per image, size x size px plus a legend panel on the right.",
                       "MACs used and saved, active patches, exits, MACs by kind of pass (scheduled dense, dense by "
                       "choice, sparse) and widths, as text.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "compute": ("NITROGEN_COMPUTE", {"tooltip": "The compute output of NitroGen Adaptive Sampler."}),
                "mode": (list(HEATMAP_MODES), {
                    "default": "share",
                    "tooltip": "share: fraction of steps each patch was recomputed. exit: step at which each "
                               "patch stopped being computed. width: U-Net width used at each step."}),
                "colormap": (list(COLORMAPS), {"default": "inferno", "tooltip": "Colour scale of the heatmap."}),
                "alpha": ("FLOAT", {
                    "default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Heatmap opacity over the connected image (1 = heatmap only). Unused without an "
                               "image and in width mode."}),
                "size": ("INT", {
                    "default": DEFAULT_SIZE, "min": SIZE_RANGE[0], "max": MAX_SIZE, "step": 32,
                    "tooltip": "Heatmap side in px, snapped to whole patches. The images are upscaled (nearest) "
                               "to it; a legend panel is added on the right."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "Optional: the sampler's images, drawn under the heatmap."}),
            },
        }

    def render(self, compute, mode="share", colormap="inferno", alpha=0.6, size=DEFAULT_SIZE, image=None):
        heat, text = render_map(compute, mode, colormap, alpha, size, image)
        images = save_previews(heat)
        tensor = torch.from_numpy(heat).to(_comfy.model_management().intermediate_device())
        return {"ui": {"images": images, "text": [text]}, "result": (tensor, text)}
