"""The DDPM ancestral reverse step, vectorised over per-sample levels, in the x0 form.

For a state ``x`` at level ``i`` (0-based, see :mod:`sns.diffusion.schedules`) and
a noise estimate ``eps_hat``::

    x0_hat = (x - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i)          [optionally clamped]
    mean   = sqrt(abar_{i-1}) beta_i / (1 - abar_i) * x0_hat
           + sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i) * x
    x'     = mean + sigma_i z,   sigma_i^2 = beta_i (1 - abar_{i-1}) / (1 - abar_i)

with ``abar_{-1} = 1``, so the step at ``i = 0`` returns ``x0_hat`` with no noise.
Without clamping this equals Ho et al.'s eps form
``x' = (x - beta_i / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i) + sigma_i z``; the x0
form lets ``x0_hat`` be clamped, which keeps the top level (``beta = 0.999``,
``1/sqrt(alpha) ~ 32``) from amplifying network errors into NaN (DESIGN.md
section 5, pitfall 1).  Coefficients are computed in float64 and cast to ``x``'s dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sns.diffusion.noising import randn_like, table
from sns.diffusion.schedules import Schedule

__all__ = ["ddpm_step", "predict_x0"]


def predict_x0(schedule: Schedule, x: Tensor, eps_hat: Tensor, i: Tensor,
               clamp: float | None = None) -> Tensor:
    """``x0_hat = (x - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i)``, clamped to ``[-clamp, clamp]``."""
    abar = table(schedule.abar, i, x)
    x0 = (x - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    return x0 if clamp is None else x0.clamp(-clamp, clamp)


def ddpm_step(
    schedule: Schedule,
    x: Tensor,
    eps_hat: Tensor,
    i: Tensor,
    z: Tensor | None = None,
    clamp: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One ancestral step from level ``i`` to ``i - 1`` (to the clean state at ``i = 0``).

    Args:
        x: states at levels ``i``, ``(B, ...)``.
        eps_hat: predicted noise, ``x``'s shape.
        i: integer levels ``(B,)`` in ``[0, S)``, one per sample.
        z: standard normal noise (``x``'s shape); drawn with ``generator`` if ``None``.
            Ignored where ``i = 0``.
        clamp: clamp ``x0_hat`` to ``[-clamp, clamp]`` (in the units of the state).
    """
    if i.shape != (x.shape[0],):
        raise ValueError(f"levels must have shape ({x.shape[0]},), got {tuple(i.shape)}")
    schedule.check_levels(i)
    x0 = predict_x0(schedule, x, eps_hat, i, clamp)
    one_m_abar = table(1 - schedule.abar, i, x)
    c0 = table(schedule.abar_prev.sqrt() * schedule.betas, i, x) / one_m_abar
    cx = table(schedule.alphas.sqrt() * (1 - schedule.abar_prev), i, x) / one_m_abar
    mean = c0 * x0 + cx * x
    sigma = table(schedule.posterior_variance.sqrt(), i, x)
    if z is None:
        z = randn_like(x, generator)
    return mean + sigma * z
