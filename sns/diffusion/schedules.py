"""DDPM noise schedules (variance preserving) as small frozen tables of tensors.

Levels are 0-based table indices ``i = 0..S-1`` (as in diffusers): a state at
level ``i`` is ``x^i = sqrt(abar_i) x + sqrt(1 - abar_i) e`` with ``e ~ N(0, I)``.
The clean state is "level -1" with ``abar_{-1} = 1``; a reverse step at level ``i``
maps level ``i`` to level ``i - 1``, so a state at level ``i`` needs ``i + 1``
reverse steps to become clean (see :mod:`sns.diffusion.paths` for the phase-space
coordinates ``s = i + 1``).

Tables (float64, shape ``(S,)``)::

    alpha_i  = 1 - beta_i
    abar_i   = prod_{j <= i} alpha_j
    abar_prev_i = abar_{i-1}            (abar_{-1} = 1)
    sigma2_i = beta_i (1 - abar_{i-1}) / (1 - abar_i)    (posterior variance, 0 at i = 0)

References: Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models";
Nichol & Dhariwal (2021), "Improved DDPM" (cosine schedule, offset 0.008,
beta clipped at 0.999 -- diffusers' ``squaredcos_cap_v2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Schedule", "cosine_schedule", "linear_schedule", "log_sigma_schedule", "make_schedule"]


@dataclass(frozen=True)
class Schedule:
    """A DDPM schedule: ``betas`` and derived tables, all float64 ``(S,)`` on CPU."""

    betas: Tensor
    alphas: Tensor
    abar: Tensor
    abar_prev: Tensor
    posterior_variance: Tensor
    name: str = "custom"

    @property
    def n_levels(self) -> int:
        """S, the number of noise levels."""
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: Tensor, name: str = "custom") -> Schedule:
        """Build every table from ``betas`` (``(S,)``, each in ``(0, 1)``)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-d tensor, got shape {tuple(betas.shape)}")
        bad = ((betas <= 0) | (betas >= 1)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"betas must lie in (0, 1); betas[{i}] = {float(betas[i])!r}")
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        return cls(betas, alphas, abar, abar_prev, posterior_variance, name)

    def check_levels(self, levels: Tensor, name: str = "levels") -> None:
        """Raise ``ValueError`` naming the first level outside ``[0, S)``."""
        if levels.dtype.is_floating_point or levels.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got dtype {levels.dtype}")
        bad = ((levels < 0) | (levels >= self.n_levels)).nonzero()
        if len(bad):
            j = tuple(int(v) for v in bad[0])
            raise ValueError(
                f"{name}{list(j)} = {int(levels[j])} is outside the valid levels [0, {self.n_levels})"
            )


def cosine_schedule(n_levels: int, offset: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Cosine schedule of Nichol & Dhariwal (2021).

    ``f(i) = cos^2(((i/S + offset)/(1 + offset)) pi/2)``,
    ``beta_i = min(1 - f(i+1)/f(i), max_beta)``, ``i = 0..S-1``.
    """
    _check_n_levels(n_levels)

    def f(i: int) -> float:
        return math.cos((i / n_levels + offset) / (1 + offset) * math.pi / 2) ** 2

    betas = [min(1.0 - f(i + 1) / f(i), max_beta) for i in range(n_levels)]
    return Schedule.from_betas(torch.tensor(betas, dtype=torch.float64), name="cosine")


def linear_schedule(n_levels: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Linear DDPM schedule: ``beta_i = beta_start + (beta_end - beta_start) i/(S-1)``.

    The defaults are Ho et al.'s values for S = 1000.  For fewer levels scale both
    ends by ``1000/S`` or similar (the ACDM reference uses ``1e-4 * 500/S`` and
    ``2e-2 * 500/S``) so that ``abar_{S-1}`` is still close to 0.
    """
    _check_n_levels(n_levels)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start!r}, {beta_end!r}")
    betas = torch.linspace(beta_start, beta_end, n_levels, dtype=torch.float64)
    return Schedule.from_betas(betas, name="linear")


def log_sigma_schedule(n_levels: int, sigma_min: float = 1e-3, sigma_max: float = 80.0) -> Schedule:
    """Log-spaced noise-to-signal ratios in the variance-preserving form.

    ``sigma_i = sigma_min (sigma_max / sigma_min)^(i / (S - 1))``, ``abar_i = 1 / (1 + sigma_i^2)``,
    ``beta_i = 1 - abar_i / abar_{i-1}`` (``abar_{-1} = 1``).  A VP state at level ``i`` is
    ``sqrt(abar_i) (x + sigma_i e)``: ``sigma_i`` is the noise std in the data's units, as in
    EDM's sigma (Karras et al. 2022), and the levels are spread evenly in ``log sigma``.

    Why: the cosine schedule's lowest level has noise std ~0.025 (S = 100) in normalised units,
    far above a good surrogate's one-step error (~2e-3 on Lorenz-63), so level heads cannot see
    that error and a "minimal" refinement still replaces the step.  Put ``sigma_min`` below the
    surrogate's one-step error so that the bottom level means "leave it".
    """
    _check_n_levels(n_levels)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    sigma = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), n_levels, dtype=torch.float64)
    abar = 1.0 / (1.0 + sigma**2)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return Schedule.from_betas(1.0 - abar / abar_prev, name="log_sigma")


SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule, "log_sigma": log_sigma_schedule}


def make_schedule(name: str, n_levels: int, **kwargs: float) -> Schedule:
    """Schedule by name: ``"cosine"``, ``"linear"`` or ``"log_sigma"`` (keyword arguments pass through)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](n_levels, **kwargs)


def _check_n_levels(n_levels: int) -> None:
    if not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"the number of noise levels S must be an integer >= 2, got {n_levels!r}")
