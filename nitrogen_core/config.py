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
BACKBONES = ("unet", "dit")


@dataclass(frozen=True)
class NitroGenConfig:
    # data
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 9                      # + 1 null class for CFG, index == num_classes
    backbone: str = "unet"                    # "unet" (model/unet.py) or "dit" (model/dit.py)
    # U-Net
    base_channels: int = 48
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level
    num_res_blocks: int = 1
    attn_levels: tuple[int, ...] = (2,)       # level indices (0 = full resolution) with self-attention
    head_channels: int = 32                   # channels per attention head (heads scale with width)
    group_channels: int = 4                   # channels per GroupNorm group, fixed across widths
    widths: tuple[float, ...] = WIDTHS        # selectable width multipliers
    # DiT (backbone "dit"): a width keeps ceil(w * heads) heads and round(w * hidden) MLP units
    token_size: int = 4                       # token edge in image pixels
    dit_dim: int = 192                        # residual stream channels (full at every width)
    dit_depth: int = 6                        # transformer blocks
    dit_heads: int = 4                        # attention heads at width 1.0 (head size dit_dim // dit_heads)
    dit_mlp_ratio: int = 4                    # MLP hidden units = dit_mlp_ratio * dit_dim
    dit_overlap: int = 0                      # px each token's input and output windows reach past its edges
    # diffusion
    prediction: str = "v"                     # "eps" or "v"
    train_timesteps: int = 1000
    # adaptive compute
    patch_size: int = 8                       # gate/mask granularity in image pixels
    block_size: int = 8                       # sparse execution block edge in image pixels (merges patches)
    sparse_levels: tuple[int, ...] = (0, 1)   # resolution levels that execute sparsely
    gate_channels: int = 16
    gate_age: bool = False                    # the gate also sees each patch's age (steps since it was computed;
                                              # model/gate.py); opt-in: `train gate --gate-age`

    def __post_init__(self) -> None:
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"backbone={self.backbone!r} is not one of {BACKBONES}")
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
        if self.backbone == "unet":
            problems += self._unet_problems()
        elif self.backbone == "dit":
            problems += self._dit_problems()
        if problems:
            raise ValueError("invalid NitroGen config: " + "; ".join(problems))

    def _unet_problems(self) -> list[str]:
        problems, n_levels, bs = [], len(self.channel_mult), self.block_size
        if self.image_size % (2 ** (n_levels - 1)) != 0:
            problems.append(f"image_size={self.image_size} is not divisible by 2**(levels-1)={2 ** (n_levels - 1)}")
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
        return problems

    def _dit_problems(self) -> list[str]:
        problems, ts = [], self.token_size
        if ts < 1 or self.image_size % ts or self.block_size % ts:
            problems.append(f"token_size={ts} must be >= 1 and divide image_size={self.image_size} and "
                            f"block_size={self.block_size} (a sparse unit is whole tokens)")
        if self.dit_depth < 1 or self.dit_heads < 1 or self.dit_mlp_ratio < 1:
            problems.append(f"dit_depth={self.dit_depth}, dit_heads={self.dit_heads} and "
                            f"dit_mlp_ratio={self.dit_mlp_ratio} must be >= 1")
        elif self.dit_dim < 4 or self.dit_dim % 4 or self.dit_dim % self.dit_heads:
            problems.append(f"dit_dim={self.dit_dim} must be a multiple of 4 (2-D sincos positions) and of "
                            f"dit_heads={self.dit_heads}")
        if not 0 <= self.dit_overlap <= max(ts, 0):
            problems.append(f"dit_overlap={self.dit_overlap} must be between 0 and token_size={ts}")
        return problems

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
            elif isinstance(default, bool) or isinstance(value, bool):
                if not (isinstance(default, bool) and isinstance(value, bool)):    # no 1 for True, no True for 1
                    raise ValueError(f"config key {name!r} must be {type(default).__name__}, got {value!r}")
            elif not isinstance(value, type(default)):
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
    # The transformer for tests: 16 px, 2 px tokens, 4 px units of 4 tokens, ~60 k params.
    "tiny-dit": NitroGenConfig(
        image_size=16, num_classes=3, backbone="dit", token_size=2, dit_dim=32, dit_depth=2, dit_heads=4,
        dit_mlp_ratio=2, patch_size=2, block_size=4, gate_channels=8,
    ),
    # The transformer at 32 px: 3.51 M params (14.0 MB fp32 checkpoint), 185 M MACs per forward,
    # 4 px tokens (64), width 192, depth 6, 4 heads of 48 (widths run 1/2/3/4 heads), MLP 4x,
    # adaLN-single. Chosen by a training-throughput probe (`bench kernels --train-probe --threads 1
    # --repeats 5`: forward+backward, batch 32, 1 thread, median; the machine was shared with
    # other jobs, so compare ratios, not absolute figures):
    #   4 px tokens, MLP 4x: 3.45 M, 181 M MACs, 63.0 img/s   <- this preset (PROBES.md's quality point)
    #   4 px tokens, MLP 3x: 3.01 M, 153 M MACs, 74.4 img/s
    #   2 px tokens, MLP 3x: 2.99 M, 719 M MACs, 13.4 img/s   (5.5x slower: 4x the tokens, N^2 attention)
    #   2 px tokens, width 128: 1.34 M, 353 M MACs, 25.8 img/s
    #   U-Net emoji32:       2.52 M, 559 M MACs, 24.7 img/s   (reference)
    # 2 px tokens cost 4-5x the training time per image and the MACs per sampling step. The 4 px
    # seams did persist (first v2 run, 1,500 steps: hard 4 px edges everywhere), so each token reads
    # and writes an 8 px window (dit_overlap 2, tent-blended; +0.06 M params, +3.5 M MACs) and the
    # seams are gone. Recipe probe (/work/runs/probe, 700 steps of batch 32, 1 thread, 7.5 min each;
    # held-out v-MSE at t = 950 with the true / a wrong label, and the step-700 sample grid):
    #   disjoint 4 px, DiT init (class emb N(0, 0.02)): 0.304 / 0.325, same image in every class row
    #   overlap 2,     DiT init:                          0.331 / 0.339, same image in every class row
    #   overlap 2,     class emb N(0, 1):                 0.285 / 0.356, rows differ by class  <- this
    # MLP 4x is the size PROBES.md measured quality for (FID 4.62 vs the U-Net's 5.56);
    # it fits the 16 MB limit since adaLN-single (per-block adaLN: 4.19 M, 16.8 MB).
    # Units are single tokens (block 4 px, 64 per image): the finest grid token-sparse execution
    # can skip; the gate's patch equals it (its cost, 0.5 M MACs, is 0.3% of a forward).
    "emoji32-dit": NitroGenConfig(
        backbone="dit", token_size=4, dit_dim=192, dit_depth=6, dit_heads=4, dit_mlp_ratio=4, dit_overlap=2,
        patch_size=4, block_size=4,
    ),
}


def preset(name: str, **overrides) -> NitroGenConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
