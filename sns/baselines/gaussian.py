"""Gaussian approximation: the deterministic surrogate rolled out alone.

``x_n = F(x_{n-1}) + sigma z_n``, ``z_n ~ N(0, I)``.  With ``sigma = 0`` this is the plain
surrogate (the paper's "Gaussian approximation": a deterministic network trained with MSE is
the mean of a Gaussian transition density); ``sigma > 0`` makes it a stochastic emulator
with a fixed isotropic Gaussian transition, as in the Thermalizer paper's noisy rollouts.
``noise`` (a :class:`~sns.diffusion.sampling.ModeVariance` prior, e.g. the surrogate's residual
spectrum from :func:`sns.refine.calibrate_x0_variance`) makes the transition Gaussian with that
per-mode covariance instead: the control for a refiner that adds the same spread (issue 14).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sns.diffusion.noising import randn_like
from sns.diffusion.sampling import ModeVariance
from sns.rollout.stepper import check_step_output

__all__ = ["GaussianApproximation", "from_settings"]


class GaussianApproximation(nn.Module):
    """Stepper ``x -> F(x) + sigma z``; one network call per sample and step.

    Args:
        surrogate: any ``nn.Module`` or callable ``(B, *state) -> (B, *state)``.
        sigma: std of the added noise (state units, >= 0).
        noise: coloured Gaussian noise with this per-mode variance (state units; a prior, not a
            per-level table), added after ``sigma``'s; ``None``: none.
    """

    def __init__(self, surrogate: nn.Module | Callable[[Tensor], Tensor], sigma: float = 0.0,
                 noise: ModeVariance | None = None) -> None:
        super().__init__()
        if not callable(surrogate):
            raise TypeError(f"surrogate must be an nn.Module or a callable, got {type(surrogate).__name__}")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        self.surrogate = surrogate
        self.sigma = float(sigma)
        if noise is not None and (not isinstance(noise, ModeVariance) or noise.per_level):
            raise TypeError("noise must be a ModeVariance prior (per_level=False) or None")
        self.noise = noise
        self.last_calls: int | None = None

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, *state) -> (B, *state)``."""
        out = check_step_output(x, self.surrogate(x), "the surrogate")
        if self.sigma > 0:
            out = out + self.sigma * randn_like(out, generator)
        if self.noise is not None:
            out = out + self.noise.sample(self.noise.var, randn_like(out, generator))
        self.last_calls = 1
        return out


def from_settings(model, extra, surrogate, settings, context) -> tuple[GaussianApproximation, dict]:
    """Registry builder (:mod:`sns.methods`, ``sns-rollout gaussian.*``): ``sigma`` (default 0)."""
    recorded = {"sigma": float(settings.get("sigma", 0.0))}
    return GaussianApproximation(surrogate, sigma=recorded["sigma"]), recorded
