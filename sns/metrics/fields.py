"""Diagnostics of 2-D doubly periodic fields: kinetic-energy spectra, energy, enstrophy, and the
space-time correlation ``C(r, tau)``.

Conventions (those of :mod:`sns.systems.spectral`): a field is an array ``(..., H, W)``
with ``H == W == N`` (even), axis order ``(y, x)``, on the square ``[0, L)^2``; any
leading dims (trajectory, time, layer) are broadcast over.  Inputs may be numpy
arrays or torch tensors; all results are numpy ``float64`` arrays.  The Fourier
work is done by the helpers of :mod:`sns.systems.spectral` in float64.

Units: for a vorticity in ``1/s`` on a domain of side ``L`` in ``m``, velocities are in
``m/s``, kinetic energy (per unit mass) and ``E(k)`` summed over shells in
``m^2/s^2``, enstrophy in ``1/s^2``.

For two-layer QG the stored variable is the eddy potential vorticity ``q`` of each
layer, ``(..., 2, H, W)``.  ``energy_spectrum(q)`` then is the spectrum of the
velocity whose vorticity is ``q`` (as the paper's per-layer "kinetic energy
spectra" of the layer fields); it is not the QG kinetic energy of the layer stream
functions, which would need the stratification term (the deformation radius).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike

from sns.systems.spectral import rfft_multiplicity, velocity_from_vorticity, wavenumbers

__all__ = [
    "RunningSpaceTimeCorrelation",
    "RunningSpectrum",
    "energy_spectrum",
    "enstrophy",
    "kinetic_energy",
    "radial_correlation",
    "shell_index",
    "space_time_correlation",
]


def _as_field(w: ArrayLike | torch.Tensor, name: str = "vorticity") -> torch.Tensor:
    """``w`` as a float64 torch tensor ``(..., N, N)``, N even; raises on bad shapes."""
    if isinstance(w, torch.Tensor):
        t = w.detach().cpu().to(torch.float64)
    else:
        t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64))
    if t.ndim < 2 or t.shape[-1] != t.shape[-2]:
        raise ValueError(
            f"{name} must have shape (..., N, N) with a square grid, got {tuple(t.shape)}"
        )
    n = t.shape[-1]
    if n < 2 or n % 2:
        raise ValueError(f"{name} needs an even grid size N >= 2, got N={n}")
    return t


def shell_index(n: int, length: float = 2 * math.pi) -> tuple[np.ndarray, np.ndarray]:
    """Shell of each rfft2 bin of an ``n x n`` grid and the shell wavenumbers.

    The shell of the wavevector ``k = 2 pi/L (n_x, n_y)`` is ``round(|(n_x, n_y)|)``, the
    nearest integer of its length in units of ``2 pi / L``.  Returns ``(index, k)``:
    ``index`` of shape ``(n, n//2 + 1)`` (int64, rfft2 layout) and ``k = 2 pi/L * arange(K)``
    of shape ``(K,)``, ``K = max(index) + 1`` (so every bin, corners included, has a shell).
    """
    ky, kx = wavenumbers(n, length=2 * math.pi)  # integer wavenumbers, in units of 2 pi / L
    idx = torch.round(torch.sqrt(ky**2 + kx**2)).to(torch.int64)
    k = np.arange(int(idx.max()) + 1, dtype=np.float64) * (2 * math.pi / length)
    return idx.numpy(), k


def _spectrum_t(w: torch.Tensor, length: float) -> tuple[np.ndarray, torch.Tensor]:
    """Core of :func:`energy_spectrum` on a float64 tensor; returns ``(k, E)`` (E a tensor)."""
    n = w.shape[-1]
    vel = velocity_from_vorticity(w, length)  # (..., 2, N, N)
    vel_hat = torch.fft.rfft2(vel)
    # |u_hat|^2 + |v_hat|^2, weighted by how many full-DFT bins each rfft2 bin stands for,
    # scaled so that the sum over all bins is the spatial mean of u^2 + v^2 (Parseval).
    power = (vel_hat.real**2 + vel_hat.imag**2).sum(dim=-3)
    power = power * rfft_multiplicity(n) * (0.5 / n**4)
    idx, k = shell_index(n, length)
    lead = power.shape[:-2]
    flat = power.reshape(-1, idx.size)
    out = torch.zeros(flat.shape[0], k.size, dtype=torch.float64)
    out.index_add_(1, torch.from_numpy(idx.reshape(-1)), flat)
    return k, out.reshape(*lead, k.size)


def energy_spectrum(
    vorticity: ArrayLike | torch.Tensor, length: float = 2 * math.pi
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic kinetic-energy spectrum ``E(k)`` of periodic vorticity fields.

    ``vorticity`` has shape ``(..., N, N)`` (``(y, x)``, ``N`` even) on ``[0, L)^2``, e.g.
    ``(T, N, N)`` for a Kolmogorov trajectory or ``(T, 2, N, N)`` for the two QG layers;
    leading dims are kept.  The velocity ``(u, v)`` is obtained from the stream function
    (``laplacian psi = -w``, ``u = d psi/dy``, ``v = -d psi/dx``;
    :func:`sns.systems.spectral.velocity_from_vorticity`, whose Nyquist derivatives are
    zero), and the energy of each Fourier mode is summed in shells of integer
    ``|k| L / (2 pi)`` (see :func:`shell_index`)::

        E(k_s) = 1/2 * sum_{k : round(|k| L/2pi) = s} (|u_hat(k)|^2 + |v_hat(k)|^2) / N^4

    with ``u_hat`` the unnormalised DFT.  By Parseval's identity
    ``sum_k |u_hat(k)|^2 / N^4 = <u^2>`` (``<.>`` the spatial mean), so

        sum_s E(k_s) = 1/2 <u^2 + v^2>  = :func:`kinetic_energy`,

    the mean kinetic energy per unit mass (``m^2/s^2`` for ``w`` in ``1/s``, ``L`` in ``m``).
    ``E`` is a shell *sum* (energy per shell), not a density per unit ``k``; divide by
    ``2 pi / L`` for the density.

    Returns ``(k, E)``: ``k`` of shape ``(K,)`` (``k_s = 2 pi s / L``, ``s = 0 .. K-1``,
    ``K - 1 = round(N / sqrt(2))``; shell 0 is 0 up to round-off: the velocity has zero mean) and ``E`` of shape ``(..., K)``.
    """
    w = _as_field(vorticity)
    k, e = _spectrum_t(w, length)
    return k, e.numpy()


def kinetic_energy(vorticity: ArrayLike | torch.Tensor, length: float = 2 * math.pi) -> np.ndarray:
    """Mean kinetic energy ``1/2 <u^2 + v^2>`` of vorticity fields ``(..., N, N)`` -> ``(...)``.

    The velocity is that of :func:`energy_spectrum` (stream function of ``w``); ``<.>`` is the
    spatial mean.  Units ``m^2/s^2`` for ``w`` in ``1/s`` and ``L`` in ``m``.
    """
    w = _as_field(vorticity)
    vel = velocity_from_vorticity(w, length)
    return (0.5 * (vel**2).sum(dim=-3).mean(dim=(-2, -1))).numpy()


def enstrophy(vorticity: ArrayLike | torch.Tensor) -> np.ndarray:
    """Mean enstrophy ``1/2 <w^2>`` of fields ``(..., N, N)`` -> ``(...)`` (``1/s^2``).

    ``<.>`` is the spatial mean over the last two axes; the mean of ``w`` is included
    (it is zero for periodic flows).
    """
    w = np.asarray(vorticity.detach().cpu() if isinstance(vorticity, torch.Tensor) else vorticity)
    if w.ndim < 2:
        raise ValueError(f"vorticity must have shape (..., H, W), got {w.shape}")
    return 0.5 * np.mean(np.square(w, dtype=np.float64), axis=(-2, -1))


class RunningSpectrum:
    """Streaming statistics of :func:`energy_spectrum` over frames given chunk by chunk.

    A long rollout on disk is read in chunks of frames, each passed to :meth:`update`;
    memory is that of one chunk.  ``frame_ndim`` is the number of trailing dims of one
    frame: 2 for vorticity ``(N, N)``, 3 for QG layers ``(2, N, N)``.  All dims of a chunk
    before the frame (time, trajectory) are samples.  :meth:`result` returns, per shell
    (and per layer), the mean, standard deviation, minimum and maximum of ``E(k)`` over all
    samples seen, identical (to round-off) to the same statistics of one
    :func:`energy_spectrum` call on all frames at once.

    Example::

        acc = RunningSpectrum(frame_ndim=2)
        for start in range(0, T, 256):
            acc.update(store[0, start:start + 256])  # (chunk, N, N)
        k, stats = acc.result()  # stats["mean"]: (K,)
    """

    def __init__(self, frame_ndim: int = 2, length: float = 2 * math.pi) -> None:
        if frame_ndim not in (2, 3):
            raise ValueError(f"frame_ndim must be 2 (N, N) or 3 (layer, N, N), got {frame_ndim!r}")
        if not length > 0:
            raise ValueError(f"length must be positive, got {length!r}")
        self.frame_ndim = frame_ndim
        self.length = float(length)
        self.count = 0
        self._frame_shape: tuple[int, ...] | None = None
        self._k: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._sumsq: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    def update(self, frames: ArrayLike | torch.Tensor) -> None:
        """Add frames ``(..., *frame)``; every leading dim counts as samples."""
        w = _as_field(frames)
        if w.ndim < self.frame_ndim:
            raise ValueError(
                f"frames need at least {self.frame_ndim} dims, got shape {tuple(w.shape)}"
            )
        frame = tuple(w.shape[w.ndim - self.frame_ndim :])
        if self._frame_shape is None:
            self._frame_shape = frame
        elif frame != self._frame_shape:
            raise ValueError(f"frame shape changed from {self._frame_shape} to {frame}")
        w = w.reshape(-1, *frame)
        if w.shape[0] == 0:
            return
        k, e = _spectrum_t(w, self.length)
        e = e.numpy()
        if self._sum is None:
            self._k = k
            self._sum = e.sum(0)
            self._sumsq = (e**2).sum(0)
            self._min = e.min(0)
            self._max = e.max(0)
        else:
            self._sum += e.sum(0)
            self._sumsq += (e**2).sum(0)
            np.minimum(self._min, e.min(0), out=self._min)
            np.maximum(self._max, e.max(0), out=self._max)
        self.count += w.shape[0]

    def result(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(k, stats)``: ``stats`` has ``mean``, ``std``, ``min``, ``max``, each ``(*frame[:-2], K)``."""
        if self.count == 0:
            raise RuntimeError("RunningSpectrum.result() called before any update()")
        mean = self._sum / self.count
        var = np.maximum(self._sumsq / self.count - mean**2, 0.0)
        return self._k, {
            "mean": mean,
            "std": np.sqrt(var),
            "min": self._min.copy(),
            "max": self._max.copy(),
            "count": np.asarray(self.count),
        }


class RunningSpaceTimeCorrelation:
    """Streaming space-time correlation ``C(r, tau)`` of 2-D periodic fields.

    ``C(r, tau) = < sum_x z_t(x) z_{t+tau}(x + r) >_{t, IC}``, with ``z_t = x'_t / |x'_t|_2``
    the frame minus its spatial mean, scaled to unit Euclidean norm (per layer), ``r`` a
    periodic grid displacement ``(r_y, r_x)`` (in grid cells) and the mean over all start
    times ``t`` with ``t + tau`` in the series, and over trajectories.  It extends the paper's
    ``C(tau)`` (:func:`sns.metrics.spatiotemporal_correlation`) in space: ``C(0, tau)`` equals
    ``C(tau)`` of a single-layer field exactly, and ``C(r, 0)`` is the mean normalised spatial
    autocorrelation.  Dimensionless; ``|C| <= 1``.  For a translating mode
    ``cos(k x - c t)`` it is ``cos(k r_x - c tau)``.

    Frames arrive in time order, chunk by chunk: :meth:`update` takes ``(B, t, H, W)`` (or
    ``(B, t, C, H, W)`` for layered fields, each layer on its own) with the same ``B``
    trajectories every time; the last ``max_lag`` frames' Fourier transforms are kept, so
    memory is one chunk plus ``max_lag`` frames whatever the series length.  The sums are
    accumulated in Fourier space (cross-correlation theorem) and :meth:`result` returns
    ``(max_lag + 1, H, W)`` (or ``(max_lag + 1, C, H, W)``) with ``r = 0`` at index
    ``[..., 0, 0]`` (numpy's FFT layout; ``np.fft.fftshift`` over the last two axes centres it).
    A frame with zero variance gives NaN.
    """

    def __init__(self, max_lag: int) -> None:
        if not isinstance(max_lag, int) or max_lag < 0:
            raise ValueError(f"max_lag must be a non-negative int, got {max_lag!r}")
        self.max_lag = max_lag
        self._hist: np.ndarray | None = None  # (B, <= max_lag, ..., H, W) complex, newest last
        self._sum: np.ndarray | None = None  # (max_lag + 1, ..., H, W) complex
        self._count = np.zeros(max_lag + 1, dtype=np.int64)
        self._shape: tuple[int, ...] | None = None

    def update(self, frames: ArrayLike | torch.Tensor) -> None:
        """Add the next frames ``(B, t, [C,] H, W)`` of the ``B`` trajectories."""
        f = _as_field(frames, "frames").numpy()
        if f.ndim not in (4, 5):
            raise ValueError(f"frames must be (B, t, H, W) or (B, t, C, H, W), got shape {f.shape}")
        shape = (f.shape[0], *f.shape[2:])
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(f"frames of shape (B, [C,] H, W) = {shape} after {self._shape}: "
                             "the trajectories and the grid must stay the same")
        if f.shape[1] == 0:
            return
        f = f - f.mean(axis=(-2, -1), keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = f / np.sqrt((f**2).sum(axis=(-2, -1), keepdims=True))
        spec = np.fft.fft2(z)  # (B, t, [C,] H, W)
        allf = spec if self._hist is None else np.concatenate([self._hist, spec], axis=1)
        n_old = allf.shape[1] - spec.shape[1]
        if self._sum is None:
            self._sum = np.zeros((self.max_lag + 1, *spec.shape[2:]), dtype=np.complex128)
        total = allf.shape[1]
        for tau in range(self.max_lag + 1):
            # pairs (j, j + tau) whose later frame is new: j + tau >= n_old
            lo = max(n_old - tau, 0)
            hi = total - tau
            if hi <= lo:
                continue
            prod = np.conj(allf[:, lo:hi]) * allf[:, lo + tau:hi + tau]
            self._sum[tau] += prod.sum(axis=(0, 1))
            self._count[tau] += prod.shape[0] * prod.shape[1]
        keep = min(self.max_lag, total)
        self._hist = allf[:, total - keep:] if keep else None

    def result(self) -> np.ndarray:
        """``C(r, tau)``: ``(max_lag + 1, [C,] H, W)``; lags never seen are NaN."""
        if self._sum is None:
            raise RuntimeError("RunningSpaceTimeCorrelation.result() called before any update()")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self._sum / self._count.reshape(-1, *([1] * (self._sum.ndim - 1)))
        return np.fft.ifft2(mean).real


def space_time_correlation(x: ArrayLike | torch.Tensor, max_lag: int) -> np.ndarray:
    """``C(r, tau)`` of ``(B, T, [C,] H, W)`` frames in memory (:class:`RunningSpaceTimeCorrelation`).

    Requires ``max_lag < T``.  Returns ``(max_lag + 1, [C,] H, W)``, ``r = 0`` at ``[..., 0, 0]``.
    """
    shape = tuple(x.shape)
    if len(shape) not in (4, 5):
        raise ValueError(f"x must be (B, T, H, W) or (B, T, C, H, W), got shape {shape}")
    if not isinstance(max_lag, int) or not 0 <= max_lag < shape[1]:
        raise ValueError(f"max_lag must be an int in [0, T-1] = [0, {shape[1] - 1}], got {max_lag!r}")
    acc = RunningSpaceTimeCorrelation(max_lag)
    acc.update(x)
    return acc.result()


def radial_correlation(c: ArrayLike, length: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic profile ``C(|r|, tau)`` of ``C(r, tau)`` from :func:`space_time_correlation`.

    ``c``: ``(..., N, N)`` in numpy's FFT layout.  The shortest periodic displacement of each
    grid point is binned by ``round(|r|)`` in grid cells, ``|r| = 0 .. N/2`` (bins beyond
    ``N/2``, the corners, are dropped), and averaged.  Returns ``(r, profile)``: ``r`` in grid
    cells (times ``length / N`` when ``length`` is given), ``profile`` of shape ``(..., N/2 + 1)``.
    """
    c = np.asarray(c, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2]:
        raise ValueError(f"c must have shape (..., N, N), got {c.shape}")
    n = c.shape[-1]
    d = np.minimum(np.arange(n), n - np.arange(n))
    rr = np.rint(np.hypot(d[:, None], d[None, :])).astype(np.int64).ravel()
    n_bins = n // 2 + 1
    keep = rr < n_bins
    counts = np.bincount(rr[keep], minlength=n_bins)
    flat = c.reshape(-1, n * n)[:, keep]
    prof = np.stack([np.bincount(rr[keep], weights=row, minlength=n_bins) for row in flat]) / counts
    r = np.arange(n_bins, dtype=np.float64)
    if length is not None:
        r = r * (float(length) / n)
    return r, prof.reshape(*c.shape[:-2], n_bins)
