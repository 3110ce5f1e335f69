"""Ensemble (probabilistic) scores: error of the ensemble mean, spread, spread-skill ratio, CRPS.

An *ensemble* is ``M`` forecasts of the same quantity, stacked on axis ``member_axis``; the
*reference* (verifying truth) has the ensemble's shape without that axis.  Scores are computed
per element (one scalar forecast: a coordinate, or a grid point, of one initial condition at one
lead time) and averaged over the axes ``axis`` of the reference (``None``: all), so that e.g.
``axis=(0, 2)`` of a reference ``(trajectory, time, dim)`` gives one value per lead time.  These
are the scores DYffusion (Cachay et al. 2023) and The Well (Ohana et al. 2024) report.

Conventions (``x_m`` the members, ``xbar`` their mean, ``y`` the reference, ``<.>`` the mean over
the averaged elements):

* **RMSE of the ensemble mean**: ``sqrt(<(xbar - y)^2>)``.
* **Spread**: ``sqrt(<s^2>)`` with the unbiased ensemble variance
  ``s^2 = sum_m (x_m - xbar)^2 / (M - 1)`` (the population variance times ``M / (M - 1)``);
  variances are averaged, then the square root taken (Fortin et al. 2014).
* **Spread-skill ratio**: ``sqrt((M + 1) / M) * spread / RMSE``.  For a perfectly reliable
  ensemble (truth and members exchangeable draws of one distribution)
  ``E (xbar - y)^2 = (M + 1) / M * E s^2``, so the ratio is 1 for any ``M``
  (Fortin, Abaza, Anctil & Turcotte, *Why should ensemble spread match the RMSE of the ensemble
  mean?*, J. Hydrometeor. 15 (2014) 1708); > 1 over-dispersed, < 1 under-dispersed, 0 for a
  collapsed (deterministic) ensemble.
* **CRPS** ``CRPS(F, y) = E|X - y| - E|X - X'| / 2`` (Gneiting & Raftery 2007), estimated from
  the members by::

      crps_fair   = 1/M sum_m |x_m - y| - 1/(2 M (M - 1)) sum_{m, m'} |x_m - x_m'|
      crps_biased = 1/M sum_m |x_m - y| - 1/(2 M^2)       sum_{m, m'} |x_m - x_m'|

  ``crps_fair`` (Ferro 2014; Zamo & Naveau 2018) is unbiased for the CRPS of the distribution
  the members are drawn from, whatever ``M``: it is the one reported as ``crps``.
  ``crps_biased`` is the CRPS of the ensemble's empirical distribution (what
  ``properscoring.crps_ensemble`` computes); for members drawn from ``F`` its expectation is
  ``CRPS(F, y) + E|X - X'| / (2 M)`` (``+ sigma / (M sqrt(pi))`` for a Gaussian).  The pair sum
  is computed from the sorted members, ``sum_{m, m'} |x_m - x_m'| = 2 sum_i (2 i - M + 1) x_(i)``
  (0-based order statistics), so memory and time are ``O(M log M)`` per element.  Units: those
  of the data.  With ``M = 1`` spread, spread-skill and ``crps_fair`` are NaN and
  ``crps_biased`` is the absolute error.
* :func:`crps_gaussian`: the closed form for ``F = N(mu, sigma^2)``,
  ``sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]`` with ``z = (y - mu) / sigma``
  (Gneiting & Raftery 2007, eq. 21).

Inputs may be numpy arrays or torch tensors; results are numpy ``float64``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import special

__all__ = [
    "crps_ensemble",
    "crps_gaussian",
    "ensemble_mean_rmse",
    "ensemble_scores",
    "ensemble_spread",
    "spread_skill_from_moments",
    "spread_skill_ratio",
]


def _np(x: ArrayLike | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _members_last(ensemble: ArrayLike | torch.Tensor, reference: ArrayLike | torch.Tensor | None,
                  member_axis: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The ensemble with its member axis moved last ``(*ref_shape, M)`` and the reference."""
    ens = _np(ensemble)
    if ens.ndim < 1:
        raise ValueError("the ensemble must have a member axis")
    ens = np.moveaxis(ens, member_axis, -1)
    if ens.shape[-1] < 1:
        raise ValueError("the ensemble has no members")
    if reference is None:
        return ens, None
    ref = _np(reference)
    if ref.shape != ens.shape[:-1]:
        raise ValueError(f"the reference must have the ensemble's shape without the member axis "
                         f"{ens.shape[:-1]}, got {ref.shape}")
    return ens, ref


def _mean(a: np.ndarray, axis: int | Sequence[int] | None) -> np.ndarray:
    return np.asarray(np.mean(a, axis=None if axis is None else tuple(np.atleast_1d(axis))), dtype=np.float64)


def _ensemble_var(ens: np.ndarray) -> np.ndarray:
    m = ens.shape[-1]
    if m < 2:
        return np.full(ens.shape[:-1], np.nan)
    # shifted by the first member: the same variance, exactly 0 for identical members
    return (ens - ens[..., :1]).var(axis=-1, ddof=1)


def ensemble_mean_rmse(ensemble: ArrayLike | torch.Tensor, reference: ArrayLike | torch.Tensor,
                       member_axis: int = 0, axis: int | Sequence[int] | None = None) -> np.ndarray:
    """``sqrt(<(xbar - y)^2>)``: RMSE of the ensemble mean, averaged over ``axis`` of the reference."""
    ens, ref = _members_last(ensemble, reference, member_axis)
    return np.sqrt(_mean((ens.mean(-1) - ref) ** 2, axis))


def ensemble_spread(ensemble: ArrayLike | torch.Tensor, member_axis: int = 0,
                    axis: int | Sequence[int] | None = None) -> np.ndarray:
    """``sqrt(<s^2>)`` with the unbiased (``M - 1``) ensemble variance ``s^2``, averaged over
    ``axis`` of the ensemble without its member axis; NaN for ``M = 1``."""
    ens, _ = _members_last(ensemble, None, member_axis)
    return np.sqrt(_mean(_ensemble_var(ens), axis))


def spread_skill_ratio(ensemble: ArrayLike | torch.Tensor, reference: ArrayLike | torch.Tensor,
                       member_axis: int = 0, axis: int | Sequence[int] | None = None) -> np.ndarray:
    """``sqrt((M + 1) / M) * spread / RMSE`` (1 for a reliable ensemble, 0 for a collapsed one;
    NaN where the RMSE is 0 and the spread too, inf where only the RMSE is)."""
    return ensemble_scores(ensemble, reference, member_axis, axis)["spread_skill"]


def _pair_sum(ens: np.ndarray) -> np.ndarray:
    """``sum_{m, m'} |x_m - x_m'|`` over the last axis, from the order statistics."""
    m = ens.shape[-1]
    w = 2.0 * np.arange(m) - m + 1.0
    srt = np.sort(ens, axis=-1)
    return 2.0 * (srt - srt[..., :1]) @ w  # shifted (the weights sum to 0): exactly 0 for identical members


def crps_ensemble(ensemble: ArrayLike | torch.Tensor, reference: ArrayLike | torch.Tensor,
                  member_axis: int = 0, fair: bool = True) -> np.ndarray:
    """CRPS of every element (the reference's shape) from the ensemble: the fair (unbiased)
    estimator by default, the empirical distribution's CRPS with ``fair=False`` (module docstring)."""
    ens, ref = _members_last(ensemble, reference, member_axis)
    m = ens.shape[-1]
    skill = np.abs(ens - ref[..., None]).mean(-1)
    if fair and m < 2:
        return np.full(ref.shape, np.nan)
    norm = 2.0 * m * (m - 1) if fair else 2.0 * m * m
    return skill - _pair_sum(ens) / norm


def crps_gaussian(mu: ArrayLike | torch.Tensor, sigma: ArrayLike | torch.Tensor,
                  y: ArrayLike | torch.Tensor) -> np.ndarray:
    """Closed-form CRPS of ``N(mu, sigma^2)`` at ``y`` (broadcast):
    ``sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]``, ``z = (y - mu) / sigma``; ``|y - mu|``
    where ``sigma = 0``."""
    mu, sigma, y = np.broadcast_arrays(_np(mu), _np(sigma), _np(y))
    if (sigma < 0).any():
        raise ValueError("sigma must be >= 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (y - mu) / sigma
        phi = np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
        out = sigma * (z * special.erf(z / np.sqrt(2.0)) + 2.0 * phi - 1.0 / np.sqrt(np.pi))
    return np.where(sigma > 0, out, np.abs(y - mu))


def ensemble_scores(ensemble: ArrayLike | torch.Tensor, reference: ArrayLike | torch.Tensor,
                    member_axis: int = 0, axis: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """All scores at once, averaged over ``axis`` of the reference (``None``: all).

    Returns ``{"rmse", "spread", "spread_skill", "crps" (fair), "crps_biased", "mse", "var"}``:
    ``mse = <(xbar - y)^2>`` and ``var = <s^2>`` are the averaged squares, which combine over
    further averages (e.g. over lead times: :func:`spread_skill_from_moments` of ``var.mean()`` and
    ``mse.mean()``).
    """
    ens, ref = _members_last(ensemble, reference, member_axis)
    m = ens.shape[-1]
    mse = _mean((ens.mean(-1) - ref) ** 2, axis)
    var = _mean(_ensemble_var(ens), axis)
    skill = np.abs(ens - ref[..., None]).mean(-1)
    pairs = _pair_sum(ens)
    crps_biased = _mean(skill - pairs / (2.0 * m * m), axis)
    crps = _mean(skill - pairs / (2.0 * m * (m - 1)), axis) if m > 1 else np.full(np.shape(mse), np.nan)
    return {"rmse": np.sqrt(mse), "spread": np.sqrt(var), "spread_skill": spread_skill_from_moments(var, mse, m), "crps": crps,
            "crps_biased": crps_biased, "mse": mse, "var": var}


def spread_skill_from_moments(var: ArrayLike, mse: ArrayLike, members: int) -> np.ndarray:
    """``sqrt((M + 1) / M * var / mse)``: the spread-skill ratio from the averaged unbiased
    ensemble variance and squared error of the mean (NaN for 0 / 0)."""
    var, mse = np.asarray(var, dtype=np.float64), np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((members + 1.0) / members * var / mse)
