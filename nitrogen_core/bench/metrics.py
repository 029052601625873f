"""Image-quality metrics shared by training calibration and the benchmarks.

* `psnr`, `ssim`: per-image fidelity of a sample against a reference image (e.g. adaptive vs full compute).
* `frechet_distance`, `kid`: distance between two *sets* of feature vectors, e.g. the domain judge's
  32-d features (`nitrogen_core.bench.judge`) of generated samples vs the training data. These are the
  formulas of FID (Heusel et al. 2017) and KID (Binkowski et al. 2018), not their Inception features.
"""
from __future__ import annotations

import torch

from ..errors import NitroGenInputError

SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 2.0                      # images live in [-1, 1]


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


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (the FID formula), float64.

    d = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), with unbiased covariances.
    The symmetric form needs only eigh (no scipy sqrtm) and stays real; the result is clamped at 0.
    """
    _check_feature_sets("frechet_distance", feats_a, feats_b, min_rows=2)
    a, b = feats_a.detach().to(torch.float64), feats_b.detach().to(torch.float64)   # (Na, D), (Nb, D)
    mu_a, mu_b = a.mean(0), b.mean(0)                                               # (D,)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)                                   # (D, D), divisor N - 1
    sqrt_a = _sqrt_psd(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a                                                # (D, D), symmetric PSD
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)       # (D,)
    trace_sqrt = eigenvalues.sqrt().sum()                                           # tr((S_a^1/2 S_b S_a^1/2)^1/2)
    distance = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(0.0, float(distance))


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3 for (M, D) x (N, D) -> (M, N)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid(feats_a: torch.Tensor, feats_b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance formula on (N, D) features: (mean, std) over random subsets of the
    unbiased MMD^2 with the cubic polynomial kernel. Each subset draws m = min(subset_size, Na, Nb) rows
    from each set without replacement, from a generator seeded with `seed` (so the result is
    deterministic). The std is over subsets (population std); it is 0 when m covers both sets."""
    _check_feature_sets("kid", feats_a, feats_b, min_rows=2)
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise NitroGenInputError(f"kid: subsets {subsets!r} must be an integer >= 1")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise NitroGenInputError(f"kid: subset_size {subset_size!r} must be an integer >= 2")
    a, b = feats_a.detach().to(torch.float64), feats_b.detach().to(torch.float64)   # (Na, D), (Nb, D)
    m = min(subset_size, a.shape[0], b.shape[0])
    generator = torch.Generator().manual_seed(int(seed))
    scores = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=generator)[:m]]                   # (m, D)
        y = b[torch.randperm(b.shape[0], generator=generator)[:m]]                   # (m, D)
        k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)  # (m, m)
        # Unbiased MMD^2 (Gretton et al. 2012, eq. 3): the within-set sums leave out the diagonal.
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        scores[i] = within - 2 * k_xy.mean()
    return float(scores.mean()), float(scores.std(unbiased=False))
