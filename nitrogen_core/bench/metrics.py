"""Image-quality metrics shared by training calibration and the benchmarks.

* `psnr`, `ssim`: per-image fidelity of a sample against a reference image (e.g. adaptive vs full compute).
* `frechet_distance`, `kid`: distance between two *sets* of feature vectors, e.g. the domain judge's
  features (`nitrogen_core.bench.judge`) of generated samples vs held-out real images. These are the
  formulas of FID (Heusel et al. 2017) and KID (Binkowski et al. 2018), not their Inception features.
* `set_distance`: FID and KID together with bootstrap 90% intervals (the generated set is resampled with
  replacement; the reference set stays fixed).
* `nearest_psnr`, `near_copy_rate`: PSNR of each sample to its nearest image in a pool (uint8 pixels, whole
  image), by a chunked, memory-bounded search; a sample above 30 dB is counted as a near-copy.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import NitroGenInputError

SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 2.0                      # images live in [-1, 1]
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000                 # KID's usual subset size; capped at half of the smaller set
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_LEVEL = 0.90
BOOTSTRAP_SEED = 0
KID_MAX_ROWS = 2048                   # KID's kernel matrices are precomputed: at most this many rows per set
KID_REPLICATE_WORK = 2**18            # per bootstrap replicate: subsets x m^2 kernel entries, at most (~ this)
NEAR_COPY_DB = 30.0
NN_CHUNK_ENTRIES = 2**22              # nearest-neighbour search: distance-matrix entries per chunk (32 MiB)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [-1, 1] (peak-to-peak 2); identical images -> about 126 dB (MSE floor 1e-12)."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1).clamp(min=1e-12)
    return 10 * torch.log10(4.0 / mse)


# -- SSIM ------------------------------------------------------------------------------------

def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    """(C, 1, size, size) normalised 2-D Gaussian, one copy per channel for a depthwise conv."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()                                                  # (size,)
    return torch.outer(g, g).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of (B, C, H, W) images in [-1, 1]; returns float32 (B,).

    Gaussian window 7x7, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 2. Each channel is filtered by a
    depthwise conv with *valid* padding (no border handling, as in the paper: a 32 px image gives a
    26x26 SSIM map), and the map is averaged over channels and positions. Identical images -> 1.0.
    Computed in float64 because the variances are differences of nearly equal moments.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise NitroGenInputError(f"ssim needs two (B, C, H, W) tensors of the same shape, got "
                                 f"{tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise NitroGenInputError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got "
                                 f"{a.shape[-2]}x{a.shape[-1]}")
    channels = a.shape[1]
    x, y = a.detach().to(torch.float64), b.detach().to(torch.float64)      # (B, C, H, W)
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, channels).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=channels)      # (B, C, H-6, W-6)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))       # (B, C, H-6, W-6)
    return ssim_map.flatten(1).mean(1).float()                             # (B,)


# -- feature-set distances -----------------------------------------------------------------------

def _check_feature_sets(name: str, a: torch.Tensor, b: torch.Tensor, min_rows: int) -> None:
    for which, f in (("first", a), ("second", b)):
        if f.dim() != 2:
            raise NitroGenInputError(f"{name}: the {which} feature set must be (N, D), got shape {tuple(f.shape)}")
        if f.shape[0] < min_rows:
            raise NitroGenInputError(f"{name}: the {which} feature set has {f.shape[0]} rows; at least "
                                     f"{min_rows} are needed")
        if not torch.isfinite(f).all():
            raise NitroGenInputError(f"{name}: the {which} feature set contains NaN or Inf")
    if a.shape[1] != b.shape[1]:
        raise NitroGenInputError(f"{name}: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD (D, D) matrix via eigh; round-off negatives are clamped to 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)          # (D,), (D, D)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T       # (D, D)


def _frechet_to(sqrt_b: torch.Tensor, mu_b: torch.Tensor, trace_b: torch.Tensor, mu_a: torch.Tensor,
                cov_a: torch.Tensor) -> torch.Tensor:
    """Fréchet distances of R fitted Gaussians (mu_a (R, D), cov_a (R, D, D)) to one (mu_b, S_b), given
    S_b^1/2; tr((S_b^1/2 S_a S_b^1/2)^1/2) comes from eigvalsh of a symmetric PSD matrix. Returns (R,)."""
    middle = sqrt_b @ cov_a @ sqrt_b                                                 # (R, D, D)
    eigenvalues = torch.linalg.eigvalsh((middle + middle.transpose(1, 2)) / 2).clamp(min=0)   # (R, D)
    distance = ((mu_a - mu_b).square().sum(1) + cov_a.diagonal(dim1=1, dim2=2).sum(1) + trace_b
                - 2 * eigenvalues.sqrt().sum(1))
    return distance.clamp(min=0)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (the FID formula), float64.

    d = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_b^1/2 S_a S_b^1/2)^1/2), with unbiased covariances.
    The symmetric form needs only eigh (no scipy sqrtm) and stays real; the result is clamped at 0.
    """
    _check_feature_sets("frechet_distance", feats_a, feats_b, min_rows=2)
    a, b = feats_a.detach().to(torch.float64), feats_b.detach().to(torch.float64)   # (Na, D), (Nb, D)
    cov_b = torch.cov(b.T)                                                          # (D, D), divisor N - 1
    return float(_frechet_to(_sqrt_psd(cov_b), b.mean(0), cov_b.trace(), a.mean(0)[None], torch.cov(a.T)[None])[0])


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3 for (M, D) x (N, D) -> (M, N)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid_subset_size(n_a: int, n_b: int, cap: int = KID_MAX_SUBSET) -> int:
    """m = min(cap, n_a // 2, n_b // 2): smaller than both sets, so the subsets really differ."""
    return min(cap, n_a // 2, n_b // 2)


def _check_kid_args(subsets, subset_size) -> None:
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise NitroGenInputError(f"kid: subsets {subsets!r} must be an integer >= 1")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise NitroGenInputError(f"kid: subset_size {subset_size!r} must be an integer >= 2")


class _KernelSets:
    """Kernel matrices of two feature sets, computed once, for many subset draws (float64)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.k_aa, self.k_bb, self.k_ab = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
        self.n_a, self.n_b = a.shape[0], b.shape[0]

    def mmd_subsets(self, rows_a: torch.Tensor, m: int, subsets: int, generator: torch.Generator) -> torch.Tensor:
        """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) on `subsets` draws of m rows from each set, (subsets,).
        The first set is `rows_a` ((n,) indices into a; a bootstrap resample may repeat rows): each subset
        takes m of its positions without replacement, and the within-set term leaves out pairs that are
        the same image (the diagonal, and copies that resampling made)."""
        scores = []
        chunk = max(1, 2**22 // (m * m))                          # bounds the (c, m, m) gathers below
        for lo in range(0, subsets, chunk):
            c = min(chunk, subsets - lo)
            ia = rows_a[torch.rand(c, len(rows_a), generator=generator).argsort(1)[:, :m]]   # (c, m)
            ib = torch.rand(c, self.n_b, generator=generator).argsort(1)[:, :m]              # (c, m)
            distinct = ia[:, :, None] != ia[:, None, :]                                      # (c, m, m)
            k_aa = self.k_aa[ia[:, :, None], ia[:, None, :]]                                 # (c, m, m)
            within_a = (k_aa * distinct).sum((1, 2)) / distinct.sum((1, 2)).clamp(min=1)
            k_bb = self.k_bb[ib[:, :, None], ib[:, None, :]]
            within_b = (k_bb.sum((1, 2)) - k_bb.diagonal(dim1=1, dim2=2).sum(1)) / (m * (m - 1))
            cross = self.k_ab[ia[:, :, None], ib[:, None, :]].mean((1, 2))
            scores.append(within_a + within_b - 2 * cross)
        return torch.cat(scores)


def _kid_rows(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """At most KID_MAX_ROWS rows of x (a deterministic draw), so the kernel matrices stay bounded."""
    if x.shape[0] <= KID_MAX_ROWS:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:KID_MAX_ROWS]]


def kid(feats_a: torch.Tensor, feats_b: torch.Tensor, subsets: int = KID_SUBSETS,
        subset_size: int = KID_MAX_SUBSET, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance formula on (N, D) features: (mean, std) over random subsets of the
    unbiased MMD^2 with the cubic polynomial kernel. Each subset draws m = min(subset_size, Na // 2,
    Nb // 2) rows from each set without replacement (m is smaller than both sets, so subsets differ),
    from a generator seeded with `seed` (deterministic). The std is over subsets (population std)."""
    _check_feature_sets("kid", feats_a, feats_b, min_rows=4)
    _check_kid_args(subsets, subset_size)
    generator = torch.Generator().manual_seed(int(seed))
    a = _kid_rows(feats_a.detach().to(torch.float64), generator)                     # (Na, D)
    b = _kid_rows(feats_b.detach().to(torch.float64), generator)                     # (Nb, D)
    m = kid_subset_size(a.shape[0], b.shape[0], subset_size)
    scores = _KernelSets(a, b).mmd_subsets(torch.arange(a.shape[0]), m, subsets, generator)
    return float(scores.mean()), float(scores.std(unbiased=False))


# -- distances with bootstrap intervals -----------------------------------------------------------

@dataclass(frozen=True)
class SetDistance:
    """FID and KID of a set against a reference, each with a bootstrap interval (see `set_distance`)."""

    fid: float
    fid_lo: float
    fid_hi: float
    kid: float
    kid_lo: float
    kid_hi: float
    n: int                      # rows of the set
    n_reference: int            # rows of the reference
    kid_subset_size: int
    resamples: int
    level: float

    def as_dict(self) -> dict:
        return asdict(self)


def _quantiles(values: torch.Tensor, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    lo, hi = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype))
    return float(lo), float(hi)


def _draw_rows(n: int, resamples: int, generator: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(0, n, (n,), generator=generator) for _ in range(resamples)])  # (R, N)


def bootstrap_rows(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """(resamples, n) indices drawn with replacement, the same for every set of n rows given the
    seed: set_distance's FID interval draws these, and the bench reuses them to compare modes paired."""
    return _draw_rows(n, resamples, torch.Generator().manual_seed(int(seed)))


def gaussian_of(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A reference set's Gaussian as _frechet_to reads it: (sqrt of covariance, mean, trace)."""
    cov_b = torch.cov(b.T)
    return _sqrt_psd(cov_b), b.mean(0), cov_b.trace()


def fid_replicates(a: torch.Tensor, rows: torch.Tensor, reference) -> torch.Tensor:
    """(R,) FIDs of the resamples a[rows[r]] (a: (N, D) float64, rows (R, N)) against a reference
    Gaussian (gaussian_of), in chunks that bound the (c, D, D) covariances."""
    n = a.shape[0]
    fids, chunk = [], max(1, 2**22 // (a.shape[1] ** 2 + n * a.shape[1]))
    for lo in range(0, len(rows), chunk):
        x = a[rows[lo:lo + chunk]]                                                   # (c, N, D)
        mu = x.mean(1)                                                               # (c, D)
        centred = x - mu[:, None]
        cov = centred.transpose(1, 2) @ centred / (n - 1)                            # (c, D, D)
        fids.append(_frechet_to(*reference, mu, cov))
    return torch.cat(fids)


def set_distance(feats: torch.Tensor, reference: torch.Tensor, *, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = BOOTSTRAP_LEVEL, seed: int = BOOTSTRAP_SEED, kid_subsets: int = KID_SUBSETS,
                 kid_max_subset: int = KID_MAX_SUBSET) -> SetDistance:
    """FID and KID of `feats` (N, D) against `reference` (M, D), each with a percentile bootstrap interval.

    What is resampled: the rows of `feats` (the generated or probe set), `resamples` times with
    replacement, from a generator seeded with `seed`; the reference stays fixed. Each resample's FID and
    KID are computed like the point figures (KID's within-set term leaves out pairs that are copies of
    one image, so copies do not inflate it), and the interval is their central `level` quantile range.
    Resamples hold ~63% distinct rows, and FID's small-sample bias grows as rows get fewer, so FID's
    interval sits above its point figure: compare intervals with intervals, at equal N.
    KID: mean over `kid_subsets` subsets of size min(kid_max_subset, N // 2, M // 2); a replicate uses
    fewer subsets when m is large (at most ~KID_REPLICATE_WORK kernel entries, and at least 10 subsets).
    """
    _check_feature_sets("set_distance", feats, reference, min_rows=4)
    _check_kid_args(kid_subsets, kid_max_subset)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or not 10 <= resamples <= 100_000:
        raise NitroGenInputError(f"set_distance: resamples {resamples!r} must be an integer in 10..100000")
    if not 0.5 <= level < 1:
        raise NitroGenInputError(f"set_distance: level {level!r} must be in [0.5, 1)")
    a, b = feats.detach().to(torch.float64), reference.detach().to(torch.float64)   # (N, D), (M, D)
    n = a.shape[0]
    generator = torch.Generator().manual_seed(int(seed))                            # then KID's subsets
    rows = _draw_rows(n, resamples, generator)                                       # bootstrap_rows' rows

    # FID: the reference's Gaussian is fitted once; replicates in chunks bound the (c, D, D) tensors.
    reference = gaussian_of(b)
    fid = float(_frechet_to(*reference, a.mean(0)[None], torch.cov(a.T)[None])[0])
    fid_lo, fid_hi = _quantiles(fid_replicates(a, rows, reference), level)

    # KID on the same resamples.
    kid_a = a if n <= KID_MAX_ROWS else None
    if kid_a is None:                                  # very large sets: KID on a fixed draw of rows
        keep = torch.randperm(n, generator=generator)[:KID_MAX_ROWS]
        kid_a, rows = a[keep], torch.randint(0, KID_MAX_ROWS, (resamples, KID_MAX_ROWS), generator=generator)
    kid_b = _kid_rows(b, generator)
    m = kid_subset_size(kid_a.shape[0], kid_b.shape[0], kid_max_subset)
    kernels = _KernelSets(kid_a, kid_b)
    kid_value = float(kernels.mmd_subsets(torch.arange(kid_a.shape[0]), m, kid_subsets, generator).mean())
    per_replicate = min(kid_subsets, max(10, KID_REPLICATE_WORK // (m * m)))
    kids = torch.stack([kernels.mmd_subsets(r, m, per_replicate, generator).mean() for r in rows])
    kid_lo, kid_hi = _quantiles(kids, level)
    return SetDistance(fid=fid, fid_lo=fid_lo, fid_hi=fid_hi, kid=kid_value, kid_lo=kid_lo, kid_hi=kid_hi,
                       n=n, n_reference=b.shape[0], kid_subset_size=m, resamples=resamples, level=level)


# -- nearest neighbours in pixel space ----------------------------------------------------------------

def _as_uint8_images(name: str, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) as is; float images in [-1, 1] are rounded to uint8 levels (as a saved PNG)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise NitroGenInputError(f"{name}: images must be a (B, C, H, W) tensor, got {shape}")
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def nearest_psnr(samples: torch.Tensor, pool: torch.Tensor, chunk_entries: int = NN_CHUNK_ENTRIES) -> torch.Tensor:
    """PSNR in dB of each sample to its nearest image in `pool`, (B,) float64.

    Both are (N, C, H, W) images, uint8 0..255 or float in [-1, 1] (rounded to uint8 levels first). The
    distance is the whole image's L2 over uint8 pixels; PSNR = 10 log10(255^2 / MSE), +inf for an exact
    copy. ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b in float64, which is exact for uint8 values (every
    partial sum is an integer below 2^53). Samples and pool are taken in chunks so that no float64 block
    (samples, pool images, distances) holds more than about `chunk_entries` values, whatever the sizes.
    """
    a, b = _as_uint8_images("nearest_psnr samples", samples), _as_uint8_images("nearest_psnr pool", pool)
    if a.shape[1:] != b.shape[1:]:
        raise NitroGenInputError(f"nearest_psnr: samples are {tuple(a.shape[1:])} but the pool is {tuple(b.shape[1:])}")
    if len(b) == 0:
        raise NitroGenInputError("nearest_psnr: the pool has no images")
    pixels = a[0].numel() if len(a) else 1
    # Every float64 block (samples r x P, pool c x P, distances r x c) holds at most ~chunk_entries values.
    rows = max(1, min(len(a), chunk_entries // pixels, math.isqrt(chunk_entries)))
    cols = max(1, min(len(b), chunk_entries // pixels, chunk_entries // rows))
    best = torch.full((len(a),), float("inf"), dtype=torch.float64)                  # smallest squared error
    for lo in range(0, len(a), rows):
        x = a[lo:lo + rows].flatten(1).to(torch.float64)                            # (r, P)
        x_sq = x.square().sum(1, keepdim=True)                                      # (r, 1)
        for plo in range(0, len(b), cols):
            y = b[plo:plo + cols].flatten(1).to(torch.float64)                      # (c, P)
            sse = (x_sq + y.square().sum(1)[None] - 2 * x @ y.T).clamp(min=0)       # (r, c)
            best[lo:lo + rows] = torch.minimum(best[lo:lo + rows], sse.min(1).values)
    mse = best / pixels
    return 10 * torch.log10(255.0**2 / mse)                                         # inf where mse == 0


def near_copy_rate(samples: torch.Tensor, pool: torch.Tensor, threshold_db: float = NEAR_COPY_DB) -> float:
    """Share of samples whose PSNR to the nearest pool image exceeds `threshold_db` (default 30 dB)."""
    if len(samples) == 0:
        raise NitroGenInputError("near_copy_rate: there are no samples")
    return float((nearest_psnr(samples, pool) > threshold_db).double().mean())
