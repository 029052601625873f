"""The compute record, heatmap rendering (LUT colormaps, Pillow only) and stats text.

The sampler writes one `ComputeRecord` per call (DESIGN §2). It is frozen and its arrays are
read-only, so the heatmap, the stats and the benchmark all read the same numbers and nobody can
quietly edit them. Every derived number (MACs used, savings, compute share) is computed from the
per-step masks and MACs on demand, never stored a second time.

Top-down: input coercion -> records -> colormaps -> rendering -> text summary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import NitroGenInputError

# --------------------------------------------------------------------------------------------
# Input coercion
# --------------------------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    """A fresh numpy copy of a torch tensor (any device) or array-like.

    Duck-typed on `.detach` so reading records never needs torch imported here.
    """
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.numpy().copy()
    return np.array(value, copy=True)


_REAL = (int, float, np.integer, np.floating)  # accepted number types (bool is rejected separately)


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def _as_int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; True as a size or MAC count is always a bug upstream.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise NitroGenInputError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise NitroGenInputError(f"{name}={value} must be an integer >= {minimum}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

# eq=False: the generated __eq__/__hash__ would compare/hash numpy arrays, which raises.
@dataclass(frozen=True, eq=False)
class StepRecord:
    index: int                               # 0-based sampling step
    timestep: int                            # diffusion timestep t of this step (>= 0)
    width: float                             # U-Net width used, in (0, 1]
    dense: np.ndarray                        # bool (B,): images computed whole by a dense forward (a bool: all or none)
    mask: np.ndarray = field(repr=False)     # bool (B, Hp, Wp): patches whose eps was recomputed
    macs: np.ndarray                         # int64 (B,): MACs executed this step per image, gate included
    scheduled: bool = False                  # adaptive: a dense step by schedule (warm-up, refresh, width change)

    def __post_init__(self) -> None:
        index = _as_int("step index", self.index, 0)
        where = f"step {index}"
        timestep = _as_int(f"{where}: timestep", self.timestep, 0)
        if isinstance(self.width, (bool, np.bool_)) or not isinstance(self.width, _REAL) \
                or not 0.0 < float(self.width) <= 1.0:
            raise NitroGenInputError(f"{where}: width={self.width!r} must be a number in (0, 1]")

        mask = _to_numpy(self.mask)
        if mask.ndim != 3 or 0 in mask.shape:
            raise NitroGenInputError(f"{where}: mask shape {tuple(mask.shape)} must be non-empty [B, Hp, Wp]")
        if mask.dtype != np.bool_:
            if mask.dtype.kind not in "iu" or not np.isin(mask, (0, 1)).all():
                raise NitroGenInputError(f"{where}: mask dtype {mask.dtype} must be bool (or integer 0/1)")
            mask = mask.astype(np.bool_)

        macs = _to_numpy(self.macs)
        if macs.shape != (mask.shape[0],):
            raise NitroGenInputError(
                f"{where}: macs shape {tuple(macs.shape)} must be [B]=({mask.shape[0]},) to match mask {tuple(mask.shape)}")
        if macs.dtype.kind not in "iu" or (macs < 0).any():
            raise NitroGenInputError(f"{where}: macs {macs.tolist()} must be non-negative integers")

        dense = _to_numpy(self.dense)
        if dense.dtype != np.bool_ or dense.shape not in ((), (mask.shape[0],)):
            raise NitroGenInputError(f"{where}: dense={self.dense!r} must be a bool or a bool array of "
                                     f"shape [B]=({mask.shape[0]},)")

        if not isinstance(self.scheduled, (bool, np.bool_)):
            raise NitroGenInputError(f"{where}: scheduled={self.scheduled!r} must be a bool")

        # Frozen dataclass: normalised values go in through object.__setattr__, once, here.
        object.__setattr__(self, "scheduled", bool(self.scheduled))
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "timestep", timestep)
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "dense", _frozen(np.broadcast_to(dense, (mask.shape[0],)).copy()))
        object.__setattr__(self, "mask", _frozen(mask))
        object.__setattr__(self, "macs", _frozen(macs.astype(np.int64)))

    @property
    def active_fraction(self) -> float:
        """Fraction of all patches (over the batch) recomputed at this step."""
        return float(self.mask.mean())


@dataclass(frozen=True, eq=False)
class ComputeRecord:
    image_size: int
    patch_size: int
    batch: int
    steps: tuple[StepRecord, ...]
    macs_full: int             # MACs per image of full compute (width 1.0, every patch, every step, same CFG)
    exited_at: np.ndarray      # int32 (B, Hp, Wp): step at which the patch exited, -1 if it never exited
    mode: str                  # "full" | "adaptive" | other sampler mode names

    @classmethod
    def build(cls, image_size: int, patch_size: int, steps, macs_full: int, exited_at, mode: str) -> "ComputeRecord":
        """Infer `batch` from the first step's mask; `exited_at=None` means no patch exited."""
        steps = tuple(steps)
        if not steps or not isinstance(steps[0], StepRecord):
            raise NitroGenInputError(f"steps must be a non-empty sequence of StepRecord, got {len(steps)} item(s)")
        batch = steps[0].mask.shape[0]
        if exited_at is None:
            grid = steps[0].mask.shape[1:]
            exited_at = np.full((batch, *grid), -1, dtype=np.int32)
        return cls(image_size, patch_size, batch, steps, macs_full, exited_at, mode)

    def __post_init__(self) -> None:
        image_size = _as_int("image_size", self.image_size, 1)
        patch_size = _as_int("patch_size", self.patch_size, 1)
        if image_size % patch_size:
            raise NitroGenInputError(f"patch_size={patch_size} must divide image_size={image_size}")
        batch = _as_int("batch", self.batch, 1)
        grid = image_size // patch_size
        expected = (batch, grid, grid)

        steps = tuple(self.steps)
        if not steps:
            raise NitroGenInputError("steps is empty; a compute record needs at least one step")
        for i, step in enumerate(steps):
            if not isinstance(step, StepRecord):
                raise NitroGenInputError(f"steps[{i}] is a {type(step).__name__}, must be a StepRecord")
            if step.index != i:
                raise NitroGenInputError(f"steps[{i}].index={step.index}; step indices must be 0..{len(steps) - 1} in order")
            if step.mask.shape != expected:
                raise NitroGenInputError(
                    f"step {i}: mask shape {step.mask.shape} does not match [B, Hp, Wp]={expected} "
                    f"(Hp = Wp = image_size {image_size} // patch_size {patch_size})")

        macs_full = _as_int("macs_full", self.macs_full, 1)

        exited_at = _to_numpy(self.exited_at)
        if exited_at.shape != expected:
            raise NitroGenInputError(f"exited_at shape {tuple(exited_at.shape)} does not match [B, Hp, Wp]={expected}")
        if exited_at.dtype.kind not in "iu" or exited_at.min() < -1 or exited_at.max() >= len(steps):
            raise NitroGenInputError(
                f"exited_at values {exited_at.min()}..{exited_at.max()} ({exited_at.dtype}) must be integers "
                f"in -1..{len(steps) - 1}")
        # The record is the single source of truth, so its two views must agree: an exited patch
        # is never recomputed after its exit step.
        masks = np.stack([s.mask for s in steps])                                  # (S, B, Hp, Wp)
        after_exit = np.arange(len(steps))[:, None, None, None] > exited_at         # (S, B, Hp, Wp)
        bad = np.argwhere(masks & after_exit & (exited_at >= 0))
        if len(bad):
            s, b, y, x = (int(v) for v in bad[0])
            raise NitroGenInputError(
                f"patch (b={b}, y={y}, x={x}) exited at step {int(exited_at[b, y, x])} but is recomputed at step {s}; "
                f"an exited patch must stay inactive")

        if not isinstance(self.mode, str) or not self.mode:
            raise NitroGenInputError(f"mode={self.mode!r} must be a non-empty string such as 'full' or 'adaptive'")

        for name, value in (("image_size", image_size), ("patch_size", patch_size), ("batch", batch),
                            ("steps", steps), ("macs_full", macs_full),
                            ("exited_at", _frozen(exited_at.astype(np.int32)))):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        # The default repr would print every mask; this one stays one line.
        return (f"ComputeRecord(mode={self.mode!r}, batch={self.batch}, steps={len(self.steps)}, "
                f"image_size={self.image_size}, patch_size={self.patch_size}, "
                f"saved_fraction={self.saved_fraction:.4f})")

    # -- derived (computed on demand from the per-step data) ---------------------------------
    @property
    def grid(self) -> int:
        """Patches per side: Hp = Wp."""
        return self.image_size // self.patch_size

    @property
    def widths(self) -> tuple[float, ...]:
        return tuple(s.width for s in self.steps)

    @property
    def macs_used_per_image(self) -> np.ndarray:
        """int64 (B,): MACs executed per image over all steps, gate included."""
        return np.sum([s.macs for s in self.steps], axis=0, dtype=np.int64)

    @property
    def macs_used(self) -> int:
        """Mean over the batch of MACs executed per image, rounded to an integer."""
        return int(round(float(self.macs_used_per_image.mean())))

    def mac_composition(self) -> dict[str, float]:
        """Where the MACs went, as fractions of full compute (mean over the batch), summing to
        macs_used / macs_full: `scheduled`, whole-image passes on the sampler's scheduled dense
        steps (warm-up, refresh, width change); `chosen_dense`, whole-image passes on other steps
        (an image wanting more than dense_above of its units); `sparse`, everything else (sparse
        passes and gate calls). Only `sparse` is per-unit compute."""
        scheduled = chosen = sparse = 0.0
        for s in self.steps:
            dense_macs = float((s.macs * s.dense).sum())
            if s.scheduled:
                scheduled += dense_macs
            else:
                chosen += dense_macs
            sparse += float(s.macs.sum()) - dense_macs
        scale = 1.0 / (self.batch * self.macs_full)
        return {"scheduled": scheduled * scale, "chosen_dense": chosen * scale, "sparse": sparse * scale}

    @property
    def saved_fraction(self) -> float:
        """1 - macs_used / macs_full. Negative when the gate's overhead is not repaid (e.g. tau = 0)."""
        return 1.0 - self.macs_used / self.macs_full

    @property
    def saved_fraction_per_image(self) -> np.ndarray:
        """float64 (B,): 1 - macs_used_per_image / macs_full."""
        return 1.0 - self.macs_used_per_image / self.macs_full

    def compute_share(self) -> np.ndarray:
        """float32 (B, Hp, Wp): fraction of the steps at which each patch was recomputed."""
        return np.mean([s.mask for s in self.steps], axis=0, dtype=np.float64).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (plain Python scalars and short lists; no per-patch arrays)."""
        return {
            "mode": self.mode,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "batch": self.batch,
            "steps": len(self.steps),
            "macs_full": self.macs_full,
            "macs_used": self.macs_used,
            "macs_used_per_image": [int(v) for v in self.macs_used_per_image],
            "saved_fraction": self.saved_fraction,
            "active_fraction": float(np.mean([s.active_fraction for s in self.steps])),
            "exited_fraction": float((self.exited_at >= 0).mean()),
            "mac_composition": self.mac_composition(),
            "per_step": [
                {"index": s.index, "timestep": s.timestep, "width": s.width, "scheduled": s.scheduled,
                 "dense_fraction": float(s.dense.mean()),
                 "active_fraction": s.active_fraction, "macs_mean": float(s.macs.mean())}
                for s in self.steps
            ],
        }


# --------------------------------------------------------------------------------------------
# Colormaps: 256-entry uint8 LUTs, applied by numpy indexing
# --------------------------------------------------------------------------------------------

# Polynomial fits, coefficients in ascending powers of t, one (R, G, B) row per power.
# inferno / viridis / magma: degree-6 minimax fits to matplotlib's maps by mattz,
#   https://www.shadertoy.com/view/WlfXRN (CC0), fitted to BIDS/colormap colormaps.py (CC0).
# turbo: degree-5 fit by Ruofei Du to Anton Mikhailov's Turbo LUT (Google, Apache-2.0),
#   https://gist.github.com/mikhailov-work/0d177465a8151eb6ede1768d51d476c7
# The fits are close to, not identical with, the published LUTs (e.g. viridis[0] comes out
# (71, 1, 85) vs matplotlib's (68, 1, 84); the Turbo fit is coarsest at its dark ends). They
# overshoot [0, 1] slightly at the ends, hence the clip below.
_POLY_COEFFS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "inferno": (
        (0.0002189403691192265, 0.001651004631001012, -0.01948089843709184),
        (0.1065134194856116, 0.5639564367884091, 3.932712388889277),
        (11.60249308247187, -3.972853965665698, -15.9423941062914),
        (-41.70399613139459, 17.43639888205313, 44.35414519872813),
        (77.162935699427, -33.40235894210092, -81.80730925738993),
        (-71.31942824499214, 32.62606426397723, 73.20951985803202),
        (25.13112622477341, -12.24266895238567, -23.07032500287172),
    ),
    "viridis": (
        (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
        (0.1050930431085774, 1.404613529898575, 1.384590162594685),
        (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
        (-4.634230498983486, -5.799100973351585, -19.33244095627987),
        (6.228269936347081, 14.17993336680509, 56.69055260068105),
        (4.776384997670288, -13.74514537774601, -65.35303263337234),
        (-5.435455855934631, 4.645852612178535, 26.3124352495832),
    ),
    "magma": (
        (-0.002136485053939582, -0.000749655052795221, -0.005386127855323933),
        (0.2516605407371642, 0.6775232436837668, 2.494026599312351),
        (8.353717279216625, -3.577719514958484, 0.3144679030132573),
        (-27.66873308576866, 14.26473078096533, -13.64921318813922),
        (52.17613981234068, -27.94360607168351, 12.94416944238394),
        (-50.76852536473588, 29.04658282127291, 4.23415299384598),
        (18.65570506591883, -11.48977351997711, -5.601961508734096),
    ),
    "turbo": (
        (0.13572138, 0.09140261, 0.10667330),
        (4.61539260, 2.19418839, 12.64194608),
        (-42.66032258, 4.84296658, -60.58204836),
        (132.13108234, -14.18503333, 110.36276771),
        (-152.94239396, 4.27729857, -89.90310912),
        (59.28637943, 2.82956604, 27.34824973),
    ),
}


def _poly_lut(coeffs) -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)
    rgb = np.polynomial.polynomial.polyval(t, np.asarray(coeffs, dtype=np.float64))  # (3, 256)
    return np.clip(np.rint(rgb.T * 255.0), 0, 255).astype(np.uint8)                   # (256, 3)


_LUTS: dict[str, np.ndarray] = {name: _frozen(_poly_lut(c)) for name, c in _POLY_COEFFS.items()}
_LUTS["gray"] = _frozen(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))

COLORMAPS: tuple[str, ...] = ("inferno", "viridis", "magma", "turbo", "gray")


def colormap_lut(name: str) -> np.ndarray:
    """The read-only uint8 (256, 3) LUT of a colormap in COLORMAPS."""
    if name not in _LUTS:
        raise NitroGenInputError(f"colormap={name!r} is not one of {COLORMAPS}")
    return _LUTS[name]


def apply_colormap(values: np.ndarray, name: str) -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 RGB: shape (...) -> (..., 3)."""
    lut = colormap_lut(name)
    idx = np.rint(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.intp)
    return lut[idx]


# --------------------------------------------------------------------------------------------
# Heatmap rendering
# --------------------------------------------------------------------------------------------

HEATMAP_MODES: tuple[str, ...] = ("share", "exit", "width")
SIZE_RANGE = (32, 4096)            # px per heatmap side; the cap bounds memory (DESIGN §6)
_BACKGROUND = (255, 255, 255)      # legend panel and width-strip background
_INK = (20, 20, 20)                # legend text and outlines
_GRID = (200, 200, 200)            # width-strip gridlines


def _snap_size(size: Any, grid: int) -> int:
    """Nearest multiple of the patch grid (ties round up), so every patch gets a whole pixel block."""
    lo, hi = SIZE_RANGE
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or not lo <= size <= hi:
        raise NitroGenInputError(f"size={size!r} must be an integer in {lo}..{hi} (pixels per heatmap side)")
    return max(1, (int(size) + grid // 2) // grid) * grid


def _overlay_pixels(image: Any, batch: int, size: int) -> np.ndarray:
    """uint8 (B, size, size, 3) from a [B, H, W, 3] float 0..1 (clipped) or uint8 image batch."""
    arr = _to_numpy(image)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise NitroGenInputError(f"image shape {tuple(arr.shape)} must be [B, H, W, 3]")
    if arr.shape[0] != batch:
        raise NitroGenInputError(f"image batch size {arr.shape[0]} does not match the compute record's batch size {batch}")
    if arr.shape[1] != arr.shape[2]:
        raise NitroGenInputError(f"image shape {tuple(arr.shape)} must be square (H == W) to align with the patch grid")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise NitroGenInputError("image contains NaN or infinite values; expected floats in 0..1")
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise NitroGenInputError(f"image dtype {arr.dtype} must be float (0..1) or uint8")
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.NEAREST)) for a in arr])


def _patch_values(record: ComputeRecord, mode: str) -> np.ndarray:
    """float (B, Hp, Wp) in [0, 1] for the spatial modes."""
    if mode == "share":
        return record.compute_share()
    # "exit": step k -> k / S; never exited -> S / S = 1, i.e. drawn as exiting after the last step.
    n = len(record.steps)
    return np.where(record.exited_at >= 0, record.exited_at, n) / n


def _width_strip(record: ComputeRecord, lut: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3) bar chart: one column per step, bar height and colour = width.

    Bars get a dark outline (when at least 4 px wide, so narrow bars keep their colour) and the
    background faint gridlines at widths 0.25/0.5/0.75, so the light top colours of
    inferno/magma/gray stay visible on white and widths can be read off.
    """
    canvas = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for w in (0.25, 0.5, 0.75):
        y = size - int(round(w * size))
        draw.line((0, y, size - 1, y), fill=_GRID)
    edges = np.linspace(0, size, len(record.steps) + 1).round().astype(int)
    outline = _INK if size // len(record.steps) >= 4 else None
    for step, x0, x1 in zip(record.steps, edges[:-1], edges[1:]):
        top = size - int(round(step.width * size))
        colour = tuple(int(c) for c in lut[int(round(step.width * 255))])
        draw.rectangle((int(x0), top, max(int(x0), int(x1) - 1), size - 1), fill=colour, outline=outline)
    return np.asarray(canvas)


@lru_cache(maxsize=8)
def _legend_font(size: int):
    # Scale text with the heatmap so the legend stays legible on large renders.
    px = max(12, size // 20)
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ImportError):
        # Pillow < 10.1 (pyproject allows >= 9.5) has no `size`, and a build without FreeType
        # cannot scale: both fall back to the fixed bitmap font; the layout measures whatever it gets.
        return ImageFont.load_default()


# The widest footer any record can produce (saved is at most 100%, and slightly negative when the
# gate's MACs ride on all-dense steps); the panel is sized for it, so its width never depends on
# one image's figure and every heatmap of a batch has the same shape (they are stacked).
_WIDEST_FOOTERS = ("MACs saved: 100.0%", "MACs saved: -100.0%")


def _legend_width(size: int, title: str, lo: str, hi: str, footers: list[str]) -> int:
    """Panel width in px for a heatmap of side `size`: fits the title, the colorbar with its tick
    labels, and the widest of `footers` and _WIDEST_FOOTERS."""
    font = _legend_font(size)

    def text_w(text: str) -> int:
        return font.getbbox(text)[2]

    pad = max(4, font.getbbox("Ag%")[3] // 2)
    bar_w = max(10, size // 20)
    tick_w = max(text_w(lo), text_w(hi))
    footer_w = max(text_w(f) for f in (*footers, *_WIDEST_FOOTERS))
    return 2 * pad + max(text_w(title), footer_w, bar_w + pad + tick_w)


def _with_legend(heat: Image.Image, lut: np.ndarray, title: str, lo: str, hi: str, footer: str,
                 width: int) -> Image.Image:
    """Append a panel `width` px wide on the right (see _legend_width): title, vertical colorbar
    with min/max labels, MACs-saved line.

    The output is `heat.height` tall unless the legend needs more room (small sizes), in which case
    the heatmap sits at the top and the rest is background.
    """
    size = heat.height
    font = _legend_font(size)
    # Height of a line drawn at y: ink spans y..y + text_h (bbox bottom includes the top bearing).
    text_h = font.getbbox("Ag%")[3]
    pad = max(4, text_h // 2)
    bar_w = max(10, size // 20)
    line = pad + text_h + pad                                   # a text row with its padding
    height = max(size, 2 * line + 2 * text_h + pad)             # the colorbar fits both tick labels

    panel = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(panel)
    draw.text((pad, pad), title, fill=_INK, font=font)
    draw.text((pad, height - pad - text_h), footer, fill=_INK, font=font)

    y0, y1 = line, height - line                                 # colorbar top/bottom rows
    bar = lut[np.linspace(255, 0, y1 - y0).round().astype(np.intp)]  # (rows, 3), high values on top
    panel.paste(Image.fromarray(np.repeat(bar[:, None], bar_w, axis=1)), (pad, y0))
    draw.rectangle((pad - 1, y0 - 1, pad + bar_w, y1), outline=_INK)
    tick_x = pad + bar_w + pad
    draw.text((tick_x, y0), hi, fill=_INK, font=font)
    draw.text((tick_x, y1 - text_h), lo, fill=_INK, font=font)

    out = Image.new("RGB", (size + width, height), _BACKGROUND)
    out.paste(heat, (0, 0))
    out.paste(panel, (size, 0))
    return out


def render_heatmap(record: ComputeRecord, mode: str = "share", image: Any = None, colormap: str = "inferno",
                   alpha: float = 0.6, size: int = 256, legend: bool = True) -> list[Image.Image]:
    """One RGB heatmap per batch item.

    mode:
      "share": fraction of steps at which each patch was recomputed (0..1);
      "exit":  step at which each patch exited / number of steps; never-exited patches get the top value;
      "width": U-Net width per step as a bar strip, the same for every batch item.
    image:   optional [B, H, W, 3] (H == W) float 0..1 or uint8, torch or numpy. It is resized (nearest)
             and blended as (1 - alpha) * image + alpha * heat. The width strip is not spatial, so it
             is drawn without the overlay.
    size:    heatmap side in px, 32..4096, snapped to the nearest multiple of the patch grid so that
             patches upsample (nearest) to whole pixel blocks.
    legend:  append a panel on the right (so the output is wider than `size`) with the title, a
             colorbar with min/max labels and this image's "MACs saved" line. Below about 100 px the
             legend needs more height than the heatmap; the output then grows downwards.
    """
    if not isinstance(record, ComputeRecord):
        raise NitroGenInputError(f"record is a {type(record).__name__}, must be a ComputeRecord")
    if mode not in HEATMAP_MODES:
        raise NitroGenInputError(f"mode={mode!r} is not one of {HEATMAP_MODES}")
    lut = colormap_lut(colormap)
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, _REAL) \
            or not 0.0 <= float(alpha) <= 1.0:
        raise NitroGenInputError(f"alpha={alpha!r} must be a number in [0, 1]")
    size = _snap_size(size, record.grid)
    overlay = None if image is None else _overlay_pixels(image, record.batch, size)

    n = len(record.steps)
    if mode == "width":
        strip = _width_strip(record, lut, size)
        heats = [strip] * record.batch
        title, lo, hi = "width", "0", "1"
    else:
        block = size // record.grid
        values = _patch_values(record, mode)                                          # (B, Hp, Wp)
        heats = np.repeat(np.repeat(apply_colormap(values, colormap), block, axis=1), block, axis=2)
        if overlay is not None:
            a = float(alpha)
            heats = np.rint((1.0 - a) * overlay + a * heats).astype(np.uint8)        # (B, size, size, 3)
        if mode == "share":
            title, lo, hi = "compute share", "0%", f"100% ({n} steps)"
        else:
            title, lo, hi = "exit step", "0", f"{n} = never exited"

    footers = [f"MACs saved: {100 * s:.1f}%" for s in record.saved_fraction_per_image]
    panel_width = _legend_width(size, title, lo, hi, footers) if legend else 0
    images = []
    for b in range(record.batch):
        img = Image.fromarray(heats[b])
        if legend:
            img = _with_legend(img, lut, title, lo, hi, footers[b], panel_width)
        images.append(img)
    return images


def heatmap_array(record: ComputeRecord, **kwargs: Any) -> np.ndarray:
    """render_heatmap(...) stacked as float32 (B, H, W, 3) in 0..1 (ComfyUI IMAGE layout)."""
    images = render_heatmap(record, **kwargs)
    return np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])


# --------------------------------------------------------------------------------------------
# Text summary
# --------------------------------------------------------------------------------------------


def _run_lengths(widths: tuple[float, ...]) -> str:
    """(0.5, 0.5, 1.0) -> '0.5 x2, 1 x1': the width schedule in step order, compactly."""
    runs: list[list] = []
    for w in widths:
        if runs and runs[-1][0] == w:
            runs[-1][1] += 1
        else:
            runs.append([w, 1])
    return ", ".join(f"{w:g} x{k}" for w, k in runs)


def summary_text(record: ComputeRecord) -> str:
    """A few human-readable lines describing where the compute went."""
    d = record.to_dict()
    grid = record.grid
    lines = [
        f"mode {record.mode}: {d['steps']} steps, batch {record.batch}, {record.image_size}x{record.image_size} px, "
        f"{record.patch_size}x{record.patch_size} px patches ({grid}x{grid} grid)",
        f"MACs per image: full {record.macs_full / 1e9:.4g} GMACs, used {record.macs_used / 1e9:.4g} GMACs, "
        f"saved {100 * record.saved_fraction:.1f}%",
    ]
    if record.batch > 1:
        per_image = 100 * record.saved_fraction_per_image
        lines.append(f"saved per image: {per_image.min():.1f}% .. {per_image.max():.1f}%")
    dense = np.sum([s.dense for s in record.steps], axis=0)                    # (B,) dense steps per image
    dense_text = f"{dense.min()}" if dense.min() == dense.max() else f"{dense.min()}..{dense.max()}"
    lines.append(f"active patches: {100 * d['active_fraction']:.1f}% per step on average, "
                 f"{dense_text} dense step(s) per image, "
                 f"{100 * d['exited_fraction']:.1f}% of patches exited")
    if record.mode == "adaptive":
        comp = d["mac_composition"]
        lines.append(f"MACs by kind of pass, % of full compute: {100 * comp['scheduled']:.1f} scheduled dense "
                     f"(warm-up, refresh), {100 * comp['chosen_dense']:.1f} dense by choice, "
                     f"{100 * comp['sparse']:.1f} sparse and gate")
    lines.append(f"widths by step: {_run_lengths(record.widths)}")
    return "\n".join(lines)
