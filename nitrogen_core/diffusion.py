"""Noise schedule and parametrisation (kept apart from the network and the sampler, as in edm2).

Variance-preserving diffusion x_t = alpha_t x0 + sigma_t eps with the cosine schedule of
Nichol & Dhariwal (2021, eq. 17). The network predicts eps or v = alpha_t eps - sigma_t x0
(Salimans & Ho, 2022).
"""
from __future__ import annotations

import math

import torch


class Schedule:
    def __init__(self, timesteps: int = 1000, s: float = 0.008):
        self.timesteps = timesteps
        # alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2); betas clipped at 0.999 (eq. 17)
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar, prev = [], 1.0
        for i in range(timesteps):
            beta = min(1 - f((i + 1) / timesteps) / f(i / timesteps), 0.999)
            prev = prev * (1 - beta)
            alpha_bar.append(prev)
        self.alpha_bar = torch.tensor(alpha_bar, dtype=torch.float64)        # (T,)

    def alpha_sigma(self, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t for integer timesteps; t = -1 means clean data (alpha 1, sigma 0)."""
        t = torch.as_tensor(t, dtype=torch.long)
        ab = torch.where(t >= 0, self.alpha_bar[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return ab.sqrt().float(), (1 - ab).sqrt().float()

    def sampling_timesteps(self, steps: int) -> list[int]:
        """`steps` integer timesteps, descending, 'trailing' spacing: the first is T-1 (pure noise)."""
        return [round(self.timesteps * (steps - i) / steps) - 1 for i in range(steps)]


def split_prediction(pred: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                     prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Network output -> (eps, x0). alpha, sigma broadcast against x_t (B, 1, 1, 1)."""
    if prediction == "eps":
        eps = pred
        return eps, (x_t - sigma * eps) / alpha
    # v = alpha eps - sigma x0  =>  x0 = alpha x_t - sigma v,  eps = sigma x_t + alpha v
    return sigma * x_t + alpha * pred, alpha * x_t - sigma * pred


def training_target(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                    prediction: str) -> torch.Tensor:
    return eps if prediction == "eps" else alpha * eps - sigma * x0
