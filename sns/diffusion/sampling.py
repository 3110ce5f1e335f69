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

__all__ = ["ddpm_step", "posterior_step", "predict_x0"]


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


def posterior_step(
    schedule: Schedule,
    x: Tensor,
    eps_hat: Tensor,
    i: Tensor,
    j: Tensor,
    z: Tensor | None = None,
    clamp: float | None = None,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A (possibly strided) reverse step from level ``i`` to level ``j < i`` (``j = -1``: clean).

    With ``a = abar_i / abar_j`` (``abar_{-1} = 1``) the forward kernel is
    ``q(x_i | x_j) = N(sqrt(a) x_j, (1 - a) I)``, and the DDPM posterior given ``x0``::

        q(x_j | x_i, x0) = N(mean, var),  var = (1 - a)(1 - abar_j) / (1 - abar_i),
        mean = sqrt(abar_j) x0 + sqrt(1 - abar_j - var) eps',  eps' = (x - sqrt(abar_i) x0) / sqrt(1 - abar_i)

    This step draws ``x_j = sqrt(abar_j) x0_hat + sqrt(1 - abar_j - s^2) eps' + s z`` with
    ``s = eta sqrt(var)`` (Song et al. 2021, DDIM, eq. 12): ``eta = 1`` is the DDPM posterior
    (for ``j = i - 1`` exactly :func:`ddpm_step`), ``eta = 0`` the deterministic DDIM step.
    ``eps'`` is recomputed from the (optionally clamped) ``x0_hat``, so clamping stays consistent.
    At ``j = -1`` the step returns ``x0_hat``.

    Strided steps are exact only for an exact oracle *and* the continuum limit: for unit-variance
    Gaussian data one DDPM step ``i -> j`` gives the marginal variance
    ``a + (1 - a)(1 - abar_j)/(1 - abar_i)`` (below the true 1); see tests/test_oracle.py.

    Args:
        x: states at levels ``i``, ``(B, ...)``; ``eps_hat``: predicted noise (``x``'s shape).
        i, j: integer levels ``(B,)``, ``i`` in ``[0, S)``, ``-1 <= j < i``.
        z: standard normal noise (drawn with ``generator`` if ``None``); unused where ``j = -1``.
        eta: stochasticity in ``[0, 1]``.
    """
    if i.shape != (x.shape[0],) or j.shape != (x.shape[0],):
        raise ValueError(f"levels must have shape ({x.shape[0]},), got i {tuple(i.shape)}, j {tuple(j.shape)}")
    schedule.check_levels(i)
    bad = ((j < -1) | (j >= i)).nonzero()
    if len(bad):
        b = int(bad[0])
        raise ValueError(f"target level j[{b}] = {int(j[b])} must satisfy -1 <= j < i = {int(i[b])}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    x0 = predict_x0(schedule, x, eps_hat, i, clamp)
    abar_ext = torch.cat([torch.ones(1, dtype=torch.float64), schedule.abar])  # abar_ext[j + 1] = abar_j
    ab_i, ab_j = schedule.abar[i.cpu()], abar_ext[(j + 1).cpu()]  # float64 (B,)
    var = (1 - ab_i / ab_j) * (1 - ab_j) / (1 - ab_i)
    s2 = eta**2 * var
    col = lambda v: v.to(x.device).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    eps = (x - col(ab_i.sqrt()) * x0) / col((1 - ab_i).sqrt())
    out = col(ab_j.sqrt()) * x0 + col((1 - ab_j - s2).clamp(min=0).sqrt()) * eps
    s = col(s2.sqrt())
    if eta > 0:
        if z is None:
            z = randn_like(x, generator)
        out = out + s * z
    return out
