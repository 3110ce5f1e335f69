"""Diagnostics of 2-D doubly periodic fields: kinetic-energy spectra, energy, enstrophy.

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
    "RunningSpectrum",
    "energy_spectrum",
    "enstrophy",
    "kinetic_energy",
    "shell_index",
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
