"""The executor seam between the adaptive sampler and a backbone (DESIGN §1, "two backbones, one sampler").

The sampler's policy decides, per image and step, which samples to compute whole and which units
(pixel blocks of the U-Net, token groups of the transformer) to recompute; an executor runs that
against its backbone's activation cache. The bookkeeping is the same for every backbone and lives
here, once: `Executor` (dense rows, sparse units, one cache at a time) and the measured cost model
`StepCosts`. A backbone supplies three forwards by subclassing: sparse.UNetExecutor and
token_sparse.DiTExecutor.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from types import ModuleType

import torch


@dataclass(frozen=True)
class StepCosts:
    """MACs per sample of one step at one width: `dense`, or base + n * per_block for n > 0 units."""
    dense: int
    base: int
    per_block: int
    blocks: int            # units per image

    def of(self, n: torch.Tensor | int) -> torch.Tensor:
        n = torch.as_tensor(n, dtype=torch.int64)
        return torch.where(n > 0, self.base + n * self.per_block, torch.zeros_like(n))

    def max_blocks(self, macs: torch.Tensor) -> torch.Tensor:
        """Most units per sample affordable within `macs` (B,) MACs."""
        n = (macs - self.base).div(self.per_block, rounding_mode="floor")
        return n.clamp(0, self.blocks)


_COSTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[float, StepCosts]]" = weakref.WeakKeyDictionary()


class Executor:
    """Runs what the policy chose, per sample of the model batch, against one activation cache,
    and keeps the last model output.

    A step computes some samples whole (a dense forward, written into their rows of the cache; when
    every sample is dense the cache is rebuilt, at the step's width) and recomputes the active
    units of others (a sparse forward at the cache's width). Every sample's result depends on its
    own inputs and cache rows only, never on which other samples share the batch.

    Subclasses set `forwards`, the backbone's module, whose functions are looked up when called
    (so a benchmark or test may patch them):
    dense_forward(net, x, t, labels, width, record) -> (out, cache or None, MACs per sample);
    dense_forward_rows(net, x, t, labels, cache, rows) -> (out, MACs), writing rows of the cache;
    sparse_forward(net, x, t, labels, cache, units) -> (out for every sample, MACs), in place.
    A cache has `width` and `nbytes`.
    """

    forwards: ModuleType                         # the backbone's module (sparse, token_sparse)

    # The sampler's default dense_above: the share of units above which one dense pass is worth
    # more than a sparse one (it costs about as much time and refreshes every unit). Per backbone,
    # from `bench kernels`.
    dense_above: float = 0.25

    def __init__(self, net: torch.nn.Module, record: bool):
        self.net, self.record = net, record      # record=False: never sparse, keep no cache
        self.cache = None
        self.out: torch.Tensor | None = None     # (Bm, C, H, W) the last model output

    # -- the backbone's forwards ---------------------------------------------------------------
    def dense_forward(self, x, t, labels, width, record):
        return self.forwards.dense_forward(self.net, x, t, labels, width, record=record)

    def dense_forward_rows(self, x, t, labels, cache, rows):
        return self.forwards.dense_forward_rows(self.net, x, t, labels, cache, rows)

    def sparse_forward(self, x, t, labels, cache, units):
        return self.forwards.sparse_forward(self.net, x, t, labels, cache, units)

    # -- the seam ------------------------------------------------------------------------------
    @property
    def width(self) -> float | None:
        """The width every cached activation was computed at (sparse steps run at it)."""
        return None if self.cache is None else self.cache.width

    @property
    def nbytes(self) -> int:
        """Bytes the executor holds between steps: the activation cache and the last output."""
        out = 0 if self.out is None else self.out.numel() * self.out.element_size()
        return out + (0 if self.cache is None else self.cache.nbytes)

    def step(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, width: float,
             dense_rows: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (Bm, C, H, W), t (Bm,), labels (Bm,); dense_rows (Bm,) bool: samples computed whole at
        `width`; blocks (Bm, nb, nb) bool: active units of the other samples. Returns (out
        (Bm, C, H, W), fresh where computed and the last output elsewhere; MACs per sample (Bm,))."""
        if bool(dense_rows.all()):
            self.cache = None                       # freed before the new one is built: one cache at a time
            self.out, self.cache, macs = self.dense_forward(x, t, labels, width, self.record)
            return self.out, macs
        if self.cache is None or self.out is None:
            raise RuntimeError("internal error: a partial step needs the cache of an earlier dense step")
        if bool(dense_rows.any()) and width != self.cache.width:
            raise RuntimeError(f"internal error: dense rows at width {width} into a cache at width {self.cache.width}")
        out, macs = self.out.clone(), torch.zeros(x.shape[0], dtype=torch.int64)
        rows = dense_rows.nonzero(as_tuple=True)[0]                               # (n,)
        if len(rows):
            out[rows], macs[rows.cpu()] = self.dense_forward_rows(x[rows], t[rows], labels[rows], self.cache, rows)
        sparse_units = blocks & ~dense_rows[:, None, None]
        if bool(sparse_units.any()):
            fresh, sparse_macs = self.sparse_forward(x, t, labels, self.cache, sparse_units)
            computed = sparse_units.flatten(1).any(1)                             # (Bm,)
            out[computed] = fresh[computed]
            macs += sparse_macs
        self.out = out
        return out, macs

    def costs(self, width: float) -> StepCosts:
        """The cost model, read from real (tiny) executions of this executor's forwards on 0, 1 and
        2 active units, so the forwards stay the one source of truth for MACs. Memoised per
        network and width."""
        per_width = _COSTS.setdefault(self.net, {})
        if width not in per_width:
            cfg = self.net.cfg
            nb = cfg.image_size // cfg.block_size
            if nb * nb < 2:
                raise ValueError(f"image_size/block_size={nb} gives fewer than 2 units; sparse execution needs more")
            p = next(self.net.parameters())
            x = torch.zeros(3, cfg.in_channels, cfg.image_size, cfg.image_size, device=p.device, dtype=p.dtype)
            t = torch.zeros(3, device=p.device, dtype=p.dtype)
            labels = torch.zeros(3, dtype=torch.long, device=p.device)
            _, cache, dense = self.dense_forward(x, t, labels, width, True)
            units = torch.zeros(3, nb * nb, dtype=torch.bool, device=p.device)
            units[1, :1] = units[2, :2] = True
            _, macs = self.sparse_forward(x, t, labels, cache, units.view(3, nb, nb))
            per_unit = int(macs[2] - macs[1])
            costs = StepCosts(dense=int(dense[0]), base=int(macs[1]) - per_unit, per_block=per_unit, blocks=nb * nb)
            if int(macs[0]) != 0 or costs.base + nb * nb * per_unit != costs.dense:
                raise RuntimeError(f"MAC accounting is inconsistent at width {width}: {macs.tolist()} vs "
                                   f"dense {costs.dense}")
            per_width[width] = costs
        return per_width[width]
