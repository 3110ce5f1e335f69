"""Time-series metrics of rollouts: temporal consistency, errors, blow-up, statistics.

Layout: a trajectory is an array whose axis ``time_axis`` is time; the axes *before* it
are trajectory (initial-condition) dims and the axes *after* it form one frame ``x_t``
(a field ``(H, W)``, QG layers ``(2, H, W)``, or a state vector ``(d,)``), flattened to a
vector in ``R^D``.  So ``(T, ...)`` is one trajectory (``time_axis=0``, the default) and
``(N, T, ...)`` is ``N`` trajectories (``time_axis=1``), matching the stored dims
``(trajectory, time, ...)`` of :mod:`sns.data.schema`.  "Spatial mean" ``<.>`` is the mean
over the frame's ``D`` entries.  Inputs may be numpy arrays or torch tensors; results are
numpy ``float64`` arrays (or plain Python numbers where stated).

References: the spatio-temporal correlation ``C(tau)`` and rate of change ``R(t)`` are
those of the SNS paper (Fig. 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "autocorrelation",
    "blowup_step",
    "correlation_time",
    "mse_series",
    "pearson_series",
    "rate_of_change",
    "spatiotemporal_correlation",
    "spectrum_distance",
    "wasserstein1_per_coordinate",
]


def _np(x: ArrayLike | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _frames(x: ArrayLike | torch.Tensor, time_axis: int, name: str = "x") -> np.ndarray:
    """``x`` reshaped to ``(*lead, T, D)`` (lead = trajectory dims, D = frame size)."""
    a = _np(x)
    if not isinstance(time_axis, int) or not 0 <= time_axis < a.ndim:
        raise ValueError(
            f"time_axis must be an int in [0, {a.ndim - 1}] for {name} of shape {a.shape}, got {time_axis!r}"
        )
    lead = a.shape[:time_axis]
    return a.reshape(*lead, a.shape[time_axis], -1)


def spatiotemporal_correlation(
    x: ArrayLike | torch.Tensor, max_lag: int, time_axis: int = 0
) -> np.ndarray:
    """The paper's spatio-temporal correlation ``C(tau)``, ``tau = 0 .. max_lag`` (in frames).

    ``C(tau) = < <x'_t, x'_{t+tau}> / (|x'_t|_2 |x'_{t+tau}|_2) >_{t, IC}``, with
    ``x'_t = x_t - mean(x_t)`` the frame minus its spatial mean, ``<.,.>`` the Euclidean
    inner product over the frame, and the outer mean over all start times
    ``t = 0 .. T-1-tau`` and over all trajectory dims (the axes before ``time_axis``).
    ``C(0) = 1``; ``C`` is dimensionless.  A frame with zero variance gives NaN.

    ``x``: ``(T, ...)`` (``time_axis=0``) or ``(N, T, ...)`` (``time_axis=1``).
    Returns shape ``(max_lag + 1,)``.  Requires ``max_lag < T``.
    """
    f = _frames(x, time_axis)
    t_len = f.shape[-2]
    if not isinstance(max_lag, int) or not 0 <= max_lag < t_len:
        raise ValueError(f"max_lag must be an int in [0, T-1] = [0, {t_len - 1}], got {max_lag!r}")
    f = f - f.mean(axis=-1, keepdims=True)
    z = f / np.linalg.norm(f, axis=-1, keepdims=True)
    out = np.empty(max_lag + 1)
    for tau in range(max_lag + 1):
        out[tau] = np.einsum("...td,...td->...t", z[..., : t_len - tau, :], z[..., tau:, :]).mean()
    return out


def rate_of_change(x: ArrayLike | torch.Tensor, dt: float, time_axis: int = 0) -> np.ndarray:
    """The paper's rate of change ``R(t) = || (x_{t+1} - x_t) / dt ||_1`` per step.

    The norm is the *mean* absolute value over the frame's ``D`` entries (``||v||_1 / D``),
    so ``R`` does not depend on the grid size; units of ``x`` per unit time.  ``x``:
    ``(*lead, T, ...)`` with time at ``time_axis``; returns ``(*lead, T - 1)`` (average
    over the trajectory dims yourself, as the paper does over initial conditions).
    """
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    f = _frames(x, time_axis)
    return np.abs(np.diff(f, axis=-2) / dt).mean(axis=-1)


def _pair(
    pred: ArrayLike | torch.Tensor, ref: ArrayLike | torch.Tensor, time_axis: int
) -> tuple[np.ndarray, np.ndarray]:
    p, r = _np(pred), _np(ref)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}")
    return _frames(p, time_axis, "pred"), _frames(r, time_axis, "ref")


def mse_series(
    pred: ArrayLike | torch.Tensor, ref: ArrayLike | torch.Tensor, time_axis: int = 0
) -> np.ndarray:
    """Mean squared error per frame, ``MSE(t) = <(pred_t - ref_t)^2>`` -> ``(*lead, T)``.

    ``<.>`` is the mean over the frame; units of ``x^2``.  Shapes as in the module docstring.
    """
    p, r = _pair(pred, ref, time_axis)
    return np.mean((p - r) ** 2, axis=-1)


def pearson_series(
    pred: ArrayLike | torch.Tensor, ref: ArrayLike | torch.Tensor, time_axis: int = 0
) -> np.ndarray:
    """Pearson correlation per frame between prediction and reference -> ``(*lead, T)``.

    ``rho(t) = <p'_t, r'_t> / (|p'_t| |r'_t|)`` with ``p'_t, r'_t`` the frames minus their
    spatial means (dimensionless, in ``[-1, 1]``; NaN for a constant frame).
    """
    p, r = _pair(pred, ref, time_axis)
    p = p - p.mean(axis=-1, keepdims=True)
    r = r - r.mean(axis=-1, keepdims=True)
    return (p * r).sum(-1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(r, axis=-1))


def correlation_time(
    corr: ArrayLike | torch.Tensor,
    thresholds: Sequence[float] = (0.8, 0.9, 0.95),
    dt: float = 1.0,
    t0: float = 0.0,
) -> dict[float, float | None]:
    """First time a correlation series falls below each threshold.

    ``corr`` is ``(T,)`` with ``corr[i]`` at time ``t0 + i * dt`` (e.g. a
    :func:`pearson_series` averaged over trajectories).  For each threshold ``c`` returns
    ``t0 + i* dt`` with ``i*`` the first index where ``corr[i] < c`` or ``corr[i]`` is NaN
    (a blown-up rollout has decorrelated), or ``None`` if that never happens.  The result
    is at most one ``dt`` after the true crossing of a continuous signal.
    """
    c = _np(corr)
    if c.ndim != 1:
        raise ValueError(
            f"corr must be 1-D (T,), got shape {c.shape}; average over trajectories first"
        )
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    out: dict[float, float | None] = {}
    for thr in thresholds:
        below = np.flatnonzero(~(c >= thr))
        out[thr] = float(t0 + below[0] * dt) if below.size else None
    return out


def spectrum_distance(
    e_pred: ArrayLike | torch.Tensor, e_ref: ArrayLike | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Distance between energy spectra ``(..., K)`` (same shells, e.g. from ``energy_spectrum``).

    Returns ``(rel, log_l2)``:

    * ``rel[..., s] = |E_pred(k_s) - E_ref(k_s)| / E_ref(k_s)`` per shell, ``(..., K)``;
      NaN on shells where ``E_ref = 0`` (shell 0, and shells emptied by truncation).
    * ``log_l2 = sqrt( mean_s (ln E_pred(k_s) - ln E_ref(k_s))^2 )`` over the shells with
      ``E_ref > 0``, shape ``(...)``; ``inf`` if ``E_pred = 0`` on such a shell.  It is
      dimensionless and weighs every shell equally, so it sees errors at small scales,
      where the energy is orders of magnitude below the peak.
    """
    p, r = _np(e_pred), _np(e_ref)
    if p.shape != r.shape:
        raise ValueError(f"spectra must have the same shape, got {p.shape} and {r.shape}")
    valid = r > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(valid, np.abs(p - r) / np.where(valid, r, 1.0), np.nan)
        logdiff = np.where(
            valid, np.log(np.where(valid, p, 1.0)) - np.log(np.where(valid, r, 1.0)), 0.0
        )
    n = valid.sum(axis=-1)
    if np.any(n == 0):
        raise ValueError("reference spectrum has no positive shell")
    log_l2 = np.sqrt((logdiff**2).sum(axis=-1) / n)
    return rel, log_l2


def blowup_step(
    x: ArrayLike | torch.Tensor, factor: float, ref_rms: float, time_axis: int = 0
) -> int | None:
    """First time index whose RMS exceeds ``factor * ref_rms`` or is not finite, else ``None``.

    ``RMS(t) = sqrt(<x_t^2>)`` with ``<.>`` over the frame and all trajectory dims (so one
    diverging trajectory flags the step).  ``ref_rms`` is e.g. the RMS of the reference data
    (same units as ``x``); ``factor`` > 0 (e.g. 10).
    """
    if not factor > 0 or not ref_rms > 0:
        raise ValueError(
            f"factor and ref_rms must be positive, got factor={factor!r}, ref_rms={ref_rms!r}"
        )
    f = _frames(x, time_axis)
    f = np.moveaxis(f, -2, 0).reshape(f.shape[-2], -1)
    with np.errstate(over="ignore", invalid="ignore"):
        rms = np.sqrt(np.mean(f**2, axis=-1))
    bad = np.flatnonzero(~(rms <= factor * ref_rms))  # NaN/inf compare False
    return int(bad[0]) if bad.size else None


def wasserstein1_per_coordinate(
    a: ArrayLike | torch.Tensor, b: ArrayLike | torch.Tensor
) -> np.ndarray:
    """1-Wasserstein distance between the marginals of two samples, one per coordinate.

    ``a``: ``(..., d)``, ``b``: ``(..., d)`` (all leading dims, e.g. trajectory and time, are
    samples; sample counts may differ).  ``W1_j = int |F_a,j(s) - F_b,j(s)| ds`` between the
    empirical CDFs of coordinate ``j`` (:func:`scipy.stats.wasserstein_distance`).  Returns
    ``(d,)`` in the units of the data.
    """
    pa, pb = _np(a), _np(b)
    if pa.ndim < 1 or pb.ndim < 1 or pa.shape[-1] != pb.shape[-1]:
        raise ValueError(f"a and b must be (..., d) with the same d, got {pa.shape} and {pb.shape}")
    pa = pa.reshape(-1, pa.shape[-1])
    pb = pb.reshape(-1, pb.shape[-1])
    return np.array([stats.wasserstein_distance(pa[:, j], pb[:, j]) for j in range(pa.shape[1])])


def autocorrelation(x: ArrayLike | torch.Tensor, max_lag: int, time_axis: int = 0) -> np.ndarray:
    """Temporal autocorrelation of each coordinate, ``rho_j(tau)``, ``tau = 0 .. max_lag`` frames.

    ``rho_j(tau) = mean_t (x_j(t) - m_j)(x_j(t+tau) - m_j) / var_j`` over the ``T - tau``
    available pairs, with ``m_j``, ``var_j`` the mean and variance of coordinate ``j`` over
    all times and trajectories, then averaged over trajectories.  ``x``: ``(T, ...)`` or
    ``(N, T, ...)`` (time at ``time_axis``, trailing dims are coordinates, flattened to
    ``d``).  Returns ``(max_lag + 1, d)``; ``rho(0) = 1`` (NaN for a constant coordinate).
    """
    f = _frames(x, time_axis)
    t_len = f.shape[-2]
    if not isinstance(max_lag, int) or not 0 <= max_lag < t_len:
        raise ValueError(f"max_lag must be an int in [0, T-1] = [0, {t_len - 1}], got {max_lag!r}")
    f = f.reshape(-1, t_len, f.shape[-1])  # (N, T, d)
    f = f - f.mean(axis=(0, 1))
    var = (f**2).mean(axis=(0, 1))
    out = np.empty((max_lag + 1, f.shape[-1]))
    for tau in range(max_lag + 1):
        out[tau] = (f[:, : t_len - tau] * f[:, tau:]).mean(axis=(0, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return out / var
