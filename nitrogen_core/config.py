"""One dataclass config plus named presets (nanoGPT/edm2 style).

The resolved config is stored inside every checkpoint (``nitrogen.config``), so a
checkpoint always rebuilds the exact network it was trained with.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

WIDTHS = (0.25, 0.5, 0.75, 1.0)
PREDICTIONS = ("eps", "v")


@dataclass(frozen=True)
class NitroGenConfig:
    # data
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 9                      # + 1 null class for CFG, index == num_classes
    # U-Net
    base_channels: int = 48
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level
    num_res_blocks: int = 1
    attn_levels: tuple[int, ...] = (2,)       # level indices (0 = full resolution) with self-attention
    head_channels: int = 32                   # channels per attention head (heads scale with width)
    group_channels: int = 4                   # channels per GroupNorm group, fixed across widths
    widths: tuple[float, ...] = WIDTHS        # selectable width multipliers
    # diffusion
    prediction: str = "v"                     # "eps" or "v"
    train_timesteps: int = 1000
    # adaptive compute
    patch_size: int = 8                       # gate/mask granularity in image pixels
    block_size: int = 8                       # sparse execution block edge in image pixels (merges patches)
    sparse_levels: tuple[int, ...] = (0, 1)   # resolution levels that execute sparsely
    gate_channels: int = 16

    def __post_init__(self) -> None:
        problems = []
        n_levels = len(self.channel_mult)
        if self.image_size % (2 ** (n_levels - 1)) != 0:
            problems.append(f"image_size={self.image_size} is not divisible by 2**(levels-1)={2 ** (n_levels - 1)}")
        if self.prediction not in PREDICTIONS:
            problems.append(f"prediction={self.prediction!r} is not one of {PREDICTIONS}")
        if not self.widths or any(w not in WIDTHS for w in self.widths) or 1.0 not in self.widths:
            problems.append(f"widths={self.widths} must be a subset of {WIDTHS} containing 1.0")
        if self.num_classes < 1:
            problems.append(f"num_classes={self.num_classes} must be >= 1")
        ps, bs = self.patch_size, self.block_size
        if ps < 2 or ps & (ps - 1) or self.image_size % ps:
            problems.append(f"patch_size={ps} must be a power of two >= 2 dividing image_size={self.image_size}")
        if bs % ps or self.image_size % bs:
            problems.append(f"block_size={bs} must be a multiple of patch_size={ps} and divide image_size={self.image_size}")
        for lvl in (*self.sparse_levels, *self.attn_levels):
            if not 0 <= lvl < n_levels:
                problems.append(f"level {lvl} is out of range for channel_mult={self.channel_mult}")
        for lvl in self.sparse_levels:
            if lvl in self.attn_levels:
                problems.append(f"level {lvl} has attention and cannot run sparsely")
            if bs % (2 ** lvl):
                problems.append(f"block_size={bs} is not divisible by 2**{lvl} for sparse level {lvl}")
        for c in self.level_channels(1.0):
            if c % self.group_channels:
                problems.append(f"level channels {c} are not a multiple of group_channels={self.group_channels}")
        if problems:
            raise ValueError("invalid NitroGen config: " + "; ".join(problems))

    # -- derived sizes -------------------------------------------------------------
    def channels_at(self, full_channels: int, width: float) -> int:
        """Active channels of a layer with `full_channels` at `width`: whole GroupNorm groups, at least one."""
        groups = max(1, round(width * full_channels / self.group_channels))
        return min(full_channels, groups * self.group_channels)

    def level_channels(self, width: float = 1.0) -> list[int]:
        return [self.channels_at(self.base_channels * m, width) for m in self.channel_mult]

    @property
    def emb_channels(self) -> int:
        return 4 * self.base_channels

    # -- (de)serialisation ---------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "NitroGenConfig":
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; known keys are {sorted(known)}")
        kwargs = {}
        for name, value in data.items():
            default = known[name].default
            if isinstance(default, tuple):
                if not isinstance(value, (list, tuple)):
                    raise ValueError(f"config key {name!r} must be a list, got {value!r}")
                value = tuple(value)
            elif isinstance(default, bool) or not isinstance(value, type(default)):
                if not (isinstance(default, float) and isinstance(value, int)):
                    raise ValueError(f"config key {name!r} must be {type(default).__name__}, got {value!r}")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "NitroGenConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc.msg} at char {exc.pos}") from None
        return cls.from_dict(data)


# -- named presets ---------------------------------------------------------------------
PRESETS: dict[str, NitroGenConfig] = {
    # A few hundred k params, 16 px: for unit tests only.
    "tiny": NitroGenConfig(
        image_size=16, num_classes=3, base_channels=16, channel_mult=(1, 1, 2), num_res_blocks=1,
        attn_levels=(2,), head_channels=16, group_channels=4, patch_size=2, block_size=4,
        sparse_levels=(0, 1), gate_channels=8,
    ),
    # The default 32x32 emoji model: 2.5 M params, 0.56 GMACs per forward at full width.
    # Chosen by a probe of 2-core training throughput (57 img/s, batch 32) against
    # base 64 / 2 res blocks (6.5 M params, 20 img/s); levels 0 and 1 hold ~8/9 of the
    # MACs, so sparse execution there can save most of the compute. Blocks of 8 px: at 25%
    # active, 4/8/16 px blocks ran at 0.80/0.64/0.56 of dense time (bench.sparse_speed);
    # 8 keeps 16 decisions per image. The gate's patch equals the block, since execution
    # (and so the compute record) cannot be finer than a block.
    "emoji32": NitroGenConfig(),
}


def preset(name: str, **overrides) -> NitroGenConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
