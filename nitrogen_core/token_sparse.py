"""Token-sparse execution of the transformer backbone (model/dit.py): the DiT's executor.

A unit is a block_size px square of the image, (block_size / token_size)^2 tokens, contiguous rows
of the token sequence (dit.patchify's unit-major order). A dense step runs the whole network and
records a token cache: per block, the spatial keys and values (LN(x) W_ks, LN(x) W_vs) of every
token, and the output tokens. A sparse step then computes only the active units' tokens:

- patch embedding, then per block: LayerNorm + QKV, attention of the active queries over ALL
  keys of their image, the inactive tokens' keys and values read from the cache (the state of
  their last computation, as in RAS), output projection, gated residual, modulated MLP; the
  active tokens' fresh keys and values are written into the cache before the attention;
- the final norm + head on the active tokens, scattered into the cached output tokens.

Inactive tokens cost nothing: no halo and no dense floor. Per computed image there is a fixed
cost (time/class embedding and the per-block conditioning), the rest is per token.

Time terms are fresh, exactly: TMSA's key time term cancels in softmax and its value time term is
added to the attention output (see model/dit.py), so cached spatial keys and values serve the
current step's time and class at no cost per cached token. Hence a sparse step equals a dense
block-by-block forward whose inputs are the active tokens' fresh residual stream and, elsewhere,
the residual stream the cached keys and values were computed from (`masked_dense_forward`, the
reference the tests pin the executor to; it needs a cache built with keep_inputs=True).

The approximation, against a true dense forward of the same input: inactive tokens' keys and
values are stale (computed from an earlier x_t); with every unit active a sparse step is exact.
The cache belongs to one width; a width change needs a dense step.

Fused pieces go through kernels/ (gather of the active tokens' pixels, ln_modulate, gated_add),
torch on the CPU, Triton on CUDA.

NOTE (speed, `bench kernels --preset emoji32-dit --threads 1 --repeats 9`, batch 16, CPU otherwise
idle): a sparse step at active fraction a took 0.803 / 0.498 / 0.273 / 0.157 of a dense forward at
a = 0.75 / 0.5 / 0.25 / 0.1 (target 1.15 a: met down to 0.25, missed at 0.1). The floor, one unit
per image, is 0.105 of dense: every step reads all weights (13.8 MB) and every cached key/value
(9.4 MB at batch 16) whatever is active, plus ~20 small ops per block. KVForecast (off by
default) adds one in-place axpy over every cached key/value per step and index updates of the
computed tokens' (KVForecast); its time is not in these figures.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._kernels import load_kernels
from .model.dit import DiT, attend, unit_group
from .executor import Executor, StepCosts


@dataclass
class TokenCache:
    """The executor's state for one width: per block the spatial keys | values of every token's last
    computation, (B, N, 2 I_w) each; the output tokens (B, N, C p p); and, in reference mode only,
    the residual stream entering each block (B, N, D) that the keys and values were computed from."""
    width: float
    kv: list[torch.Tensor]
    out: torch.Tensor
    inputs: list[torch.Tensor] | None = None

    def clone(self) -> "TokenCache":
        """An independent copy (steps update a cache in place)."""
        return TokenCache(self.width, [t.clone() for t in self.kv], self.out.clone(),
                          None if self.inputs is None else [t.clone() for t in self.inputs])

    @property
    def nbytes(self) -> int:
        tensors = [*self.kv, self.out, *(self.inputs or [])]
        return sum(t.numel() * t.element_size() for t in tensors)


class _Recorder:
    """DiT.forward's `keep`: copies each block's keys/values (and inputs) and the output tokens into
    a cache, whole (rows None) or into some of its rows."""

    def __init__(self, cache: TokenCache | None, rows: torch.Tensor | None, keep_inputs: bool):
        self.cache, self.rows, self.keep_inputs = cache, rows, keep_inputs
        self.kv: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self.out: torch.Tensor | None = None

    def layer(self, i: int, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.cache is None:
            self.kv.append(torch.cat([k, v], -1))                               # (B, N, 2 I_w)
            if self.keep_inputs:
                self.inputs.append(h.clone())                                   # (B, N, D)
            return
        self.cache.kv[i][self.rows] = torch.cat([k, v], -1)
        if self.cache.inputs is not None:
            self.cache.inputs[i][self.rows] = h

    def output(self, out: torch.Tensor) -> None:
        if self.cache is None:
            self.out = out.clone()
        else:
            self.cache.out[self.rows] = out


def _dense_macs(dit: DiT, batch: int, width: float, tokens: int) -> torch.Tensor:
    return torch.full((batch,), dit.macs(width, tokens), dtype=torch.int64)


def dense_forward(dit: DiT, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, width: float,
                  record: bool = True, keep_inputs: bool = False
                  ) -> tuple[torch.Tensor, TokenCache | None, torch.Tensor]:
    """Full forward that also builds the token cache (unless `record` is False). `keep_inputs`
    also keeps every block's input (the masked dense reference needs it; the executor does not).
    Returns (out (B, C, H, W), cache or None, MACs per sample (B,))."""
    rec = _Recorder(None, None, keep_inputs) if record else None
    with torch.no_grad():
        out = dit(x, t, labels, width, keep=rec)
    N = (x.shape[2] // dit.cfg.token_size) * (x.shape[3] // dit.cfg.token_size)
    cache = TokenCache(width, rec.kv, rec.out, rec.inputs if keep_inputs else None) if record else None
    return out, cache, _dense_macs(dit, x.shape[0], width, N)


def dense_forward_rows(dit: DiT, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cache: TokenCache,
                       rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A full forward of the samples `rows` (n,) of the cache's batch, at the cache's width, written
    into their rows of the cache. x (n, C, H, W). Returns (out (n, C, H, W), MACs per sample (n,))."""
    with torch.no_grad():
        out = dit(x, t, labels, cache.width, keep=_Recorder(cache, rows, False))
    return out, _dense_macs(dit, x.shape[0], cache.width, cache.out.shape[1])


@dataclass
class _Active:
    """Which tokens a sparse step computes, rows ordered by (sample, unit, token)."""
    rows: torch.Tensor      # (S,) samples with work, ascending
    img: torch.Tensor       # (n,) each token's sample
    slot: torch.Tensor      # (n,) each token's position in `rows`
    tok: torch.Tensor       # (n,) token index inside its sample
    flat: torch.Tensor      # (n,) row into a (B * N, .) view of a cache tensor
    pos: torch.Tensor       # (n,) rank of the token among its sample's active tokens
    counts: torch.Tensor    # (S,) active tokens per sample
    uniform: bool           # every sample has the same count (no padding for the attention)


def active_tokens(blocks: torch.Tensor, per_unit: int, tokens: int) -> _Active:
    """blocks (B, nb, nb) bool -> the active tokens, `per_unit` tokens per unit, `tokens` per sample."""
    B = blocks.shape[0]
    img_u, unit = blocks.reshape(B, -1).nonzero(as_tuple=True)                  # sorted by (sample, unit)
    dev = blocks.device
    offs = torch.arange(per_unit, device=dev)
    tok = (unit[:, None] * per_unit + offs).reshape(-1)                         # (n,)
    img = img_u.repeat_interleave(per_unit)
    rows, counts = torch.unique_consecutive(img, return_counts=True)
    slot = torch.repeat_interleave(torch.arange(len(rows), device=dev), counts)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(tok), device=dev) - starts[slot]
    uniform = len(rows) > 0 and bool((counts == counts[0]).all())
    return _Active(rows, img, slot, tok, img * tokens + tok, pos, counts, uniform)


def grouped_attention(q: torch.Tensor, kv: torch.Tensor, act: _Active, heads: int) -> torch.Tensor:
    """Active queries q (n, I) over all keys of their own sample. kv (B, N, 2 I) is the block's cache
    (already holding the active tokens' fresh keys and values). Returns (n, I).

    Queries are laid out per sample, padded to the largest count when counts differ; padded rows
    are computed and dropped (they are not counted as MACs: no result depends on them)."""
    inner, S = q.shape[1], len(act.rows)
    kv = kv if S == kv.shape[0] else kv.index_select(0, act.rows)             # (S, N, 2 I)
    k, v = kv[..., :inner], kv[..., inner:]
    if act.uniform:
        return attend(q.view(S, -1, inner), k, v, heads).reshape(-1, inner)
    qp = q.new_zeros(S, int(act.counts.max()), inner)                           # (S, M, I)
    qp[act.slot, act.pos] = q
    return attend(qp, k, v, heads)[act.slot, act.pos]


def sparse_forward(dit: DiT, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cache: TokenCache,
                   blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute the active units' tokens at the cache's width. x (B, C, H, W); blocks (B, nb, nb) bool.

    Updates `cache` in place; returns (out (B, C, H, W), MACs per sample (B,)). Outside the
    active units, out equals the cached output."""
    cfg, width = dit.cfg, cache.width
    B, C, H, W = x.shape
    p, g = cfg.token_size, unit_group(cfg, H, W)
    N = cache.out.shape[1]
    macs = torch.zeros(B, dtype=torch.int64)
    if bool(blocks.all()):
        # Every unit active: the dense forward is the same computation (equal within float noise),
        # without the gathers and index updates (measured 1.14x dense through the sparse path).
        rows = torch.arange(B, device=x.device)
        _, macs = dense_forward_rows(dit, x, t, labels, cache, rows)
        return dit.image_out(cache.out, H, W, g), macs
    act = active_tokens(blocks, g * g, N)
    if len(act.tok) == 0:
        return dit.image_out(cache.out, H, W, g), macs
    k = load_kernels().backend_for(x.device.type)
    slot = act.slot
    with torch.no_grad():
        ty, tx = dit.coords(H, W, g)[act.tok].t().contiguous()                           # (n,) each, token units
        o = cfg.dit_overlap
        xp = F.pad(x, (o, o, o, o)) if o else x                                     # windows reach o px past a token
        tokens = k.gather(xp.permute(0, 2, 3, 1), act.img, ty, tx, size=dit.window, step=p, offset=0)
        tokens = tokens.reshape(len(act.tok), -1)                                   # (n, C k k): tokens_in's layout
        h = F.linear(tokens, dit.patch.weight, dit.patch.bias) + dit.positions(H, W, g)[act.tok]   # (n, D)
        cs = dit.embed(t[act.rows], labels[act.rows])                             # (S, D)
        ada = dit.ada(cs)                                                           # (S, 4 D)
        for i, block in enumerate(dit.blocks):
            cond = block.conditioning(cs, ada, width)
            iw = block.attn.inner_at(width)
            if cache.inputs is not None:
                cache.inputs[i].view(B * N, -1).index_copy_(0, act.flat, h)
            a = k.ln_modulate(h, *block.norm1.affine_at(width), eps=block.norm1.eps)
            qkv = F.linear(a, *block.attn.qkv_params(width))                       # (n, 3 I_w)
            cache.kv[i].view(B * N, 2 * iw).index_copy_(0, act.flat, qkv[:, iw:])
            q = qkv[:, :iw] + cond["qt"].index_select(0, slot)
            o = grouped_attention(q, cache.kv[i], act, block.attn.heads_at(width)) + cond["vt"].index_select(0, slot)
            h = k.gated_add(h, F.linear(o, *block.attn.proj_params(width)), cond["gate_a"], slot)
            m = k.ln_modulate(h, *block.norm2.affine_at(width), img=slot, shift=cond["shift"],
                              scale=cond["scale"], eps=block.norm2.eps)
            h = k.gated_add(h, block.mlp(m, width), cond["gate_m"], slot)
        shift, scale = dit.out_conditioning(cs)
        a = k.ln_modulate(h, *dit.norm_out.affine_at(width), img=slot, shift=shift, scale=scale,
                          eps=dit.norm_out.eps)
        cache.out.view(B * N, -1).index_copy_(0, act.flat, F.linear(a, dit.head.weight, dit.head.bias))
    # MACs: what ran, per sample: its fixed cost once, and every block's per-token cost per token.
    counts = torch.zeros(B, dtype=torch.int64)
    counts[act.rows.cpu()] = act.counts.cpu()
    macs += (counts > 0) * dit.sample_macs(width) + counts * dit.token_macs(width, N)
    return dit.image_out(cache.out, H, W, g), macs


def masked_dense_forward(dit: DiT, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cache: TokenCache,
                         blocks: torch.Tensor) -> torch.Tensor:
    """What `sparse_forward` must return, computed densely: every block runs on the full current
    input (the active tokens' fresh residual stream, the cached inputs elsewhere) and only the
    active tokens are kept. Updates `cache` (built with keep_inputs=True) in place."""
    if cache.inputs is None:
        raise ValueError("masked_dense_forward needs a cache built with keep_inputs=True")
    cfg, width = dit.cfg, cache.width
    B, C, H, W = x.shape
    g = unit_group(cfg, H, W)
    keep = blocks.reshape(B, -1).repeat_interleave(g * g, 1)[:, :, None]         # (B, N, 1)
    with torch.no_grad():
        cs = dit.embed(t, labels)
        ada = dit.ada(cs)
        h = dit.patch(dit.tokens_in(x, g)) + dit.positions(H, W, g)               # (B, N, D)
        for i, block in enumerate(dit.blocks):
            h = torch.where(keep, h, cache.inputs[i])
            cache.inputs[i].copy_(h)
            kv = []
            h = block(h, block.conditioning(cs, ada, width), width, keep=lambda k, v: kv.append(torch.cat([k, v], -1)))
            cache.kv[i].copy_(torch.where(keep, kv[0], cache.kv[i]))
        shift, scale = dit.out_conditioning(cs)
        out = dit.head(dit.norm_out(h, width) * (1 + scale[:, None]) + shift[:, None])
        cache.out.copy_(torch.where(keep, out, cache.out))
    return dit.image_out(cache.out, H, W, g)


class KVForecast:
    """Forecast keys and values for the tokens a step leaves out, instead of their stale ones:
    per token and block, last + f * age * slope, the line through its last two computations
    (TaylorSeer's idea, on the K/V cache), age being the steps since it was last computed. The
    eps forecast (sampler.EpsForecast) does the same for the model's output.

    Per token, so per image. Holds the last computed keys/values and their slope: twice the
    cache's keys and values. A 72-image probe on the bundled transformer (eps forecast on, tau
    0.005 to 0.01) lifted PSNR to full by 0.3 to 1.4 dB mean and 8 to 11 dB at the worst image,
    nearly all that an exact executor recovers there.

    Cost: the cache itself holds the next step's forecast, kept incrementally. After a step, the
    computed tokens' slope and last values are updated by index (work in proportion to them), and
    one in-place axpy per block, kv += f * slope, moves every token one step along its line. A
    first version rewrote every token's forecast with elementwise passes over all of them before
    and after each step, which cost more CPU time than a sparse step at 0.55 of the MACs saved."""

    def __init__(self, strength: float):
        self.strength = strength
        self.last: list[torch.Tensor] = []          # per block (B, N, 2 I_w): keys | values last computed
        self.slope: list[torch.Tensor] = []         # per block (B, N, 2 I_w): their change per step
        self.age: torch.Tensor | None = None        # (B * N, 1) steps since each token was computed

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.last, *self.slope))

    def update(self, cache: TokenCache, computed: torch.Tensor, rebuilt: bool) -> None:
        """After a step: computed (B, N) bool tokens hold fresh keys/values in the cache; they take
        a new slope. Then every token's cached keys/values become its forecast for the next step.
        A rebuilt cache at a new width starts over (its keys/values have another size)."""
        if rebuilt and (not self.last or self.last[0].shape != cache.kv[0].shape):
            self.last = [kv.clone() for kv in cache.kv]
            self.slope = [torch.zeros_like(kv) for kv in cache.kv]
            self.age = torch.zeros(cache.kv[0].shape[0] * cache.kv[0].shape[1], 1, device=cache.kv[0].device)
            return                                                                  # slope 0: nothing to move
        self.age += 1                                                               # steps since computed, after this one
        if bool(computed.all()):
            for kv, last, slope in zip(cache.kv, self.last, self.slope):
                torch.div(kv - last, self.age.view(*kv.shape[:2], 1), out=slope)
                last.copy_(kv)
            self.age.zero_()
        else:
            flat = computed.reshape(-1).nonzero().squeeze(1)                       # (n,) rows of a (B * N, .) view
            gap = self.age.index_select(0, flat)                                    # (n, 1)
            for kv, last, slope in zip(cache.kv, self.last, self.slope):
                kv2, last2 = kv.view(-1, kv.shape[-1]), last.view(-1, kv.shape[-1])
                fresh = kv2.index_select(0, flat)                                   # (n, 2 I_w)
                slope.view(-1, kv.shape[-1]).index_copy_(0, flat, (fresh - last2.index_select(0, flat)).div_(gap))
                last2.index_copy_(0, flat, fresh)
            self.age.index_fill_(0, flat, 0)
        for kv, slope in zip(cache.kv, self.slope):
            kv.add_(slope, alpha=self.strength)                                     # last + f * (age + 1) * slope


class DiTExecutor(Executor):
    """The transformer's executor (see executor.Executor): units are block_size px squares of whole
    tokens; a sparse step recomputes the active units' tokens only. With kv_forecast f > 0, the
    tokens it leaves out lend the attention forecast keys and values (KVForecast), not stale ones."""

    # Sparse time is ~0.11 + 0.85 a of dense (the NOTE above): it pays up to a = 0.9, where it
    # still saves ~10% and a dense pass, for about as much time, refreshes every token.
    dense_above = 0.9

    forwards = sys.modules[__name__]

    def __init__(self, net: DiT, record: bool, kv_forecast: float = 0.0):
        super().__init__(net, record)
        self.kv_forecast = KVForecast(kv_forecast) if kv_forecast > 0 and record else None

    @property
    def nbytes(self) -> int:
        return super().nbytes + (0 if self.kv_forecast is None else self.kv_forecast.nbytes)

    def step(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, width: float,
             dense_rows: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, macs = super().step(x, t, labels, width, dense_rows, blocks)
        if self.kv_forecast is not None:
            B, g = x.shape[0], unit_group(self.net.cfg, x.shape[2], x.shape[3])
            computed = blocks.reshape(B, -1).repeat_interleave(g * g, 1) | dense_rows[:, None]   # (B, N)
            self.kv_forecast.update(self.cache, computed, rebuilt=bool(dense_rows.all()))
        return out, macs


def step_costs(dit: DiT, width: float) -> StepCosts:
    """MACs of a dense step and of n active units at `width` (measured once; see Executor.costs)."""
    return DiTExecutor(dit, record=True).costs(width)
