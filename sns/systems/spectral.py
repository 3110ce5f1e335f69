"""Helpers shared by pseudo-spectral solvers on the doubly periodic square ``[0, L]^2``.

Layout and conventions (used by every solver of :mod:`sns.systems`):

* physical fields are real tensors ``(..., N, N)`` with axis order ``(y, x)``:
  ``u[..., j, i] = u(x_i, y_j)``, ``x_i = i L / N``, ``y_j = j L / N``;
* spectral fields are ``torch.fft.rfft2`` coefficients, shape ``(..., N, N//2 + 1)``:
  the full FFT runs over ``y`` (axis -2, wavenumbers ``fftfreq``, the Nyquist
  row ``N/2`` carries ``k_y = -N/2``) and the half-spectrum over ``x`` (axis -1,
  ``k_x = 0 .. N/2``);
* FFT normalisation is torch's default ("backward"): ``rfft2`` is unnormalised,
  ``irfft2`` divides by ``N^2``; so a mode ``a cos(k.x)`` has coefficient
  ``a N^2 / 2`` at ``k`` (and ``a N^2`` when ``k`` is its own mirror image);
* wavenumbers are angular, ``k = 2 pi n / L`` (integers for ``L = 2 pi``).

Nyquist modes (``|k_x| = N/2`` or ``|k_y| = N/2``) of an even grid cannot tell
``+N/2`` from ``-N/2``: their derivative is ill defined and every code picks a
convention.  :func:`derivative_operators` offers two, both real operators (so
derivatives of real fields stay real and mirror symmetric):

* ``nyquist="zero"`` (default): ``i k`` is zero on the Nyquist row and column;
* ``nyquist="jaxcfd"``: what jax-cfd's spectral code does in effect (its arrays
  are ``(x, y)``, full FFT over ``x`` with ``fftfreq`` wavenumbers, so the
  ``x``-Nyquist is ``k_x = -N/2``; half spectrum over ``y``, and ``irfftn``
  keeps only the Hermitian part of the ``k_y = 0`` and ``k_y = N/2`` columns):
  ``d/dy`` is zero on the ``y``-Nyquist row, and ``d/dx`` on the ``x``-Nyquist
  column is multiplication by ``-i (N/2) sign(k_y)`` (zero where ``k_y`` is 0
  or ``N/2``), i.e. a mode ``(-1)^i cos(k_y y)`` is read as
  ``cos(k_y y - N x/2)``.  :class:`sns.systems.kolmogorov.KolmogorovFlow` uses it.

Resampling drops the Nyquist modes of the smaller grid.

Only even ``N`` are supported.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "DEALIAS_MODES",
    "block_average",
    "dealias_mask",
    "derivative_operators",
    "full_spectrum_sum",
    "resample_spectral",
    "rfft_multiplicity",
    "truncate_hat",
    "velocity_from_vorticity",
    "vorticity_from_velocity",
    "wavenumbers",
]

DEALIAS_MODES = ("jaxcfd", "symmetric", "none")  #: valid ``mode`` values of :func:`dealias_mask`


def _check_even_grid(n: int, name: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n % 2:
        raise ValueError(f"{name} must be an even integer >= 2, got {n!r}")


def wavenumbers(
    n: int,
    length: float = 2 * math.pi,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Angular wavenumbers of an ``n x n`` grid in the rfft2 layout.

    Returns ``(ky, kx)`` with shapes ``(n, 1)`` and ``(1, n//2 + 1)`` (they
    broadcast to the spectral shape).  ``ky = 2 pi/L * fftfreq(n) * n`` (the
    Nyquist row is ``-n/2``), ``kx = 2 pi/L * rfftfreq(n) * n``.
    """
    _check_even_grid(n)
    scale = 2 * math.pi / length
    ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=dtype, device=device) * scale
    kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=dtype, device=device) * scale
    return ky[:, None], kx[None, :]


def derivative_operators(
    n: int,
    length: float = 2 * math.pi,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    nyquist: str = "zero",
) -> tuple[Tensor, Tensor]:
    """Real wavenumbers ``(ky, kx)`` for spectral derivatives, with a Nyquist convention.

    ``d/dx`` is multiplication of the rfft2 coefficients by ``1j * kx`` and
    ``d/dy`` by ``1j * ky``.  ``nyquist="zero"``: the Nyquist column of ``kx``
    and row of ``ky`` are zero, shapes ``(n, 1)`` and ``(1, n//2 + 1)``.
    ``nyquist="jaxcfd"``: jax-cfd's effective operators (module docstring):
    ``ky`` as for ``"zero"``, ``kx`` of shape ``(n, n//2 + 1)`` whose Nyquist
    column is ``-(n/2) sign(k_y)`` (times ``2 pi/L``), zero on the rows
    ``k_y = 0`` and ``k_y = -n/2``.
    """
    if nyquist not in ("zero", "jaxcfd"):
        raise ValueError(f"unknown Nyquist convention {nyquist!r}; valid: 'zero', 'jaxcfd'")
    ky, kx = wavenumbers(n, length, dtype, device)
    ky = ky.clone()
    kx = kx.clone()
    ky[n // 2] = 0.0
    kx[:, n // 2] = 0.0
    if nyquist == "jaxcfd":
        kx = kx.expand(n, n // 2 + 1).clone()
        kx[:, n // 2] = -(n // 2) * torch.sign(ky[:, 0]) * (2 * math.pi / length)
    return ky, kx


def rfft_multiplicity(
    n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    """How many bins of the full ``n x n`` DFT each rfft2 bin stands for, ``(1, n//2 + 1)``.

    Columns ``0 < k_x < n/2`` stand for themselves and their mirror images (2);
    the ``k_x = 0`` and ``k_x = n/2`` columns hold their mirrors already (1).
    ``(weights * a).sum()`` over an rfft2-layout array ``a`` that is mirror
    symmetric (``a(k) = a(-k)``) equals the sum of ``a`` over all ``n^2`` bins,
    i.e. over the ``n^2`` real degrees of freedom of a real field.
    """
    _check_even_grid(n)
    w = torch.full((1, n // 2 + 1), 2.0, dtype=dtype, device=device)
    w[0, 0] = 1.0
    w[0, -1] = 1.0
    return w


def full_spectrum_sum(a: Tensor) -> Tensor:
    """Sum of a mirror-symmetric rfft2-layout array over all ``N^2`` DFT bins.

    ``a`` has shape ``(..., N, N//2 + 1)``; returns shape ``(...)``.  The trace of
    a real Fourier multiplier ``u -> irfft2(a * rfft2(u))`` on ``R^{N x N}`` is
    ``full_spectrum_sum(a)``.
    """
    n = a.shape[-2]
    if a.shape[-1] != n // 2 + 1:
        raise ValueError(f"expected an rfft2-layout array (..., N, N//2+1), got {tuple(a.shape)}")
    w = rfft_multiplicity(n, dtype=a.real.dtype, device=a.device)
    return (a * w).sum(dim=(-2, -1))


def dealias_mask(
    n: int,
    mode: str = "symmetric",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """2/3-rule dealiasing mask in the rfft2 layout ``(n, n//2 + 1)``, values in {0, 1/2, 1}.

    Modes:

    ``"symmetric"``
        the textbook 2/3 rule: keep ``3 |k_x| < n`` and ``3 |k_y| < n`` (a
        square of integer wavenumbers ``|k| <= ceil(n/3) - 1``).  Products of
        two fields in this set are alias free on this set.
    ``"jaxcfd"``
        the *effective* mask of jax-cfd's ``brick_wall_filter_2d`` (used by
        ``ForcedNavierStokes2D(smooth=True)``), translated to this module's
        ``(y, x)`` layout.  jax-cfd indexes arrays ``(x, y)`` and takes the half
        spectrum over ``y``; it keeps ``x``-indices ``[:int(2n/3)//2]`` and
        ``[-int(2n/3)//2:]`` (Python floor division of a negative number, so
        e.g. ``k_x`` in ``[-171, 169]`` for ``n = 512``) and ``y``-indices
        ``[:int(2/3 (n//2+1))]``.  Because that set is not mirror symmetric on
        the ``k_y = 0`` line, jax's ``irfftn`` keeps the Hermitian (real) part,
        which weighs the unpaired modes ``(k_x, 0)`` by 1/2.  This function
        returns exactly that effective real operator, so a solver using it
        reproduces jax-cfd's trajectories to round-off.
    ``"none"``
        all ones (aliased; for tests and comparisons only).
    """
    _check_even_grid(n)
    if mode not in DEALIAS_MODES:
        raise ValueError(f"unknown dealias mode {mode!r}; valid modes: {DEALIAS_MODES}")
    nh = n // 2 + 1
    if mode == "none":
        return torch.ones(n, nh, dtype=dtype, device=device)
    if mode == "symmetric":
        ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64).abs()[:, None]
        kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64)[None, :]
        keep = (3 * ky < n) & (3 * kx < n)
        return keep.to(dtype=dtype, device=device)
    # jax-cfd: mask H[ix, jy] over (x full FFT axis, y half axis).
    h = torch.zeros(n, nh, dtype=torch.float64)
    cut_x = int(2 / 3 * n)
    cut_y = int(2 / 3 * (n // 2 + 1))
    h[: cut_x // 2, :cut_y] = 1.0
    h[-cut_x // 2 :, :cut_y] = 1.0
    # Effective real operator W[kx, ky] over the full plane (indices mod n).
    w = torch.zeros(n, n, dtype=torch.float64)
    neg = (-torch.arange(n)) % n  # index of -k
    w[:, 1 : n // 2] = h[:, 1 : n // 2]  # 0 < k_y < n/2: stored as is
    w[:, n // 2 + 1 :] = h[neg][:, 1 : n // 2].flip(-1)  # k_y < 0: conj of (-kx, -ky)
    for j in (0, n // 2):  # k_y = 0 and Nyquist: irfft keeps the Hermitian part
        w[:, j] = 0.5 * (h[:, j] + h[neg, j])
    # Our layout: rows k_y (full), columns k_x >= 0.
    return w.T[:, :nh].contiguous().to(dtype=dtype, device=device)


def truncate_hat(u_hat: Tensor, m: int) -> Tensor:
    """Spectral truncation of rfft2 coefficients from ``N x N`` to ``m x m``.

    ``u_hat`` is ``(..., N, N//2 + 1)`` from ``torch.fft.rfft2`` of a real ``N x N``
    field; returns the rfft2 coefficients ``(..., m, m//2 + 1)`` of the ``m x m``
    field holding the modes ``|k_x|, |k_y| < m/2`` (rescaled by ``(m/N)^2`` for
    the unnormalised FFT); the Nyquist row and column of the ``m``-grid are
    zero.  Exact for fields band-limited to ``|k| < m/2``.  ``m <= N``, even.
    """
    n = u_hat.shape[-2]
    _check_even_grid(m, "m")
    if u_hat.shape[-1] != n // 2 + 1:
        raise ValueError(f"expected rfft2 coefficients (..., N, N//2+1), got {tuple(u_hat.shape)}")
    if m > n:
        raise ValueError(f"truncate_hat needs m <= N, got m={m}, N={n}")
    h = m // 2
    out = u_hat.new_zeros(*u_hat.shape[:-2], m, h + 1)
    out[..., :h, :h] = u_hat[..., :h, :h]
    out[..., m - h + 1 :, :h] = u_hat[..., n - h + 1 :, :h]
    return out * (m / n) ** 2


def _pad_hat(u_hat: Tensor, m: int) -> Tensor:
    """Zero-pad rfft2 coefficients of an ``N`` grid to an ``m >= N`` grid (Nyquist of N dropped)."""
    n = u_hat.shape[-2]
    h = n // 2
    out = u_hat.new_zeros(*u_hat.shape[:-2], m, m // 2 + 1)
    out[..., :h, :h] = u_hat[..., :h, :h]
    out[..., m - h + 1 :, :h] = u_hat[..., n - h + 1 :, :h]
    return out * (m / n) ** 2


def resample_spectral(u: Tensor, m: int) -> Tensor:
    """Resample real fields ``(..., N, N)`` to ``(..., m, m)`` in Fourier space.

    Down-sampling (``m < N``) is spectral truncation (:func:`truncate_hat`),
    up-sampling (``m > N``) is zero padding (trigonometric interpolation).  In
    both cases only the modes ``|k_x|, |k_y| < min(N, m)/2`` are carried, so the
    result is exact for fields band-limited to that set, and down(up(u)) = u for
    fields without Nyquist content.  ``m == N`` returns ``u`` unchanged.
    """
    n = u.shape[-1]
    if u.shape[-2] != n:
        raise ValueError(f"expected square fields (..., N, N), got {tuple(u.shape)}")
    _check_even_grid(n, "N")
    _check_even_grid(m, "m")
    if m == n:
        return u
    u_hat = torch.fft.rfft2(u)
    out = truncate_hat(u_hat, m) if m < n else _pad_hat(u_hat, m)
    return torch.fft.irfft2(out, s=(m, m))


def block_average(u: Tensor, m: int) -> Tensor:
    """Average real fields ``(..., N, N)`` over ``(N/m) x (N/m)`` blocks -> ``(..., m, m)``."""
    n = u.shape[-1]
    if u.shape[-2] != n:
        raise ValueError(f"expected square fields (..., N, N), got {tuple(u.shape)}")
    if not isinstance(m, int) or m < 1 or n % m:
        raise ValueError(f"block_average needs m dividing N, got m={m!r}, N={n}")
    f = n // m
    return u.reshape(*u.shape[:-2], m, f, m, f).mean(dim=(-3, -1))


def velocity_from_vorticity(w: Tensor, length: float = 2 * math.pi) -> Tensor:
    """Velocity ``(..., 2, N, N)`` (components ``u_x, u_y``) from vorticity ``(..., N, N)``.

    Stream function ``psi`` with ``laplacian(psi) = -w`` (zero mean), then
    ``u_x = d psi/dy``, ``u_y = -d psi/dx``, so that ``w = d u_y/dx - d u_x/dy``
    (jax-cfd's convention).  The mean of ``w`` is ignored (it carries no
    velocity on a periodic domain); Nyquist derivatives are zero.
    """
    n = w.shape[-1]
    ky, kx = derivative_operators(n, length, dtype=w.dtype, device=w.device)
    ky_full, kx_full = wavenumbers(n, length, dtype=w.dtype, device=w.device)
    k2 = ky_full**2 + kx_full**2
    k2[0, 0] = 1.0
    psi_hat = torch.fft.rfft2(w) / k2
    psi_hat[..., 0, 0] = 0.0
    vel_hat = torch.stack((1j * ky * psi_hat, -1j * kx * psi_hat), dim=-3)
    return torch.fft.irfft2(vel_hat, s=(n, n))


def vorticity_from_velocity(v: Tensor, length: float = 2 * math.pi) -> Tensor:
    """Vorticity ``d u_y/dx - d u_x/dy``, ``(..., N, N)``, of a velocity ``(..., 2, N, N)``."""
    n = v.shape[-1]
    if v.shape[-3] != 2:
        raise ValueError(f"expected velocity (..., 2, N, N), got {tuple(v.shape)}")
    ky, kx = derivative_operators(n, length, dtype=v.dtype, device=v.device)
    v_hat = torch.fft.rfft2(v)
    w_hat = 1j * kx * v_hat[..., 1, :, :] - 1j * ky * v_hat[..., 0, :, :]
    return torch.fft.irfft2(w_hat, s=(n, n))
