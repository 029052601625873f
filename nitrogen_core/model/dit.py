"""Slimmable class-conditional image-space transformer (DiffiT-style TMSA), written top-down:
primitives, then blocks, then the network.

Tokens are token_size x token_size pixel patches. Conditioning c = time embedding + class embedding
(class num_classes is the null class for CFG). Each block is pre-norm:

    h = h + (1 + g_a(c)) * TMSA(LN1(h), c)
    h = h + (1 + g_m(c)) * MLP(LN2(h) * (1 + s(c)) + b(c))

with g_a, g_m, s, b = A silu(c) + e_l: one projection A shared by every block plus a learned
offset e_l per block (adaLN-single, PixArt-alpha sec. 2.3), both zero-initialised (adaLN-zero:
every branch starts as a plain residual). Per-block projections (DiT's adaLN) cost 4 D^2 MACs and
weight reads per block and image whatever the number of tokens: at 10% active tokens they took
1.8 of the 13.8 ms of a sparse step (batch 16, 1 thread), a fixed cost sparsity cannot remove.
The output head is zero-initialised, so an untrained net predicts 0, like the U-Net.

TMSA (DiffiT, Hatamizadeh et al. 2023, eq. 3-5): q = x W_qs + c W_qt, k = x W_ks + c W_kt,
v = x W_vs + c W_vt. Two exact simplifications follow from softmax:
- c W_kt adds q . (c W_kt) to every score of a query, the same for all its keys; softmax is
  shift-invariant, so the term has no effect (nor gradient) and is left out. (The key bias cancels
  the same way; it is kept only because nn.Linear carries it.)
- softmax weights sum to 1, so softmax(q K^T) (V_s + 1 (c W_vt)^T) = softmax(q K^T) V_s + c W_vt:
  the value's time term is added once to the attention output.
So a cache of the spatial keys and values (x W_ks, x W_vs) serves any later step exactly: the
current step's time terms cost nothing per cached token (nitrogen_core/token_sparse.py).

Slimmable: at width w a block runs the first ceil(w * heads) heads (q, k, v, time terms and the
output projection's input columns) and the first round(w * hidden) MLP units; the residual stream
keeps every channel. LayerNorms have one affine pair per width.

Overlapping windows (cfg.dit_overlap = o > 0): a token reads the (p + 2o)^2 pixels around it
(zero padding at the border) and writes a (p + 2o)^2 window of the output; overlapping windows
are blended with tent weights normalised to sum to 1 at every pixel. With o = 0 tokens are
disjoint p x p patches, and neighbouring tokens' outputs meet at hard edges: 4 px token seams
and a higher low-noise loss than the U-Net's (0.121 vs 0.083 at t = 100 after ~100k images).
Both ends read and write every token whatever the sparse step computes (the input is the whole
x_t; the output blends the cached output windows), so overlap keeps sparse execution exact.

Token order: tokens are grouped by sparse unit (block_size px squares, unit-major, raster inside a
unit), so a unit's tokens are contiguous rows. Attention is permutation-equivariant and positions
come from the 2-D sincos embedding of each token's (row, col), so the order changes no result;
images whose size is not a multiple of block_size use plain raster order.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import NitroGenConfig
from .layers import timestep_embedding


# -- primitives --------------------------------------------------------------------------------------

def unit_group(cfg: NitroGenConfig, height: int, width: int) -> int:
    """Tokens per unit side for an image of this size: block_size // token_size, or 1 (raster)
    when the image is not tiled by whole units."""
    g = cfg.block_size // cfg.token_size
    return g if height % cfg.block_size == 0 and width % cfg.block_size == 0 else 1


def patchify(x: torch.Tensor, p: int, g: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p), tokens unit-major (g x g tokens per unit, raster inside)."""
    B, C, H, W = x.shape
    uy, ux = H // (p * g), W // (p * g)
    x = x.reshape(B, C, uy, g, p, ux, g, p)                        # b c uy ty py ux tx px
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)                          # b uy ux ty tx c py px
    return x.reshape(B, uy * ux * g * g, C * p * p)


def unpatchify(tokens: torch.Tensor, channels: int, height: int, width: int, p: int, g: int) -> torch.Tensor:
    """(B, N, C*p*p) in patchify's order -> (B, C, H, W)."""
    B = tokens.shape[0]
    uy, ux = height // (p * g), width // (p * g)
    x = tokens.reshape(B, uy, ux, g, g, channels, p, p)           # b uy ux ty tx c py px
    x = x.permute(0, 5, 1, 3, 6, 2, 4, 7)                          # b c uy ty py ux tx px
    return x.reshape(B, channels, height, width)


def tent_window(k: int) -> torch.Tensor:
    """(k, k) separable tent weights over a k px window: largest at the centre, positive everywhere."""
    w = 1 - (torch.arange(k, dtype=torch.float64) + 0.5 - k / 2).abs() / (k / 2)   # (k,)
    return (w[:, None] * w[None, :]).float()


def token_coords(height: int, width: int, p: int, g: int) -> torch.Tensor:
    """(N, 2) float (row, col) of every token, in token units, in patchify's order."""
    rows = torch.arange(height // p, dtype=torch.float32)[:, None].expand(height // p, width // p)
    cols = torch.arange(width // p, dtype=torch.float32)[None, :].expand(height // p, width // p)
    grid = torch.stack([rows, cols])[:, None]                      # (2, 1, H/p, W/p): patchify's layout
    return patchify(grid, 1, g)[:, :, 0].t()                       # (N, 2)


def sincos_2d(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sin-cos position embedding (MAE / DiT): half the channels encode the row, half the column.
    coords (N, 2) -> (N, dim); resolution-agnostic (positions in token units)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)   # (dim/4,)
    parts = []
    for axis in range(2):
        angle = coords[:, axis, None].double() * omega[None]                       # (N, dim/4)
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, 1).float()                                             # (N, dim)


class SlimLayerNorm(nn.Module):
    """LayerNorm over the full residual stream with one affine pair per width (switchable norms)."""

    def __init__(self, dim: int, widths: tuple[float, ...], eps: float = 1e-6):
        super().__init__()
        self.widths, self.eps = tuple(widths), eps
        self.weight = nn.Parameter(torch.ones(len(self.widths), dim))
        self.bias = nn.Parameter(torch.zeros(len(self.widths), dim))

    def affine_at(self, width: float) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.widths.index(width)
        return self.weight[i], self.bias[i]

    def forward(self, x: torch.Tensor, width: float) -> torch.Tensor:
        w, b = self.affine_at(width)
        return F.layer_norm(x, (x.shape[-1],), w, b, self.eps)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention. q (B, M, I), k and v (B, N, I), I = heads * head size -> (B, M, I)."""
    B, M, inner = q.shape
    hd = inner // heads
    q = q.reshape(B, M, heads, hd).transpose(1, 2)                 # (B, heads, M, hd)
    k = k.reshape(B, -1, heads, hd).transpose(1, 2)                # (B, heads, N, hd)
    v = v.reshape(B, -1, heads, hd).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v)                    # (B, heads, M, hd)
    return o.transpose(1, 2).reshape(B, M, inner)


# -- blocks --------------------------------------------------------------------------------------------

class TMSA(nn.Module):
    """Time-dependent multi-head self-attention with slimmable heads (see the module docstring)."""

    def __init__(self, dim: int, heads: int, emb: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        inner = heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner)           # spatial part, rows [q | k | v], head-major
        self.time = nn.Linear(emb, 2 * inner)          # time terms of q and v (k's cancels in softmax)
        self.proj = nn.Linear(inner, dim)

    def heads_at(self, width: float) -> int:
        return min(self.heads, max(1, math.ceil(width * self.heads - 1e-9)))

    def inner_at(self, width: float) -> int:
        return self.heads_at(width) * self.head_dim

    def qkv_params(self, width: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (3 I_w, D) and bias (3 I_w,) of the active heads' q, k and v."""
        inner, iw = self.heads * self.head_dim, self.inner_at(width)
        if iw == inner:
            return self.qkv.weight, self.qkv.bias
        w = self.qkv.weight.view(3, inner, -1)[:, :iw].reshape(3 * iw, -1)
        return w, self.qkv.bias.view(3, inner)[:, :iw].reshape(3 * iw)

    def time_terms(self, cs: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:
        """silu(c) (B, E) -> (c W_qt, c W_vt), (B, I_w) each."""
        inner, iw = self.heads * self.head_dim, self.inner_at(width)
        w = self.time.weight.view(2, inner, -1)[:, :iw].reshape(2 * iw, -1)
        b = self.time.bias.view(2, inner)[:, :iw].reshape(2 * iw)
        return F.linear(cs, w, b).split(iw, dim=-1)

    def proj_params(self, width: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj.weight[:, :self.inner_at(width)], self.proj.bias


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def hidden_at(self, width: float) -> int:
        return min(self.fc1.out_features, max(1, round(width * self.fc1.out_features)))

    def forward(self, x: torch.Tensor, width: float) -> torch.Tensor:
        n = self.hidden_at(width)
        h = F.gelu(F.linear(x, self.fc1.weight[:n], self.fc1.bias[:n]), approximate="tanh")   # (..., n)
        return F.linear(h, self.fc2.weight[:, :n], self.fc2.bias)                          # (..., D)


class DiTBlock(nn.Module):
    """Pre-norm TMSA + MLP, residual branches gated by (1 + g(c))."""

    def __init__(self, cfg: NitroGenConfig):
        super().__init__()
        d = cfg.dit_dim
        self.norm1 = SlimLayerNorm(d, cfg.widths)
        self.attn = TMSA(d, cfg.dit_heads, d)
        self.norm2 = SlimLayerNorm(d, cfg.widths)
        self.mlp = MLP(d, cfg.dit_mlp_ratio * d)
        self.ada_offset = nn.Parameter(torch.zeros(4 * d))   # this block's offset to the shared adaLN terms

    def conditioning(self, cs: torch.Tensor, ada: torch.Tensor, width: float) -> dict[str, torch.Tensor]:
        """Per-sample terms of this block from silu(c) (B, D) and the shared adaLN terms (B, 4 D):
        (B, I_w) time terms, (B, D) gates and modulation."""
        qt, vt = self.attn.time_terms(cs, width)
        gate_a, shift, scale, gate_m = (ada + self.ada_offset).chunk(4, dim=-1)
        return {"qt": qt, "vt": vt, "gate_a": gate_a, "shift": shift, "scale": scale, "gate_m": gate_m}

    def cond_macs(self, width: float) -> int:
        """MACs per sample of `conditioning`."""
        return self.attn.time.in_features * 2 * self.attn.inner_at(width)

    def token_macs(self, width: float, keys: int) -> int:
        """MACs per token of the block when its query attends over `keys` keys."""
        d, iw, hid = self.mlp.fc1.in_features, self.attn.inner_at(width), self.mlp.hidden_at(width)
        return 3 * d * iw + 2 * keys * iw + iw * d + 2 * d * hid      # qkv, QK^T and AV, proj, MLP

    def forward(self, h: torch.Tensor, cond: dict[str, torch.Tensor], width: float, keep=None) -> torch.Tensor:
        """h (B, N, D) -> (B, N, D). `keep(k, v)`, if given, receives the spatial keys and values
        (B, N, I_w) each (the token cache)."""
        iw = self.attn.inner_at(width)
        a = self.norm1(h, width)
        q, k, v = F.linear(a, *self.attn.qkv_params(width)).split(iw, dim=-1)         # (B, N, I_w) each
        if keep is not None:
            keep(k, v)
        o = attend(q + cond["qt"][:, None], k, v, self.attn.heads_at(width)) + cond["vt"][:, None]
        h = h + (1 + cond["gate_a"][:, None]) * F.linear(o, *self.attn.proj_params(width))
        m = self.norm2(h, width) * (1 + cond["scale"][:, None]) + cond["shift"][:, None]
        return h + (1 + cond["gate_m"][:, None]) * self.mlp(m, width)


# -- network -------------------------------------------------------------------------------------------

class DiT(nn.Module):
    """v/eps-prediction transformer over token_size px tokens; forward(x, t, labels, width) like the U-Net."""

    def __init__(self, cfg: NitroGenConfig):
        super().__init__()
        self.cfg = cfg
        d, C = cfg.dit_dim, cfg.in_channels
        k = self.window = cfg.token_size + 2 * cfg.dit_overlap       # each token's window edge in px
        self.patch = nn.Linear(C * k * k, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, d)          # last index = null class (CFG)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.dit_depth))
        self.ada = nn.Linear(d, 4 * d)          # adaLN-single: silu(c) -> every block's gates and modulation
        self.norm_out = SlimLayerNorm(d, cfg.widths)
        self.ada_out = nn.Linear(d, 2 * d)      # silu(c) -> final shift, scale
        self.head = nn.Linear(d, C * k * k)
        self._pos: dict[tuple, torch.Tensor] = {}          # geometry -> coords / positions
        self._init_weights()

    def _init_weights(self) -> None:
        """All init in one place: Xavier linears, N(0, 1) class embeddings (as the U-Net's), zero-init
        adaLN projection and offsets (every gate and modulation starts at identity) and output head.

        DiT's N(0, 0.02) class embeddings and time MLP made c ~0.03 in size: the class then reached
        the blocks so weakly that after 700 steps (batch 32) every class drew the same image for the
        same noise; with unit-size embeddings the rows differed by class at that point (probe in
        the emoji32-dit preset's comment)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.class_emb.weight, std=1.0)
        for m in (self.ada, self.ada_out, self.head):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- pieces the token-sparse executor calls one by one ----------------------------------------------
    def embed(self, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps and labels -> silu(c) (B, D), c = time embedding + class embedding."""
        t_emb = timestep_embedding(t, self.cfg.dit_dim).to(self.class_emb.weight.dtype)
        return F.silu(self.time_mlp(t_emb) + self.class_emb(labels))

    def embed_macs(self) -> int:
        return sum(m.in_features * m.out_features for m in self.time_mlp if isinstance(m, nn.Linear))

    def coords(self, height: int, width: int, g: int) -> torch.Tensor:
        """(N, 2) int64 (row, col) of every token in token units, in patchify's order (memoised)."""
        key = ("coords", height, width, g)
        if key not in self._pos:
            self._pos[key] = token_coords(height, width, self.cfg.token_size, g).long()
        return self._pos[key].to(self.patch.weight.device)

    def positions(self, height: int, width: int, g: int) -> torch.Tensor:
        """(N, D) sincos position embedding in patchify's order (memoised per geometry)."""
        key = ("sincos", height, width, g)
        if key not in self._pos:
            self._pos[key] = sincos_2d(token_coords(height, width, self.cfg.token_size, g), self.cfg.dit_dim)
        w = self.patch.weight
        return self._pos[key].to(device=w.device, dtype=w.dtype)

    def raster_index(self, height: int, width: int, g: int) -> torch.Tensor:
        """(N,) int64: each token's index in raster order (F.unfold's), for tokens in patchify's order."""
        rc = self.coords(height, width, g)
        return rc[:, 0] * (width // self.cfg.token_size) + rc[:, 1]

    def tokens_in(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C k k): every token's input window (k = self.window), patchify's order."""
        p, o = self.cfg.token_size, self.cfg.dit_overlap
        if o == 0:
            return patchify(x, p, g)
        cols = F.unfold(x, self.window, stride=p, padding=o)                       # (B, C k k, N) raster
        return cols.transpose(1, 2).index_select(1, self.raster_index(x.shape[2], x.shape[3], g))

    def image_out(self, tokens: torch.Tensor, height: int, width: int, g: int) -> torch.Tensor:
        """(B, N, C k k) output windows in patchify's order -> (B, C, H, W), overlaps tent-blended."""
        p, o, k, C = self.cfg.token_size, self.cfg.dit_overlap, self.window, self.cfg.in_channels
        if o == 0:
            return unpatchify(tokens, C, height, width, p, g)
        key = ("blend", height, width, g)
        if key not in self._pos:
            tent = tent_window(k).reshape(-1)                                          # (k k,)
            weights = tent[None, :, None].expand(1, k * k, tokens.shape[1])           # (1, k k, N)
            cover = F.fold(weights, (height, width), k, stride=p, padding=o)        # (1, 1, H, W), > 0
            self._pos[key] = (tent.repeat(C), cover)                                 # (C k k,): unfold's order
        window, cover = (t.to(device=tokens.device, dtype=tokens.dtype) for t in self._pos[key])
        raster = torch.empty_like(tokens).index_copy_(1, self.raster_index(height, width, g), tokens)
        out = F.fold((raster * window).transpose(1, 2), (height, width), k, stride=p, padding=o)
        return out / cover                                                         # (B, C, H, W)

    def out_conditioning(self, cs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self.ada_out(cs).chunk(2, dim=-1)                # (B, D) each
        return shift, scale

    def sample_macs(self, width: float) -> int:
        """MACs per computed sample that do not depend on its token count (embedding, conditioning)."""
        return (self.embed_macs() + sum(b.cond_macs(width) for b in self.blocks)
                + self.ada.in_features * self.ada.out_features + self.ada_out.in_features * self.ada_out.out_features)

    def token_macs(self, width: float, keys: int) -> int:
        """MACs per computed token over a forward whose queries see `keys` keys: patch embedding,
        every block, the head."""
        return (self.patch.in_features * self.patch.out_features + sum(b.token_macs(width, keys) for b in self.blocks)
                + self.head.in_features * self.head.out_features)

    def macs(self, width: float, tokens: int) -> int:
        """MACs per sample of a dense forward over `tokens` tokens."""
        return self.sample_macs(width) + tokens * self.token_macs(width, tokens)

    def check(self, x: torch.Tensor, width: float) -> None:
        if width not in self.cfg.widths:
            raise ValueError(f"width {width} is not one of the model's widths {self.cfg.widths}")
        p = self.cfg.token_size
        if x.dim() != 4 or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"input shape {tuple(x.shape)} must be (B, C, H, W) with H and W divisible by "
                             f"token_size={p}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, width: float = 1.0,
                keep=None) -> torch.Tensor:
        """x (B, C, H, W), t (B,), labels (B,) -> prediction (B, C, H, W).

        `keep`, if given (the token cache's recorder), has `keep.layer(i, h, k, v)` called with
        block i's input h (B, N, D) and spatial keys and values (B, N, I_w), and `keep.output(out)`
        with the output tokens (B, N, C p p)."""
        self.check(x, width)
        B, C, H, W = x.shape
        g = unit_group(self.cfg, H, W)
        cs = self.embed(t, labels)                                                   # (B, D)
        ada = self.ada(cs)                                                           # (B, 4 D)
        h = self.patch(self.tokens_in(x, g)) + self.positions(H, W, g)               # (B, N, D)
        for i, block in enumerate(self.blocks):
            record = None if keep is None else (lambda k, v, i=i, h=h: keep.layer(i, h, k, v))
            h = block(h, block.conditioning(cs, ada, width), width, record)
        shift, scale = self.out_conditioning(cs)
        out = self.head(self.norm_out(h, width) * (1 + scale[:, None]) + shift[:, None])   # (B, N, C p p)
        if keep is not None:
            keep.output(out)
        return self.image_out(out, H, W, g)                                          # (B, C, H, W)
