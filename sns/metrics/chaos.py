"""Chaos and embedding toolkit: delay embedding, correlation dimension, Lyapunov exponents,
power spectra, divergence error, interspike intervals.

These are the validation tools of seed 000 ("Step-by-Step Guide", steps 1 and 3): a scalar
series is turned into state vectors by a delay embedding, and a generated trace is compared
with the real one by its correlation dimension, largest Lyapunov exponent, power spectrum
and local divergence; for neurons, by its interspike intervals.

* **Delay embedding** (Takens 1981): ``y_i = (x_i, x_{i+tau}, ..., x_{i+(m-1) tau})``.
  The delay ``tau`` is the first local minimum of the mutual information ``I(tau)`` between
  ``x_t`` and ``x_{t+tau}`` (Fraser & Swinney, Phys. Rev. A 33 (1986) 1134), the dimension
  ``m`` the smallest one whose fraction of false nearest neighbours is below a threshold
  (Kennel, Brown & Abarbanel, Phys. Rev. A 45 (1992) 3403).  Rule of thumb of the seed:
  ``m >= 2 D2 + 1``.
* **Correlation dimension** ``D2`` (Grassberger & Procaccia, Phys. Rev. Lett. 50 (1983) 346):
  the slope of ``log C(r)`` against ``log r``, where ``C(r)`` is the fraction of pairs of
  points closer than ``r``.  Lorenz-63: ``D2 = 2.05 +- 0.01``.
* **Largest Lyapunov exponent** from a series (Rosenstein, Collins & De Luca, Physica D 65
  (1993) 117): the slope of the mean log distance between initially nearest neighbours;
  from known equations (Benettin et al. 1980; Shimada & Nagashima 1979): tangent vectors
  integrated with the state and re-orthonormalised by QR, exponents the mean log of R's
  diagonal.  Lorenz-63: ``lambda_1 = 0.9056`` (Sprott, *Chaos and Time-Series Analysis*,
  2003).
* **Power spectral density** (Welch 1967), one-sided, normalised so that it integrates to
  the variance.
* **Divergence error**: mean absolute deviation of the local divergence ``tr(df/dx)`` of a
  model field from the true one.
* **Interspike intervals** of a membrane-potential trace and an error between two ISI
  distributions (seed 000 reports the ISI error of Hodgkin-Huxley surrogates).

Inputs may be numpy arrays or torch tensors; results are numpy ``float64`` (or plain
floats/ints where stated).  Nothing is quadratic in the series length: neighbour searches
and pair counts use :class:`scipy.spatial.cKDTree`, and the quadratic parts (pair counts)
are capped by ``max_points`` random points.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from numpy.typing import ArrayLike
from scipy import signal
from scipy.spatial import cKDTree
from torch import Tensor

__all__ = [
    "DelayEmbedding",
    "correlation_dimension",
    "correlation_sum",
    "delay_embed",
    "divergence_error",
    "embed",
    "false_nearest_neighbours",
    "fnn_dimension",
    "interspike_intervals",
    "isi_error",
    "largest_lyapunov_qr",
    "local_divergence",
    "lyapunov_qr",
    "lyapunov_rosenstein",
    "mi_delay",
    "mutual_information",
    "power_spectral_density",
    "rosenstein_divergence",
]

#: Lorenz-63 reference values at (sigma, rho, beta) = (10, 28, 8/3), for tests and tables.
LORENZ63_D2 = 2.05  # Grassberger & Procaccia 1983
LORENZ63_LAMBDA1 = 0.9056  # Sprott 2003


# ----------------------------------------------------------------------------- helpers


def _np(x: ArrayLike | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _series(x: ArrayLike | Tensor, name: str = "x") -> np.ndarray:
    """A scalar series as a 1-D float64 array (``(N,)`` or ``(N, 1)`` accepted)."""
    a = _np(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be a scalar series of shape (N,), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values ({int((~np.isfinite(a)).sum())} of {a.size})")
    return a


def _points(points: ArrayLike | Tensor, name: str = "points") -> np.ndarray:
    """Points as a ``(N, D)`` float64 array (a 1-D input is ``(N, 1)``)."""
    a = _np(points)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D) or (N,), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items (all of them if None)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    _check_int("max_points", max_points, 2)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


# ----------------------------------------------------------------------------- delay embedding


def mutual_information(x: ArrayLike | Tensor, max_lag: int, n_bins: int = 32) -> np.ndarray:
    """Mutual information ``I(tau)`` between ``x_t`` and ``x_{t+tau}``, ``tau = 0 .. max_lag``.

    Histogram estimator (Fraser & Swinney 1986, with a fixed partition): the range of ``x``
    is cut into ``n_bins`` equal bins, and for each lag::

        I(tau) = sum_ij p_ij(tau) ln( p_ij(tau) / (p_i(tau) q_j(tau)) )

    with ``p_ij`` the joint frequency of (bin of ``x_t``, bin of ``x_{t+tau}``) over the
    ``N - tau`` pairs and ``p_i``, ``q_j`` its marginals.  ``I(0)`` is the entropy of the
    binned series.  Units: nats.

    Returns ``(max_lag + 1,)``.
    """
    a = _series(x)
    max_lag = _check_int("max_lag", max_lag, 0)
    n_bins = _check_int("n_bins", n_bins, 2)
    if a.size < max_lag + 2:
        raise ValueError(
            f"series of length {a.size} is too short for max_lag={max_lag}: needs at least {max_lag + 2} samples"
        )
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros(max_lag + 1)
    b = np.minimum(((a - lo) / (hi - lo) * n_bins).astype(np.int64), n_bins - 1)
    out = np.empty(max_lag + 1)
    for lag in range(max_lag + 1):
        u, v = b[: a.size - lag], b[lag:]
        joint = np.bincount(u * n_bins + v, minlength=n_bins * n_bins).reshape(n_bins, n_bins) / u.size
        pu, pv = joint.sum(1), joint.sum(0)
        nz = joint > 0
        out[lag] = float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(pu, pv)[nz])))
    return out


def mi_delay(x: ArrayLike | Tensor, max_lag: int = 100, n_bins: int = 32) -> int:
    """Embedding delay (in samples): the first local minimum of :func:`mutual_information`.

    The first ``tau >= 1`` with ``I(tau - 1) > I(tau) <= I(tau + 1)``.  Fallback when the MI
    has no local minimum in ``1 .. max_lag - 1`` (monotone decay, e.g. a too small
    ``max_lag``): the first lag with ``I(tau) <= I(0) / e``, with a warning; if there is none
    either, ``ValueError`` (raise ``max_lag``).
    """
    mi = mutual_information(x, max_lag, n_bins)
    if max_lag < 2:
        raise ValueError(f"max_lag must be >= 2 to find a minimum of the mutual information, got {max_lag}")
    inner = np.flatnonzero((mi[1:-1] < mi[:-2]) & (mi[1:-1] <= mi[2:]))
    if inner.size:
        return int(inner[0] + 1)
    below = np.flatnonzero(mi[1:] <= mi[0] / math.e)
    if below.size:
        tau = int(below[0] + 1)
        warnings.warn(
            f"mutual information has no local minimum for lags 1..{max_lag - 1}; "
            f"using its first drop below I(0)/e, tau = {tau}", stacklevel=2)
        return tau
    raise ValueError(
        f"mutual information neither has a local minimum nor drops below I(0)/e for lags <= {max_lag}; "
        "raise max_lag (or the series is not sampled finely enough / too regular)"
    )


def delay_embed(x: ArrayLike | Tensor, dim: int, delay: int) -> np.ndarray:
    """Delay vectors ``y_i = (x_i, x_{i+delay}, ..., x_{i+(dim-1) delay})``.

    Returns ``(N - (dim - 1) delay, dim)`` (a copy).  ``ValueError`` naming ``dim``,
    ``delay`` and the length when the series is shorter than ``(dim - 1) delay + 1``.
    """
    a = _series(x)
    dim = _check_int("dim", dim, 1)
    delay = _check_int("delay", delay, 1)
    span = (dim - 1) * delay
    if a.size <= span:
        raise ValueError(
            f"series of length {a.size} is too short for a delay embedding with dim={dim}, delay={delay}: "
            f"needs at least (dim - 1) * delay + 1 = {span + 1} samples"
        )
    n = a.size - span
    return np.stack([a[k * delay: k * delay + n] for k in range(dim)], axis=1)


def false_nearest_neighbours(
    x: ArrayLike | Tensor,
    delay: int,
    max_dim: int = 10,
    rtol: float = 15.0,
    atol: float = 2.0,
    theiler: int = 0,
    max_points: int | None = 20000,
    seed: int = 0,
) -> np.ndarray:
    """Fraction of false nearest neighbours for ``dim = 1 .. max_dim`` (Kennel et al. 1992).

    For each embedding dimension ``d`` and reference point ``y_i`` (d-dim delay vector) with
    nearest neighbour ``y_j`` at distance ``R_d(i)``, the neighbour is *false* if adding the
    next coordinate separates them:

    * criterion 1: ``|x_{i + d tau} - x_{j + d tau}| > rtol * R_d(i)``, or
    * criterion 2: ``R_{d+1}(i) > atol * R_A``, ``R_A`` the standard deviation of ``x``.

    All ``d`` use the same ``N - max_dim * tau`` vectors so that the next coordinate exists.
    Distances below ``1e-9 R_A`` count as ``1e-9 R_A`` in criterion 1 (the repeated points of
    an exactly periodic series differ only by round-off).
    Neighbours are found with a :class:`cKDTree` (Euclidean); ``theiler > 0`` excludes
    neighbours with ``|i - j| <= theiler`` (temporal neighbours of an oversampled series);
    ``max_points`` random reference points (all points stay candidates).

    Returns ``(max_dim,)``: entry ``d - 1`` is the fraction at dimension ``d``.
    """
    a = _series(x)
    delay = _check_int("delay", delay, 1)
    max_dim = _check_int("max_dim", max_dim, 1)
    theiler = _check_int("theiler", theiler, 0)
    n = a.size - max_dim * delay
    if n < 2 * theiler + 3:
        raise ValueError(
            f"series of length {a.size} is too short for false nearest neighbours with max_dim={max_dim}, "
            f"delay={delay}, theiler={theiler}: needs more than max_dim * delay + 2 * theiler + 2 = "
            f"{max_dim * delay + 2 * theiler + 2} samples"
        )
    r_a = a.std()
    if r_a == 0:
        raise ValueError("false nearest neighbours of a constant series are undefined")
    full = np.stack([a[k * delay: k * delay + n] for k in range(max_dim + 1)], axis=1)
    ref = _subsample(n, max_points, seed)
    resolution = 1e-9 * r_a  # distances below this are round-off (repeated points of periodic data)
    out = np.empty(max_dim)
    for d in range(1, max_dim + 1):
        emb = full[:, :d]
        dist, j = _nearest_excluding(cKDTree(emb), emb, ref, theiler)
        ok = j >= 0
        i_ok, j_ok, r_d = ref[ok], j[ok], dist[ok]
        gap = np.abs(full[i_ok, d] - full[j_ok, d])
        crit1 = gap > rtol * np.maximum(r_d, resolution)
        crit2 = np.sqrt(r_d**2 + gap**2) > atol * r_a
        out[d - 1] = float(np.mean(crit1 | crit2)) if ok.any() else float("nan")
    return out


def _nearest_excluding(tree: cKDTree, pts: np.ndarray, ref: np.ndarray, theiler: int,
                       exclude_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour of ``pts[ref]`` among the tree's points with ``|i - j| > theiler``.

    Queries ``k = 2 theiler + 2`` neighbours (at most ``2 theiler + 1`` are temporal ones), so a
    valid neighbour always exists when the tree holds more than ``2 theiler + 1`` points.
    ``exclude_zero`` also skips neighbours at distance 0 (duplicated points).  Returns
    ``(dist, j)`` with ``j = -1`` where none was found.
    """
    k = min(2 * theiler + 2 + (8 if exclude_zero else 0), tree.n)
    dist, idx = tree.query(pts[ref], k=k)
    dist, idx = dist.reshape(len(ref), -1), idx.reshape(len(ref), -1)
    valid = np.abs(idx - ref[:, None]) > theiler
    if exclude_zero:
        valid &= dist > 0
    first = np.argmax(valid, axis=1)
    found = valid[np.arange(len(ref)), first]
    d = np.where(found, dist[np.arange(len(ref)), first], np.inf)
    j = np.where(found, idx[np.arange(len(ref)), first], -1)
    return d, j


def fnn_dimension(
    x: ArrayLike | Tensor,
    delay: int,
    max_dim: int = 10,
    threshold: float = 0.01,
    rtol: float = 15.0,
    atol: float = 2.0,
    theiler: int = 0,
    max_points: int | None = 20000,
    seed: int = 0,
) -> int:
    """Embedding dimension: the smallest ``d`` whose false-nearest-neighbour fraction is
    ``<= threshold`` (:func:`false_nearest_neighbours`).

    If no ``d <= max_dim`` reaches the threshold (noisy data), the ``d`` with the smallest
    fraction is returned with a warning.
    """
    fnn = false_nearest_neighbours(x, delay, max_dim, rtol, atol, theiler, max_points, seed)
    return _fnn_pick(fnn, threshold)


def _fnn_pick(fnn: np.ndarray, threshold: float) -> int:
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    below = np.flatnonzero(fnn <= threshold)
    if below.size:
        return int(below[0] + 1)
    d = int(np.nanargmin(fnn) + 1)
    warnings.warn(f"no embedding dimension <= {fnn.size} has a false-nearest-neighbour fraction <= {threshold} "
                  f"(fractions {np.round(fnn, 4).tolist()}); using the smallest, dim = {d}", stacklevel=3)
    return d


@dataclass(frozen=True)
class DelayEmbedding:
    """Result of :func:`embed`: the chosen delay (samples) and dimension, the delay vectors
    ``points`` ``(N - (dim - 1) delay, dim)``, and the curves behind the choice (``mi``:
    mutual information for lags ``0 .. max_lag``; ``fnn``: false-neighbour fractions for
    ``dim = 1 .. max_dim``; None where the value was given)."""

    delay: int
    dim: int
    points: np.ndarray
    mi: np.ndarray | None = None
    fnn: np.ndarray | None = None


def embed(
    x: ArrayLike | Tensor,
    delay: int | None = None,
    dim: int | None = None,
    max_lag: int = 100,
    n_bins: int = 32,
    max_dim: int = 10,
    threshold: float = 0.01,
    rtol: float = 15.0,
    atol: float = 2.0,
    theiler: int = 0,
    max_points: int | None = 20000,
    seed: int = 0,
) -> DelayEmbedding:
    """Delay-embed a scalar series, choosing what is not given (seed 000, step 1).

    ``delay`` (samples): first minimum of the mutual information (:func:`mi_delay`);
    ``dim``: false nearest neighbours with that delay (:func:`fnn_dimension`).
    """
    a = _series(x)
    mi = fnn = None
    if delay is None:
        mi = mutual_information(a, max_lag, n_bins)
        delay = mi_delay(a, max_lag, n_bins)
    if dim is None:
        fnn = false_nearest_neighbours(a, delay, max_dim, rtol, atol, theiler, max_points, seed)
        dim = _fnn_pick(fnn, threshold)
    return DelayEmbedding(delay=int(delay), dim=int(dim), points=delay_embed(a, dim, delay), mi=mi, fnn=fnn)


# ----------------------------------------------------------------------------- correlation dimension


def correlation_sum(
    points: ArrayLike | Tensor,
    radii: ArrayLike,
    theiler: int = 0,
    max_points: int | None = 5000,
    seed: int = 0,
) -> np.ndarray:
    """Correlation sum ``C(r)`` (Grassberger & Procaccia 1983) at each radius.

    ``C(r) = #{pairs i < j, |i - j| > theiler, |y_i - y_j| <= r} / #{pairs i < j, |i - j| > theiler}``
    with Euclidean distances, over at most ``max_points`` random points (sorted, so that
    ``i, j`` keep their order; the Theiler window is in samples of the input).  All pairs are
    counted by one dual-tree traversal (``cKDTree.count_neighbors``); the excluded temporal
    pairs (at most ``theiler`` per point) are subtracted explicitly.  No distance matrix.

    Args:
        points: ``(N, D)`` trajectory or attractor points (``(N,)``: one coordinate), in time
            order if ``theiler > 0``.
        radii: ``(R,)`` radii, same units as the points.
        theiler: exclude pairs closer than this many samples in time (0: only ``i = j``).
        max_points: subsample size (None: all points; cost ~ ``max_points^2`` at large r).

    Returns ``(R,)`` values in [0, 1].
    """
    y = _points(points)
    r = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if r.ndim != 1 or (r < 0).any() or not np.isfinite(r).all():
        raise ValueError(f"radii must be a 1-D array of finite non-negative numbers, got {radii!r}")
    theiler = _check_int("theiler", theiler, 0)
    idx = _subsample(len(y), max_points, seed)
    m = idx.size
    if m < 2:
        raise ValueError(f"correlation_sum needs at least 2 points, got {m}")
    sub = y[idx]
    order = np.argsort(r)
    tree = cKDTree(sub)
    counts = np.asarray(tree.count_neighbors(tree, r[order]), dtype=np.float64)
    pairs = (counts - m) / 2.0  # ordered pairs incl. i = j  ->  unordered distinct pairs
    n_pairs = m * (m - 1) / 2.0
    if theiler > 0:
        excl = np.zeros_like(pairs)
        n_excl = 0
        for off in range(1, min(theiler, m - 1) + 1):
            close = (idx[off:] - idx[:-off]) <= theiler
            if not close.any():
                break
            d = np.linalg.norm(sub[off:][close] - sub[:-off][close], axis=1)
            n_excl += d.size
            excl += np.searchsorted(np.sort(d), r[order], side="right")
        pairs -= excl
        n_pairs -= n_excl
    if n_pairs <= 0:
        raise ValueError(f"no pairs left outside the Theiler window {theiler} among {m} points")
    out = np.empty_like(pairs)
    out[order] = pairs / n_pairs
    return out


def correlation_dimension(
    points: ArrayLike | Tensor,
    r_min: float | None = None,
    r_max: float | None = None,
    n_radii: int = 20,
    theiler: int = 10,
    max_points: int | None = 5000,
    seed: int = 0,
    c_range: tuple[float, float] = (1e-4, 1e-2),
    return_fit: bool = False,
) -> float | dict:
    """Correlation dimension ``D2`` (Grassberger & Procaccia 1983).

    ``D2`` is the least-squares slope of ``log C(r)`` against ``log r`` over ``n_radii``
    log-spaced radii in the scaling range ``[r_min, r_max]`` (:func:`correlation_sum`).

    How the range is chosen when not given: ``C(r)`` is first evaluated on a wide grid
    (the smallest to the largest pair distance, 64 log-spaced radii) and ``r_min`` /
    ``r_max`` are the radii where ``C`` crosses ``c_range = (1e-4, 1e-2)`` (log-log
    interpolation).  Below ``1e-4`` few pairs are counted (with 5000 points, 1250 pairs):
    counting noise, and the noise floor of the data; above ``1e-2`` the finite extent of
    the attractor bends the curve (the local slope of Lorenz-63 falls from 2.05 towards 1
    as ``r`` approaches the attractor's size).  On Lorenz-63 (5000 points) this gives
    2.0-2.1 (see tests).  Use ``return_fit=True`` to check the range on your data.

    Args:
        points: ``(N, D)`` points (a trajectory in time order if ``theiler > 0``), or a
            delay embedding (:func:`embed`).
        r_min, r_max: scaling range (same units as the points); None: chosen as above.
        n_radii: radii in the fit.
        theiler: Theiler window in samples (pairs closer in time are not counted).
        max_points: random subsample (the pair count is ``~ max_points^2 / 2``).
        seed: seed of the subsample.
        c_range: the band of ``C`` that defines the default scaling range.
        return_fit: return a dict with ``d2``, ``radii``, ``c`` and the intercept instead.

    Returns ``D2`` as a float (or the dict).
    """
    y = _points(points)
    n_radii = _check_int("n_radii", n_radii, 2)
    c_lo, c_hi = c_range
    if not 0 < c_lo < c_hi <= 1:
        raise ValueError(f"c_range must satisfy 0 < low < high <= 1, got {c_range!r}")
    if r_min is None or r_max is None:
        idx = _subsample(len(y), max_points, seed)
        extent = float(np.linalg.norm(y[idx].max(0) - y[idx].min(0)))
        if extent == 0:
            raise ValueError("all points coincide: the correlation dimension is undefined")
        nn, _ = cKDTree(y[idx]).query(y[idx], k=2)
        pos = nn[:, 1][nn[:, 1] > 0]
        lo = float(pos.min()) if pos.size else extent * 1e-6
        grid = np.geomspace(lo, extent, 64)
        c = correlation_sum(y, grid, theiler, max_points, seed)
        ok = c > 0
        lc, lr = np.log(c[ok]), np.log(grid[ok])

        def radius_at(level: float) -> float:
            if not lc.size or level < c[ok][0] or level > c[ok][-1]:
                raise ValueError(
                    f"C(r) does not cross {level:g} (range {c[ok][0] if ok.any() else 0:.3g}..1 with "
                    f"{len(idx)} points); give r_min/r_max or more points"
                )
            return float(np.exp(np.interp(np.log(level), lc, lr)))

        r_min = radius_at(c_lo) if r_min is None else r_min
        r_max = radius_at(c_hi) if r_max is None else r_max
    if not 0 < r_min < r_max:
        raise ValueError(f"need 0 < r_min < r_max, got r_min={r_min!r}, r_max={r_max!r}")
    radii = np.geomspace(r_min, r_max, n_radii)
    c = correlation_sum(y, radii, theiler, max_points, seed)
    if (c <= 0).any():
        raise ValueError(f"C(r) = 0 at r = {radii[c <= 0][0]:.3g}: raise r_min or max_points")
    slope, intercept = np.polyfit(np.log(radii), np.log(c), 1)
    if return_fit:
        return {"d2": float(slope), "intercept": float(intercept), "radii": radii, "c": c}
    return float(slope)


# ----------------------------------------------------------------------------- Lyapunov exponents


def _mean_period(y: np.ndarray, dt: float) -> float:
    """Mean period ``1 / <f>`` (time units), ``<f>`` the power-weighted mean frequency of
    the first coordinate (Rosenstein et al. 1993)."""
    f, p = power_spectral_density(y[:, 0], dt)
    p = p[1:]
    f = f[1:]
    if p.sum() <= 0:
        return float("inf")
    return float(1.0 / (np.sum(f * p) / np.sum(p)))


def rosenstein_divergence(
    x: ArrayLike | Tensor,
    dt: float,
    dim: int | None = None,
    delay: int | None = None,
    theiler: int | None = None,
    horizon: int | None = None,
    max_points: int | None = 2000,
    seed: int = 0,
) -> dict:
    """Mean log divergence of initially nearest neighbours (Rosenstein et al. 1993).

    ``y(k) = < ln |y_{i+k} - y_{j(i)+k}| >_i`` for ``k = 0 .. horizon`` (samples), where
    ``j(i)`` is the nearest neighbour of ``y_i`` (Euclidean, :class:`cKDTree`) with
    ``|i - j| > theiler`` and nonzero distance.  Chaotic data: ``y(k) ~ y(0) + lambda_1 k dt``
    until it saturates at the attractor's size.

    Args:
        x: a scalar series ``(N,)`` (delay-embedded: given ``dim``/``delay``, or chosen by
            :func:`embed`) or a trajectory ``(N, D)`` (used as it is; ``dim``/``delay``
            must then be None).
        dt: time between samples.
        theiler: temporal exclusion (samples); None: the mean period (``1 / mean frequency``
            of the power spectrum of the first coordinate), as Rosenstein et al. do.
        horizon: steps to follow each pair; None: 8 mean periods (at most N / 4), long
            enough for the curve to reach its plateau on Lorenz-63.
        max_points: reference points (random, among those with ``i + horizon < N``).

    Returns a dict: ``t`` ``(horizon + 1,)`` times ``k dt``, ``logd`` ``(horizon + 1,)``,
    ``theiler``, ``horizon``, ``dim``, ``delay`` (None for a given trajectory).
    """
    _check_positive("dt", dt)
    a = _np(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 1:
        if dim is None or delay is None:
            e = embed(a, delay=delay, dim=dim)
            dim, delay = e.dim, e.delay
        y = delay_embed(a, dim, delay)
    elif a.ndim == 2:
        if dim is not None or delay is not None:
            raise ValueError(f"x has shape {a.shape} (a trajectory): dim/delay apply only to a scalar series, "
                             f"got dim={dim!r}, delay={delay!r}")
        y = _points(a, "x")
    else:
        raise ValueError(f"x must have shape (N,) or (N, D), got {a.shape}")
    n = len(y)
    if theiler is None:
        period = _mean_period(y, dt)
        theiler = math.ceil(period / dt) if math.isfinite(period) else 1
    theiler = _check_int("theiler", theiler, 0)
    if horizon is None:
        horizon = max(1, min(8 * max(theiler, 1), n // 4))
    horizon = _check_int("horizon", horizon, 1)
    m = n - horizon  # points that can be followed for `horizon` steps
    if m < 2 * theiler + 3:
        raise ValueError(
            f"trajectory of {n} points is too short for horizon={horizon} and theiler={theiler}: "
            f"needs more than horizon + 2 * theiler + 2 = {horizon + 2 * theiler + 2} points"
        )
    base = y[:m]
    ref = _subsample(m, max_points, seed)
    _, j = _nearest_excluding(cKDTree(base), base, ref, theiler, exclude_zero=True)
    ok = j >= 0
    i, j = ref[ok], j[ok]
    steps = np.arange(horizon + 1)
    logd = np.empty(horizon + 1)
    for k in steps:
        d = np.linalg.norm(y[i + k] - y[j + k], axis=1)
        d = d[d > 0]
        logd[k] = np.mean(np.log(d)) if d.size else -np.inf
    return {"t": steps * dt, "logd": logd, "theiler": theiler, "horizon": horizon, "dim": dim, "delay": delay}


def _auto_fit_range(logd: np.ndarray, lo_frac: float = 0.2, hi_frac: float = 0.6) -> tuple[int, int]:
    """Fit window of a Rosenstein curve: from where it has risen ``lo_frac`` of the way from
    ``y(0)`` to its plateau (the maximum) to where it has risen ``hi_frac`` of the way."""
    y0, ysat = logd[0], np.max(logd)
    rise = ysat - y0
    if not rise > 0:
        raise ValueError("the mean log divergence does not grow: no positive Lyapunov exponent to fit")
    k0 = int(np.argmax(logd >= y0 + lo_frac * rise))
    k1 = int(np.argmax(logd >= y0 + hi_frac * rise))
    if k1 - k0 < 2:
        k0, k1 = 0, max(k1, 2)
    return k0, k1


def lyapunov_rosenstein(
    x: ArrayLike | Tensor,
    dt: float,
    dim: int | None = None,
    delay: int | None = None,
    theiler: int | None = None,
    horizon: int | None = None,
    fit: tuple[int, int] | None = None,
    max_points: int | None = 2000,
    seed: int = 0,
) -> float:
    """Largest Lyapunov exponent from a time series (Rosenstein et al. 1993).

    The least-squares slope of :func:`rosenstein_divergence` ``y(k)`` against ``k dt`` over
    ``fit = (k0, k1)`` (samples, inclusive).  Default window: from where ``y`` has risen 20%
    of the way from ``y(0)`` to its plateau (the maximum of ``y``) to where it has risen 60%.
    This skips most of the fast initial rise (the separation turning into the unstable
    direction) and stops before the bend into saturation; it needs a ``horizon`` that
    reaches the plateau.  Check the curve with :func:`rosenstein_divergence`.

    The fit window is checked (:func:`_fit_range_problems`): a ``RuntimeWarning`` says what was
    found and how to fix it when the fit is not straight (R^2 < :data:`FIT_MIN_R2`), its local
    slope changes across the window, or (default window) the curve is still rising at the end of
    the ``horizon`` (no plateau, so the window sits in the initial transient: on 6000 Lorenz-63
    points of ``x`` with ``dim=3, delay=8, theiler=50, horizon=60`` the slope is 2.1, not 0.9).
    The value is returned all the same.

    Accuracy on Lorenz-63 (300 MTU sampled every 0.02, 6 seeds): 0.86-0.92 from ``x`` alone
    (delay-embedded, dim 3, delay 0.16), 0.80-0.86 from the full ``(x, y, z)``, against
    0.906: like most series estimators it reads slightly low, because pairs at the finite
    initial distances of a finite sample start to feel the attractor's folds early.

    Units: 1 / (units of ``dt``).  See :func:`rosenstein_divergence` for the arguments.
    """
    curve = rosenstein_divergence(x, dt, dim, delay, theiler, horizon, max_points, seed)
    logd = curve["logd"]
    if fit is None:
        k0, k1 = _auto_fit_range(logd)
    else:
        k0, k1 = int(fit[0]), int(fit[1])
        if not 0 <= k0 < k1 <= curve["horizon"]:
            raise ValueError(f"fit must satisfy 0 <= k0 < k1 <= horizon = {curve['horizon']}, got {fit!r}")
    sl = slice(k0, k1 + 1)
    slope, _ = np.polyfit(curve["t"][sl], logd[sl], 1)
    problems = _fit_range_problems(curve["t"], logd, k0, k1, float(slope), auto=fit is None)
    if problems:
        warnings.warn(
            f"lyapunov_rosenstein: the fit over samples {k0}-{k1} (slope {slope:.3g}) is not in a linear range of "
            f"the mean log divergence: {'; '.join(problems)}.  The estimate is unreliable: use a longer horizon "
            f"(now {curve['horizon']} samples = {curve['horizon'] * dt:.3g} time units; horizon=None follows 8 mean "
            "periods), or give fit=(k0, k1) over the straight part of rosenstein_divergence(...)['logd'] "
            "after the initial transient and before the plateau",
            RuntimeWarning, stacklevel=2)
    return float(slope)


#: Fit-range checks of :func:`lyapunov_rosenstein` (measured on Lorenz-63, tests/test_chaos.py: well-posed
#: fits have R^2 >= 0.98, half-window slopes within 25% of the fit, end slopes <= 3% of it; the
#: unsaturated 1.2 MTU horizon has an end slope of 43%).
FIT_MIN_R2 = 0.95  #: least R^2 of the straight-line fit
FIT_MAX_HALF_SLOPE_CHANGE = 0.5  #: largest |slope(first half) - slope(second half)| / |slope|
FIT_MAX_END_SLOPE = 0.25  #: largest slope of the curve's last 10% / fitted slope (auto window: plateau reached)


def _fit_range_problems(t: np.ndarray, logd: np.ndarray, k0: int, k1: int, slope: float,
                        auto: bool) -> list[str]:
    """What makes the fit window ``[k0, k1]`` of a Rosenstein curve not a linear range (empty: none).

    * R^2 of the straight-line fit below :data:`FIT_MIN_R2`;
    * the local slope not constant: the slopes of the two halves of the window differ by more
      than :data:`FIT_MAX_HALF_SLOPE_CHANGE` of the fitted slope (a window reaching into the
      bend to saturation, or into the initial transient);
    * ``auto``: the curve has not saturated: its slope over the last 10% of the horizon (at
      least 5 samples) is more than :data:`FIT_MAX_END_SLOPE` of the fitted slope.  The default
      window is placed at fractions of the rise to the plateau, so without a plateau it lies
      in the initial (faster) rise.
    """
    problems = []
    if not (np.all(np.isfinite(logd[k0:k1 + 1])) and slope > 0):
        return [f"the fitted slope is {slope:.3g} (the curve does not grow over the window)"]
    y, x = logd[k0:k1 + 1], t[k0:k1 + 1]
    ss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - np.polyval(np.polyfit(x, y, 1), x)) ** 2)) / ss if ss > 0 else 1.0
    if r2 < FIT_MIN_R2:
        problems.append(f"R^2 of the straight-line fit is {r2:.3f} < {FIT_MIN_R2}")
    if k1 - k0 >= 4:
        km = (k0 + k1) // 2
        s1 = float(np.polyfit(t[k0:km + 1], logd[k0:km + 1], 1)[0])
        s2 = float(np.polyfit(t[km:k1 + 1], logd[km:k1 + 1], 1)[0])
        if abs(s1 - s2) > FIT_MAX_HALF_SLOPE_CHANGE * slope:
            problems.append(f"its local slope is not constant ({s1:.3g} over samples {k0}-{km}, {s2:.3g} over "
                            f"{km}-{k1})")
    if auto:
        n_end = min(len(logd), max(5, math.ceil(0.1 * len(logd))))
        end = logd[-n_end:]
        if np.all(np.isfinite(end)):
            s_end = float(np.polyfit(t[-n_end:], end, 1)[0])
            if s_end > FIT_MAX_END_SLOPE * slope:
                problems.append(
                    f"the curve has not reached its plateau: its slope over the last {n_end} samples is "
                    f"{s_end:.3g}, {s_end / slope:.0%} of the fitted slope, so the default window (20-60% of the "
                    "rise to the maximum) lies in the initial transient")
    return problems


#: state dimension up to which :func:`lyapunov_qr` builds full Jacobians (batched over time);
#: above it, the tangent vectors are pushed through each RK4 step by forward-mode AD
_JACOBIAN_MAX_DIM = 64
#: memory for the Jacobians of one time chunk (bytes)
_JACOBIAN_CHUNK_BYTES = 32 * 2**20


def lyapunov_qr(
    rhs: Callable[[Tensor], Tensor],
    x0: ArrayLike | Tensor,
    dt: float,
    n_steps: int,
    n_exponents: int | None = None,
    transient: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    """Lyapunov spectrum of ``dx/dt = rhs(x)`` from the equations (Benettin et al. 1980).

    The state and ``k`` tangent vectors ``Q`` (``D x k``, orthonormal) are advanced by one
    classical RK4 step ``Phi``; the tangents by its exact derivative, ``Q <- dPhi/dx Q``, i.e.
    the variational equation integrated with the same RK4 stages.  After each step
    ``Q R = qr(Q)`` re-orthonormalises, and::

        lambda_l = (1 / (n_steps dt)) sum_steps ln |R_ll|

    after ``transient`` unrecorded steps (which align ``Q`` with the leading directions).

    How (the results do not depend on it beyond rounding, ~1e-12 relative): for ``D <= 64``
    the state is integrated alone (plain RK4, no autodiff) over a chunk of steps, the
    Jacobians ``J = drhs/dx`` at all four stage states of every step of the chunk come from
    one batched evaluation of ``rhs`` and ``D`` reverse-mode passes, and the step derivative
    is assembled by batched matrix products (chain rule through the stages:
    ``A1 = J1, A2 = J2 (I + dt/2 A1), A3 = J3 (I + dt/2 A2), A4 = J4 (I + dt A3)``,
    ``dPhi/dx = I + dt/6 (A1 + 2 A2 + 2 A3 + A4)``); only the state's RK4 and a small
    ``(B, D, k)`` product and QR per step remain sequential.  For larger ``D`` (where full
    Jacobians cost ``D / k`` times more) the ``k`` tangents go through each RK4 step as dual
    numbers (``torch.autograd.forward_ad``), the previous implementation.  All trajectories
    and tangents go through one batched step either way (prefer many short trajectories to
    one long one).  Measured in ``benchmarks/lyapunov_qr.py``.

    Args:
        rhs: torch function ``(B, D) -> (B, D)`` acting row by row (e.g.
            ``sns.systems.Lorenz63().rhs``, or a learned vector field); it is called on
            batches of other sizes than ``B``.
        x0: initial state ``(D,)``, or ``(B, D)`` for ``B`` independent trajectories whose
            exponents are averaged; best on (or near) the attractor.
        dt: RK4 step (time units of ``rhs``).
        n_steps: recorded steps.
        n_exponents: ``k`` leading exponents (default ``D``).
        transient: unrecorded steps first (default ``n_steps // 10``).
        dtype: integration precision.

    Returns ``(k,)`` exponents in decreasing order, 1 / (time units).
    """
    return _lyapunov_qr(rhs, x0, dt, n_steps, n_exponents, transient, dtype)


def _lyapunov_qr(
    rhs: Callable[[Tensor], Tensor],
    x0: ArrayLike | Tensor,
    dt: float,
    n_steps: int,
    n_exponents: int | None = None,
    transient: int | None = None,
    dtype: torch.dtype = torch.float64,
    method: str = "auto",
) -> np.ndarray:
    """:func:`lyapunov_qr` with the implementation chosen: ``"jacobian"`` (batched Jacobians),
    ``"tangent"`` (dual numbers every step, the implementation before issue 17) or ``"auto"``."""
    _check_positive("dt", dt)
    n_steps = _check_int("n_steps", n_steps, 1)
    transient = n_steps // 10 if transient is None else _check_int("transient", transient, 0)
    x = torch.as_tensor(_np(x0) if not isinstance(x0, Tensor) else x0.detach()).to(dtype)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"x0 must have shape (D,) or (B, D), got {tuple(x.shape)}")
    d = x.shape[1]
    k = d if n_exponents is None else _check_int("n_exponents", n_exponents, 1)
    if k > d:
        raise ValueError(f"n_exponents must be <= the state dimension {d}, got {k}")
    if method not in ("auto", "jacobian", "tangent"):
        raise ValueError(f"method must be 'auto', 'jacobian' or 'tangent', got {method!r}")
    if method == "auto":
        method = "jacobian" if d <= _JACOBIAN_MAX_DIM else "tangent"
    with torch.no_grad(), warnings.catch_warnings():
        # torch loads its forward-AD decompositions with torch.jit.script on first use (a
        # DeprecationWarning from torch itself, not actionable here)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        run = _lyapunov_sums_jacobian if method == "jacobian" else _lyapunov_sums_tangent
        sums = run(rhs, x, float(dt), n_steps, k, transient)
    exps = (sums / (n_steps * dt)).mean(0).cpu().numpy()
    return np.sort(exps)[::-1].copy()


def _rk4_dual_friendly(rhs: Callable[[Tensor], Tensor], u: Tensor, dt: float) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One classical RK4 step and its four stage states ``(u, u + dt/2 k1, u + dt/2 k2, u + dt k3)``.

    Scalar factors go through ``add(..., alpha=)``: multiplying a dual tensor by a constant is
    ~10x slower than add-with-alpha under forward-mode AD (torch 2.x, CPU)."""
    k1 = rhs(u)
    u2 = torch.add(u, k1, alpha=0.5 * dt)
    k2 = rhs(u2)
    u3 = torch.add(u, k2, alpha=0.5 * dt)
    k3 = rhs(u3)
    u4 = torch.add(u, k3, alpha=dt)
    k4 = rhs(u4)
    acc = torch.add(torch.add(torch.add(k1, k2, alpha=2.0), k3, alpha=2.0), k4)
    return torch.add(u, acc, alpha=dt / 6.0), (u, u2, u3, u4)


def _raise_nonfinite(n: int, dt: float) -> None:
    raise FloatingPointError(f"lyapunov_qr: non-finite state or tangent at step {n}; reduce dt ({dt})")


def _lyapunov_sums_tangent(rhs: Callable[[Tensor], Tensor], x: Tensor, dt: float, n_steps: int, k: int,
                           transient: int) -> Tensor:
    """Sum over the recorded steps of ln|R_ll| per trajectory ``(B, k)``: the ``k`` tangents
    go through every RK4 step as dual numbers."""
    b, d = x.shape
    q = torch.eye(d, k, dtype=x.dtype, device=x.device).expand(b, d, k).contiguous()  # (B, D, k), orthonormal columns
    sums = torch.zeros(b, k, dtype=x.dtype, device=x.device)
    for n in range(transient + n_steps):
        # primal: every trajectory repeated k times (rows are independent); tangents: Q's columns
        xp = x.repeat_interleave(k, dim=0)
        tang = q.transpose(1, 2).reshape(b * k, d)
        with fwAD.dual_level():
            x_new, q_new = fwAD.unpack_dual(_rk4_dual_friendly(rhs, fwAD.make_dual(xp, tang), dt)[0])
        if q_new is None:  # rhs does not depend on the state
            q_new = tang
        x = x_new.reshape(b, k, d)[:, 0]
        q, r = torch.linalg.qr(q_new.reshape(b, k, d).transpose(1, 2))
        if not (torch.isfinite(x).all() and torch.isfinite(r).all()):
            _raise_nonfinite(n, dt)
        if n >= transient:
            sums += torch.log(torch.diagonal(r, dim1=1, dim2=2).abs())
    return sums


def _jacobians(rhs: Callable[[Tensor], Tensor], pts: Tensor) -> Tensor:
    """``J[n] = drhs/dx`` at every row of ``pts`` ``(N, D)``: ``(N, D, D)``.

    One evaluation of ``rhs`` on all points and ``D`` reverse-mode passes (row ``i`` of every
    ``J[n]`` is the gradient of ``sum_n rhs(pts)[n, i]``, the rows being independent).  Reverse
    mode, not forward mode: torch compiles its forward-AD decompositions on first use (5-10 s
    per process here).  An ``rhs`` whose output does not require grad (it detaches, or runs
    under ``no_grad``) goes through forward-mode AD with the ``D`` unit tangents instead, which
    also gives 0 for an ``rhs`` that does not depend on the state."""
    n, d = pts.shape
    with torch.enable_grad():
        p = pts.detach().requires_grad_(True)
        out = rhs(p)
        if out.requires_grad:
            rows = []
            for i in range(d):
                (g,) = torch.autograd.grad(out[:, i].sum(), p, retain_graph=i < d - 1, allow_unused=True)
                rows.append(torch.zeros_like(pts) if g is None else g)
            return torch.stack(rows, dim=1).detach()
    eye = torch.eye(d, dtype=pts.dtype, device=pts.device).repeat(n, 1)  # row n * D + j: e_j
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(rhs(fwAD.make_dual(pts.repeat_interleave(d, dim=0), eye))).tangent
    if tangent is None:  # rhs does not depend on the state
        return torch.zeros(n, d, d, dtype=pts.dtype, device=pts.device)
    return tangent.reshape(n, d, d).transpose(1, 2)  # row (n, j) is J[n] e_j, the j-th column


def _lyapunov_sums_jacobian(rhs: Callable[[Tensor], Tensor], x: Tensor, dt: float, n_steps: int, k: int,
                            transient: int) -> Tensor:
    """Sum over the recorded steps of ln|R_ll| per trajectory ``(B, k)`` from the step
    derivatives ``dPhi/dx`` built from batched Jacobians, one time chunk at a time."""
    b, d = x.shape
    q = torch.eye(d, k, dtype=x.dtype, device=x.device).expand(b, d, k).contiguous()
    sums = torch.zeros(b, k, dtype=x.dtype, device=x.device)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    total = transient + n_steps
    per_step = 4 * b * d * d * max(x.element_size(), 8) * 4  # J, A and the forward-AD rows
    chunk = int(min(1024, max(1, _JACOBIAN_CHUNK_BYTES // per_step)))
    for n0 in range(0, total, chunk):
        m = min(chunk, total - n0)
        stages, states = [], []
        for _ in range(m):  # the state alone: plain RK4 (the same values as the dual-number step)
            x, st = _rk4_dual_friendly(rhs, x, dt)
            stages.extend(st)
            states.append(x)
        bad = ~torch.isfinite(torch.stack(states)).flatten(1).all(1)
        if bad.any():
            _raise_nonfinite(n0 + int(bad.nonzero()[0]), dt)
        jac = _jacobians(rhs, torch.stack(stages).reshape(-1, d)).reshape(m, 4, b, d, d)
        j1, j2, j3, j4 = jac.unbind(1)
        a2 = torch.baddbmm(j2.flatten(0, 1), j2.flatten(0, 1), j1.flatten(0, 1), alpha=0.5 * dt).view(m, b, d, d)
        a3 = torch.baddbmm(j3.flatten(0, 1), j3.flatten(0, 1), a2.flatten(0, 1), alpha=0.5 * dt).view(m, b, d, d)
        a4 = torch.baddbmm(j4.flatten(0, 1), j4.flatten(0, 1), a3.flatten(0, 1), alpha=dt).view(m, b, d, d)
        step_jac = eye + (dt / 6.0) * (j1 + 2.0 * a2 + 2.0 * a3 + a4)  # (m, B, D, D)
        diag = torch.empty(m, b, k, dtype=x.dtype, device=x.device)
        for i in range(m):
            try:
                q, r = torch.linalg.qr(torch.bmm(step_jac[i], q))
            except RuntimeError:  # LAPACK refuses non-finite input
                _raise_nonfinite(n0 + i, dt)
            diag[i] = torch.diagonal(r, dim1=1, dim2=2)
        logs = torch.log(diag.abs())
        bad = ~torch.isfinite(diag).flatten(1).all(1)
        if bad.any():
            _raise_nonfinite(n0 + int(bad.nonzero()[0]), dt)
        rec = max(transient - n0, 0)
        if rec < m:
            sums += logs[rec:].sum(0)
    return sums


def largest_lyapunov_qr(
    rhs: Callable[[Tensor], Tensor],
    x0: ArrayLike | Tensor,
    dt: float,
    n_steps: int,
    transient: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """The largest Lyapunov exponent by :func:`lyapunov_qr` with one tangent vector
    (power iteration with renormalisation)."""
    return float(lyapunov_qr(rhs, x0, dt, n_steps, n_exponents=1, transient=transient, dtype=dtype)[0])


# ----------------------------------------------------------------------------- spectra, divergence


def power_spectral_density(
    x: ArrayLike | Tensor, dt: float, nperseg: int | None = None, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided power spectral density by Welch's method (``scipy.signal.welch``).

    Hann windows of ``nperseg`` samples (default ``min(256, N)``), 50% overlap, each segment's
    mean removed, ``scaling="density"``.  Normalisation: one-sided, so that
    ``sum(P) * df ~= var(x)`` (the integral over ``[0, 1/(2 dt)]`` is the variance; exact up
    to the window's leakage and the removed segment means).

    Args:
        x: series with time along ``axis`` (other axes: independent series/coordinates).
        dt: time between samples; frequencies come in 1 / (units of ``dt``) (cycles, not
            radians).

    Returns ``(f, P)``: ``f`` ``(nperseg // 2 + 1,)``, ``P`` shaped like ``x`` with ``axis``
    replaced by frequency, in (units of x)^2 * (units of dt).
    """
    a = _np(x)
    _check_positive("dt", dt)
    if a.ndim == 0:
        raise ValueError("x must have a time axis")
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {a.shape}")
    n = a.shape[axis]
    if nperseg is None:
        nperseg = min(256, n)
    nperseg = _check_int("nperseg", nperseg, 2)
    if nperseg > n:
        raise ValueError(f"nperseg={nperseg} is longer than the series ({n} samples along axis {axis})")
    f, p = signal.welch(a, fs=1.0 / dt, window="hann", nperseg=nperseg, detrend="constant",
                        return_onesided=True, scaling="density", axis=axis)
    return f, p


def local_divergence(field: Callable[[Tensor], Tensor], x: ArrayLike | Tensor) -> np.ndarray:
    """Exact divergence ``tr(df/dx)`` of a torch vector field at points ``x`` ``(N, D)``.

    ``D`` vector-Jacobian products by autograd (:func:`sns.diffops.divergence`,
    ``method="exact"``); ``field`` maps ``(N, D) -> (N, D)`` row by row.  Points are used
    in the field's dtype if it has parameters, else float64.  Returns ``(N,)``.
    """
    from sns.diffops import divergence

    pts = _field_points(field, x)
    return _np(divergence(field, pts, method="exact", create_graph=False))


def _field_points(field: Callable[[Tensor], Tensor], x: ArrayLike | Tensor) -> Tensor:
    """Points ``(N, D)`` as a tensor in the dtype/device of ``field``'s parameters (float64 without)."""
    pts = x.detach() if isinstance(x, Tensor) else torch.as_tensor(_np(x))
    if pts.ndim != 2:
        raise ValueError(f"points must have shape (N, D), got {tuple(pts.shape)}")
    params = list(field.parameters()) if isinstance(field, torch.nn.Module) else []
    if params:
        return pts.to(params[0].device, params[0].dtype)
    return pts.to(torch.float64)


def divergence_error(
    div_model: ArrayLike | Tensor | Callable[[Tensor], Tensor],
    div_true: ArrayLike | Tensor | Callable[[Tensor], Tensor],
    points: ArrayLike | Tensor | None = None,
) -> float:
    """Mean absolute deviation of the local divergence, ``mean_n |div_model(x_n) - div_true(x_n)|``.

    Each of ``div_model``/``div_true`` is either an array of divergences ``(N,)`` or a
    callable evaluated at ``points`` ``(N, D)``: a callable returning ``(N,)`` is a divergence
    function (e.g. ``system.divergence``), one returning ``(N, D)`` a vector field whose
    divergence is taken by :func:`local_divergence` (e.g. ``system.rhs`` or a model's
    ``vector_field``).  A scalar broadcasts (constant divergence).  Units: those of the
    divergence (1 / time).
    """

    def values(d: object, name: str) -> np.ndarray:
        if callable(d):
            if points is None:
                raise ValueError(f"{name} is a callable: give the points (N, D) to evaluate it at")
            pts = _field_points(d, points)
            with torch.no_grad():
                out = d(pts)
            if out.ndim == 1:
                return _np(out)
            if out.shape == pts.shape:
                return local_divergence(d, pts)
            raise ValueError(f"{name}(points) returned shape {tuple(out.shape)}; expected ({len(pts)},) "
                             f"(a divergence) or {tuple(pts.shape)} (a vector field)")
        return np.atleast_1d(_np(d))

    a, b = values(div_model, "div_model"), values(div_true, "div_true")
    try:
        a, b = np.broadcast_arrays(a, b)
    except ValueError as err:
        raise ValueError(f"div_model and div_true have incompatible shapes {a.shape} and {b.shape}") from err
    if a.size == 0:
        raise ValueError("divergence_error of empty arrays")
    return float(np.mean(np.abs(a - b)))


# ----------------------------------------------------------------------------- spikes


def interspike_intervals(v: ArrayLike | Tensor, dt: float, threshold: float = 0.0) -> np.ndarray:
    """Intervals between spikes of a membrane-potential trace ``v`` ``(T,)``.

    A spike is an upward crossing of ``threshold`` (``v_i < threshold <= v_{i+1}``); its time
    is linearly interpolated, ``t = (i + (threshold - v_i) / (v_{i+1} - v_i)) dt``.  Returns
    the ``(n_spikes - 1,)`` differences of successive spike times, in the units of ``dt``
    (empty with fewer than two spikes).
    """
    a = _np(v)
    if a.ndim != 1:
        raise ValueError(f"v must be a single trace of shape (T,), got {a.shape}")
    _check_positive("dt", dt)
    i = np.flatnonzero((a[:-1] < threshold) & (a[1:] >= threshold))
    t = (i + (threshold - a[i]) / (a[i + 1] - a[i])) * dt
    return np.diff(t)


def isi_error(isi_a: ArrayLike | Tensor, isi_b: ArrayLike | Tensor) -> dict[str, float]:
    """Errors between two interspike-interval samples, ``isi_a`` (e.g. a model's) against the
    reference ``isi_b``.

    Keys:

    * ``mean_a``, ``mean_b``: mean ISIs; ``rel_mean_error = |mean_a - mean_b| / mean_b``;
    * ``mse``: mean squared difference of quantile-matched ISIs,
      ``(1/K) sum_k (Q_a(q_k) - Q_b(q_k))^2`` at ``q_k = (k + 1/2) / K``,
      ``K = max(n_a, n_b)``, ``Q`` the empirical quantile function (Hazen's definition: with
      equal sizes this compares the sorted samples element by element); it is the squared
      2-Wasserstein distance between the two ISI distributions (units^2);
    * ``rmse = sqrt(mse)``; ``w1``: the same with absolute differences (1-Wasserstein);
    * ``n_a``, ``n_b``: sample sizes.

    With an empty sample (fewer than two spikes) every error is ``nan`` (the counts still
    tell what happened).
    """
    a, b = _np(isi_a).ravel(), _np(isi_b).ravel()
    out = {"n_a": float(a.size), "n_b": float(b.size)}
    if a.size == 0 or b.size == 0:
        nan = float("nan")
        return {**out, "mean_a": float(a.mean()) if a.size else nan, "mean_b": float(b.mean()) if b.size else nan,
                "rel_mean_error": nan, "mse": nan, "rmse": nan, "w1": nan}
    k = max(a.size, b.size)
    q = (np.arange(k) + 0.5) / k
    qa, qb = np.quantile(a, q, method="hazen"), np.quantile(b, q, method="hazen")
    mse = float(np.mean((qa - qb) ** 2))
    return {**out, "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "rel_mean_error": float(abs(a.mean() - b.mean()) / b.mean()), "mse": mse, "rmse": math.sqrt(mse),
            "w1": float(np.mean(np.abs(qa - qb)))}
