r"""Batched pseudo-spectral solver for 2-D forced Kolmogorov flow (vorticity form).

Equation, on the doubly periodic square :math:`[0, 2\pi]^2`:

.. math::

    \partial_t \omega + \mathbf u \cdot \nabla \omega
        = \nu \nabla^2 \omega - \mu\, \omega - A k_f \cos(k_f y),

with :math:`\omega = \partial_x u_y - \partial_y u_x`, stream function
:math:`\nabla^2 \psi = -\omega`, :math:`u_x = \partial_y \psi`,
:math:`u_y = -\partial_x \psi`; viscosity :math:`\nu = 1/Re`, linear drag
:math:`\mu` (0.1), forcing wavenumber :math:`k_f` (4) and amplitude :math:`A` (1).
The forcing term is the curl of the body force :math:`\mathbf f = (A \sin(k_f y), 0)`,
exactly as jax-cfd's ``ForcedNavierStokes2D`` (``kolmogorov_forcing(k=4)``, scale 1,
drag 0.1) builds it: :math:`\partial_x f_y - \partial_y f_x = -A k_f \cos(k_f y)`.

Discretisation (jax-cfd's ``spectral.equations.NavierStokes2D`` +
``spectral.time_stepping.crank_nicolson_rk4``; Kochkov et al., PNAS 2021):

* Fourier pseudo-spectral on an ``N x N`` grid; the nonlinear term
  :math:`-\mathbf u\cdot\nabla\omega` is evaluated on the grid and multiplied by a
  2/3-rule mask (:func:`sns.systems.spectral.dealias_mask`: ``"jaxcfd"`` reproduces
  jax-cfd's mask exactly, ``"symmetric"`` is the textbook square 2/3 rule);
* the mask applies to the nonlinear term only, as in jax-cfd: ``step`` and ``rhs``
  evolve the state they are given, all ``N^2`` modes.  Nothing feeds the modes
  outside the mask's support (advection is masked, the forcing mode is resolved,
  the linear part is diagonal): content there (e.g. a finite-difference vorticity
  from jax-cfd's ``filtered_velocity_field``) decays at its linear rate while it
  still advects and is advected.  The *resolved modes* (``mask > 0``) are an
  invariant subspace; :meth:`KolmogorovFlow.initial_condition` draws states in it,
  so the data sets live there.  Mode values below ``finfo.tiny / finfo.eps``
  (1e-31 in float32, 1e-292 in float64) are flushed to zero after every step, as
  XLA's flush-to-zero does for jax-cfd: decaying remnants would otherwise become
  subnormal floats (6.7% of the modes of a float32 64^2 run at t = 60 from a noisy
  initial condition; subnormals slowed float32 runs ~10x in an earlier version);
  the flush costs ~3% of a step;
* spectral derivatives treat the Nyquist modes as jax-cfd does
  (:func:`sns.systems.spectral.derivative_operators` with ``nyquist="jaxcfd"``);
  they only matter for states with Nyquist content, which resolved states lack;
* with ``dealias="jaxcfd"`` trajectories from any initial condition agree with
  jax-cfd's ``ForcedNavierStokes2D(smooth=True)`` + ``crank_nicolson_rk4`` to
  round-off: ``tests/test_reference_fixtures.py`` compares against trajectories
  jax-cfd produced (``tests/fixtures/make_reference_fixtures.py``) on every run,
  ``tests/test_reference_jaxcfd.py`` against jax-cfd itself when it is installed;
* implicit (Crank-Nicolson) linear part :math:`L(k) = -(\nu |k|^2 + \mu)`,
  explicit nonlinear part + forcing, combined by the low-storage 5-stage,
  4th-order Runge-Kutta of Carpenter & Kennedy (1994) as in Canuto et al.,
  *Spectral Methods* (2007), App. D.3: for stage ``s``,
  ``h <- F(w) + beta_s h``, ``mu_s = dt/2 (alpha_{s+1} - alpha_s)``,
  ``w <- (w + gamma_s dt h + mu_s L w) / (1 - mu_s L)``.

Conventions: the state is the real vorticity ``(B, N, N)`` with axis order
``(y, x)``: ``w[b, j, i] = omega(x_i, y_j)``, ``x_i = 2 pi i/N``, ``y_j = 2 pi j/N``
(grid nodes, no half-cell offset).  jax-cfd stores ``(x, y)``: its arrays are the
transpose of ours.  Positive vorticity is counter-clockwise rotation.  The
laminar solution is :math:`u_x = A \sin(k_f y)/(\nu k_f^2 + \mu)`, i.e.
:math:`\omega = -A k_f \cos(k_f y)/(\nu k_f^2 + \mu)`.

Units: the problem is nondimensional (domain :math:`2\pi`, forcing amplitude 1).
Lengths are labelled ``m`` and times ``s`` only so that all units are
dimensionally consistent (vorticity ``1/s``, viscosity ``m^2/s``, drag ``1/s``).

Phase-space divergence: ``divergence(u)`` is the trace of the Jacobian of
``rhs`` with respect to the ``N^2`` grid values.  The advective term is
traceless -- the diagonal of its Jacobian in Fourier space needs the velocity or
the gradient of the mean mode, both zero, and a mirror-coupling term
``b conj(w_k)`` has zero trace as a real 2x2 block -- for any real mask, any
real Nyquist convention and even with aliasing.  So the divergence is the
constant :math:`\sum_k -(\nu|k|^2 + \mu)` over all ``N^2`` DFT bins (a Hermitian
pair ``+-k`` counts as its two real degrees of freedom).  Restricted to the
invariant subspace of resolved states (where the data live) the flow's divergence
is the same sum over the bins in the mask's support
(:meth:`KolmogorovFlow.resolved_divergence`; ``"jaxcfd"``'s half-weighted modes
are resolved and count fully; ``"none"`` resolves all ``N^2`` bins).
:meth:`KolmogorovFlow.coarse_divergence` gives that sum over the observed
``M^2`` modes that are resolved (the natural target for a surrogate of the
coarse field).

Presets (see ``PRESETS``):

* ``paper`` (GPU-sized): ``N = 512 -> M = 64``, Re 1e4, dt 1e-3, saved every 2
  steps (0.002), spin-up 10,000 steps, jax-cfd mask.  Trajectory counts: the
  authors' code (QiLiu6/SNS) saves one 100,000-frame trajectory for training and
  evaluates on 20 random initial conditions over 15,000 steps (their Fig. 1).
  A preset has one frame count for all splits, so we use 15,000 frames per
  trajectory with 7 training trajectories (105,000 frames, ~ the reference's
  100,000), 1 validation and 20 test trajectories.
* ``cpu``: ``N = 64 -> M = 32``, Re 1000, dt 1e-2, saved every 10 steps (0.1),
  spin-up 2000 steps (t = 20), 600 frames, 16 + 4 + 4 trajectories; symmetric mask.
  Regime, measured in float64 on 8 initial conditions over t = 20..60 after the
  spin-up: chaotic -- two states 1e-8 apart separate exponentially at a rate
  (finite-time Lyapunov estimate) of 0.64 per unit time (0.58..0.75 across ICs;
  0.62 with dt = 5e-3), saturating at relative distance ~1.1 after t ~ 30 -- and
  statistically steady: energy E = <|u|^2>/2 decays from 3.6 (initial condition)
  to ~1.05 by t ~ 12, then fluctuates around 1.03 / 0.98 (means of the two halves
  of the window, std 0.14); vorticity std 4.68 (4.61 with dt = 5e-3).  The budget
  is forced-dissipative: drag removes ~0.18 and viscosity ~0.015 per unit time,
  balanced on average by the forcing work.  ``test_cpu_preset_regime`` (slow)
  re-checks a positive exponent and a steady energy.  Cost: 24 trajectories x
  8000 steps; ~0.35 ms per trajectory-step at 64^2 (float32, batch 24, one
  thread) estimated from FFT timings at a quiet moment, i.e. ~1-2 minutes;
  1.1 ms measured with the 2-core machine shared (load ~4.5), i.e. ~3.6 minutes.
  Oversubscribed OpenMP threads were 10x slower still: use
  ``torch.set_num_threads(1)`` when other jobs run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sns.systems.base import Preset, check_positive
from sns.systems.spectral import (
    DEALIAS_MODES,
    dealias_mask,
    derivative_operators,
    full_spectrum_sum,
    truncate_hat,
    wavenumbers,
)

__all__ = ["CN_RK4_COEFFICIENTS", "PARAM_UNITS", "PRESETS", "KolmogorovFlow"]

#: Carpenter-Kennedy low-storage RK4 coefficients, as in jax-cfd's ``crank_nicolson_rk4``.
CN_RK4_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "alphas": (0.0, 0.1496590219993, 0.3704009573644, 0.6222557631345, 0.9582821306748, 1.0),
    "betas": (0.0, -0.4178904745, -1.192151694643, -1.697784692471, -1.514183444257),
    "gammas": (0.1496590219993, 0.3792103129999, 0.8229550293869, 0.6994504559488, 0.1530572479681),
}

#: Units of the entries of :attr:`KolmogorovFlow.params` (nominal, see module docstring).
PARAM_UNITS: dict[str, str] = {
    "n": "1",
    "coarse_n": "1",
    "length": "m",
    "reynolds": "1",
    "viscosity": "m^2/s",
    "drag": "1/s",
    "forcing_wavenumber": "1/m",
    "forcing_amplitude": "m/s^2",
    "dt": "s",
    "dealias": "1",
}

_DTYPES = (torch.float32, torch.float64)


class KolmogorovFlow:
    """Forced 2-D Navier-Stokes (Kolmogorov flow) in vorticity form, batched.

    Args:
        n: fine grid size ``N`` (even).
        reynolds: Reynolds number; the viscosity is ``1/reynolds``.  Give this or
            ``viscosity`` (default Re = 1e4 when neither is given).
        viscosity: kinematic viscosity ``nu`` (alternative to ``reynolds``).
        drag: linear drag coefficient ``mu`` (>= 0).
        forcing_wavenumber: ``k_f`` of the body force ``A sin(k_f y)`` (>= 1, < N/2).
        forcing_amplitude: ``A`` (0 switches the forcing off).
        dt: solver time step.
        coarse_n: size ``M`` of the observed grid (even, divides ``N``; default ``N``).
        dealias: ``"jaxcfd"``, ``"symmetric"`` or ``"none"`` (see
            :func:`sns.systems.spectral.dealias_mask`).
        dtype: ``torch.float32`` or ``torch.float64``.
        device: torch device of every tensor the system makes.

    State: real vorticity ``(B, N, N)``, axes ``(y, x)`` (module docstring).
    """

    name = "kolmogorov"
    field_names: tuple[str, ...] = ("vorticity",)
    field_units: tuple[str, ...] = ("1/s",)
    length = 2 * math.pi
    grid_offset = 0.0  #: fields live on grid nodes y_j = j L / N (used for stored coordinates)

    def __init__(
        self,
        n: int = 512,
        reynolds: float | None = None,
        viscosity: float | None = None,
        drag: float = 0.1,
        forcing_wavenumber: int = 4,
        forcing_amplitude: float = 1.0,
        dt: float = 1e-3,
        coarse_n: int | None = None,
        dealias: str = "symmetric",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 4 or n % 2:
            raise ValueError(f"grid size n must be an even integer >= 4, got {n!r}")
        if reynolds is None and viscosity is None:
            reynolds = 1e4
        if viscosity is None:
            check_positive("reynolds", reynolds)
            viscosity = 1.0 / reynolds
        else:
            check_positive("viscosity", viscosity)
            if reynolds is not None and not math.isclose(reynolds * viscosity, 1.0, rel_tol=1e-12):
                raise ValueError(
                    f"reynolds={reynolds!r} and viscosity={viscosity!r} disagree (nu = 1/Re); "
                    "give only one"
                )
        check_positive("dt", dt)
        if not drag >= 0:
            raise ValueError(f"drag must be >= 0, got {drag!r}")
        if (
            not isinstance(forcing_wavenumber, int)
            or isinstance(forcing_wavenumber, bool)
            or not 1 <= forcing_wavenumber < n // 2
        ):
            raise ValueError(
                f"forcing_wavenumber must be an integer in [1, n/2) = [1, {n // 2}), "
                f"got {forcing_wavenumber!r}"
            )
        if not math.isfinite(forcing_amplitude):
            raise ValueError(f"forcing_amplitude must be finite, got {forcing_amplitude!r}")
        coarse_n = n if coarse_n is None else coarse_n
        if (
            not isinstance(coarse_n, int)
            or isinstance(coarse_n, bool)
            or coarse_n < 2
            or coarse_n % 2
            or coarse_n > n
            or n % coarse_n
        ):
            raise ValueError(
                f"coarse grid coarse_n={coarse_n!r} must be an even integer dividing the fine grid "
                f"n={n}"
            )
        if dealias not in DEALIAS_MODES:
            raise ValueError(f"unknown dealias mode {dealias!r}; valid modes: {DEALIAS_MODES}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")

        self.n = n
        self.coarse_n = coarse_n
        self.viscosity = float(viscosity)
        self.reynolds = 1.0 / self.viscosity
        self.drag = float(drag)
        self.forcing_wavenumber = forcing_wavenumber
        self.forcing_amplitude = float(forcing_amplitude)
        self.dt = float(dt)
        self.dealias = dealias
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._build_operators()

    # ------------------------------------------------------------------ setup
    def _build_operators(self) -> None:
        """Precompute every spectral operator (in float64, then cast)."""
        n, f64, dev = self.n, torch.float64, self.device
        cdtype = torch.complex64 if self.dtype == torch.float32 else torch.complex128
        ky, kx = wavenumbers(n, self.length, f64)
        k2 = ky**2 + kx**2  # (n, n//2+1)
        lin = -(self.viscosity * k2 + self.drag)  # L(k)
        dky, dkx = derivative_operators(n, self.length, f64, nyquist="jaxcfd")
        inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
        # Multipliers giving (u_x, u_y, dw/dx, dw/dy) from w_hat: u_x = i ky w/|k|^2, ...
        shape = k2.shape
        ops = torch.stack(
            (
                1j * dky * inv_k2,
                -1j * dkx * inv_k2,
                (1j * dkx).expand(shape),
                (1j * dky).expand(shape),
            )
        )
        self._uv_grad_ops = ops.to(dtype=cdtype, device=dev)  # (4, n, n//2+1)
        mask = dealias_mask(n, self.dealias, dtype=f64)
        support = (mask > 0).to(f64)
        self._mask = mask.to(dtype=cdtype, device=dev)  # complex, like the stage factors below
        self._support = support.to(dtype=self.dtype, device=dev)
        if support[self.forcing_wavenumber, 0] == 0:
            raise ValueError(
                f"forcing_wavenumber={self.forcing_wavenumber} is not resolved by the "
                f"{self.dealias!r} 2/3 mask on an n={n} grid; use a larger n"
            )
        self._lin = lin.to(dtype=self.dtype, device=dev)
        # Forcing in vorticity form: curl of (A sin(k_f y), 0) = -A k_f cos(k_f y), on grid nodes.
        y = torch.arange(n, dtype=f64) * (self.length / n)
        kf = self.forcing_wavenumber
        forcing = (-self.forcing_amplitude * kf * torch.cos(kf * y))[:, None].expand(n, n)
        self._forcing_hat = torch.fft.rfft2(forcing).to(dtype=cdtype, device=dev)
        # CN-RK4 stage factors: w <- a_s w + b_s h, with a_s = (1 + mu_s L)/(1 - mu_s L),
        # b_s = gamma_s dt / (1 - mu_s L).
        al, be, ga = (CN_RK4_COEFFICIENTS[k] for k in ("alphas", "betas", "gammas"))
        self._betas = be
        # Stored complex (imaginary part 0): a real factor times a complex state would be cast to
        # complex, a fresh tensor, at every multiply (15 per step).
        self._stage_a, self._stage_b = [], []
        for s in range(len(be)):
            mu = 0.5 * self.dt * (al[s + 1] - al[s])
            denom = 1.0 - mu * lin
            self._stage_a.append(((1.0 + mu * lin) / denom).to(dtype=cdtype, device=dev))
            self._stage_b.append((ga[s] * self.dt / denom).to(dtype=cdtype, device=dev))
        self._divergence = float(full_spectrum_sum(lin))
        self._resolved_divergence = float(full_spectrum_sum(lin * support))
        finfo = torch.finfo(self.dtype)
        self._flush_below = finfo.tiny / finfo.eps
        # Observed modes: resolved and |k_x|, |k_y| < M/2 (coarse Nyquist dropped).
        h = self.coarse_n // 2
        observed = (ky.abs() < h) & (kx < h) & (support > 0)
        self._coarse_divergence = float(full_spectrum_sum(torch.where(observed, lin, 0.0)))

    @property
    def params(self) -> dict[str, Any]:
        """Physical and numerical parameters (plain numbers; units in ``PARAM_UNITS``)."""
        return {
            "n": self.n,
            "coarse_n": self.coarse_n,
            "length": self.length,
            "reynolds": self.reynolds,
            "viscosity": self.viscosity,
            "drag": self.drag,
            "forcing_wavenumber": self.forcing_wavenumber,
            "forcing_amplitude": self.forcing_amplitude,
            "dt": self.dt,
            "dealias": self.dealias,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "length")
        return f"KolmogorovFlow({args}, dtype={self.dtype}, device={self.device})"

    # --------------------------------------------------------------- helpers
    def _check_state(self, u: Tensor) -> None:
        if not isinstance(u, Tensor) or u.ndim != 3 or u.shape[-2:] != (self.n, self.n):
            shape = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(
                f"expected a vorticity batch of shape (B, {self.n}, {self.n}), got {shape}"
            )

    def to_spectral(self, u: Tensor) -> Tensor:
        """rfft2 coefficients ``(B, N, N//2+1)`` of a physical state ``(B, N, N)`` (all modes)."""
        self._check_state(u)
        return torch.fft.rfft2(u.to(dtype=self.dtype, device=self.device))

    def project(self, u: Tensor) -> Tensor:
        """The resolved part of ``u`` ``(B, N, N)``: its modes in the mask's support (``mask > 0``).

        Resolved states stay resolved under :meth:`step`; the solver never
        projects by itself (module docstring).
        """
        return self.to_physical(self.to_spectral(u) * self._support)

    def to_physical(self, w_hat: Tensor) -> Tensor:
        """Physical vorticity ``(B, N, N)`` from rfft2 coefficients."""
        return torch.fft.irfft2(w_hat, s=(self.n, self.n))

    def explicit_terms(self, w_hat: Tensor) -> Tensor:
        """Masked advection plus forcing, ``mask * F[-u.grad w] + F[forcing]``, spectral."""
        fields = torch.fft.irfft2(w_hat.unsqueeze(-3) * self._uv_grad_ops, s=(self.n, self.n))
        ux, uy, wx, wy = fields.unbind(-3)
        u_grad_w = torch.addcmul(ux * wx, uy, wy)  # the advection is -(u . grad w)
        # in place on the fresh transform (autograd-safe: nothing here saves it)
        return torch.fft.rfft2(u_grad_w).mul_(self._mask).neg_().add_(self._forcing_hat)

    def _flush(self, w_hat: Tensor) -> Tensor:
        """Zero the real and imaginary parts below ``finfo.tiny / finfo.eps`` (no subnormals)."""
        r = torch.view_as_real(w_hat)
        return torch.view_as_complex(torch.where(r.abs() < self._flush_below, 0.0, r))

    def step_spectral(self, w_hat: Tensor, n: int = 1) -> Tensor:
        """Advance rfft2 coefficients ``(B, N, N//2+1)`` by ``n`` CN-RK4 steps (all modes)."""
        for _ in range(n):
            h = None
            for s, beta in enumerate(self._betas):
                f = self.explicit_terms(w_hat)
                h = f if h is None else f.add_(h, alpha=beta)  # f is fresh: h <- f + beta h
                w_hat = torch.addcmul(self._stage_b[s] * h, self._stage_a[s], w_hat)
            w_hat = self._flush(w_hat)
        return w_hat

    # -------------------------------------------------------------- protocol
    def rhs(self, u: Tensor) -> Tensor:
        """Full time derivative ``d omega/dt`` in physical space, ``(B, N, N)``.

        ``irfft2(L * w_hat + mask * F[-u.grad w] + F[forcing])`` with
        ``L = -(nu |k|^2 + drag)`` and ``w_hat = rfft2(u)`` (all modes);
        differentiable (autograd) in ``u``.
        """
        w_hat = self.to_spectral(u)
        return self.to_physical(self._lin * w_hat + self.explicit_terms(w_hat))

    def step(self, u: Tensor, n: int = 1) -> Tensor:
        """Advance the vorticity batch ``u`` ``(B, N, N)`` by ``n`` solver steps of ``dt``.

        Every mode of ``u`` is evolved (the mask acts on the nonlinear term
        only), as jax-cfd does; nothing is projected away.  ``step(u, 0)`` is
        ``u`` up to one FFT round trip.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"number of steps n must be an integer >= 0, got {n!r}")
        return self.to_physical(self.step_spectral(self.to_spectral(u), n))

    def divergence(self, u: Tensor) -> Tensor:
        """Phase-space divergence ``tr(d rhs/d u)`` per sample, ``(B,)`` (constant; module doc).

        The trace over all ``N^2`` directions; :meth:`resolved_divergence` is the
        divergence of the flow restricted to resolved states.
        """
        self._check_state(u)
        return torch.full((u.shape[0],), self._divergence, dtype=u.dtype, device=u.device)

    def resolved_divergence(self) -> float:
        """Sum of ``-(nu |k|^2 + drag)`` over the resolved modes (the mask's support).

        The divergence of the flow on the invariant subspace of resolved states,
        where :meth:`initial_condition` and so the data sets live.
        """
        return self._resolved_divergence

    def coarse_divergence(self) -> float:
        """Sum of ``-(nu |k|^2 + drag)`` over the resolved modes with ``|k_x|, |k_y| < M/2``."""
        return self._coarse_divergence

    def initial_condition(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Random vorticity ``(batch, N, N)``, as jax-cfd's ``filtered_velocity_field``.

        Each velocity component is white noise filtered with the amplitude spectrum
        ``p(k) = LogNormalPDF(k; mode 4, log-variance 1/4) / k`` (``k = |k|``
        angular, zero at ``k = 0``), projected onto divergence-free fields
        (spectrally exact, where jax-cfd uses a finite-difference projection),
        scaled to a maximum speed of 7, and converted to vorticity spectrally.
        Only resolved modes are kept (before the scaling), so the
        field is its own projection.  Noise is drawn on the generator's
        device (CPU when ``generator`` is None) in float64, then cast.
        """
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        n, f64 = self.n, torch.float64
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(batch, 2, n, n, generator=generator, dtype=f64, device=gen_device)
        ky, kx = wavenumbers(n, self.length, f64, gen_device)
        k = torch.sqrt(ky**2 + kx**2)
        peak, var = 4.0, 0.25
        mean = math.log(peak) + var
        k_safe = torch.where(k > 0, k, 1.0)
        logk = torch.log(k_safe)
        density = torch.exp(-((mean - logk) ** 2) / (2 * var) - logk) / k_safe
        density = torch.where(k > 0, density, 0.0)
        density = density * self._support.to(device=gen_device, dtype=f64)
        v_hat = torch.fft.rfft2(noise) * density
        # Leray projection: v <- v - k (k.v)/|k|^2.
        k2 = torch.where(k > 0, k**2, 1.0)
        kdotv = kx * v_hat[:, 0] + ky * v_hat[:, 1]  # v_hat[:, 0] = u_x, v_hat[:, 1] = u_y
        v_hat = v_hat - torch.stack((kx * kdotv / k2, ky * kdotv / k2), dim=1)
        vel = torch.fft.irfft2(v_hat, s=(n, n))
        vmax = vel.pow(2).sum(dim=1).sqrt().amax(dim=(-2, -1))
        v_hat = v_hat * (7.0 / vmax)[:, None, None, None]
        w_hat = 1j * kx * v_hat[:, 1] - 1j * ky * v_hat[:, 0]
        w = torch.fft.irfft2(w_hat, s=(n, n))
        return w.to(dtype=self.dtype, device=self.device)

    def observe(self, u: Tensor) -> Tensor:
        """Observed field ``(B, 1, M, M)``: vorticity truncated spectrally to ``M^2``.

        Keeps the modes ``|k_x|, |k_y| < M/2`` (the coarse Nyquist modes are
        dropped); ``u`` itself when ``M = N``.
        """
        self._check_state(u)
        if self.coarse_n == self.n:
            return u.unsqueeze(1)
        u_hat = torch.fft.rfft2(u)
        m = self.coarse_n
        return torch.fft.irfft2(truncate_hat(u_hat, m), s=(m, m)).unsqueeze(1)

    # ------------------------------------------------------------ diagnostics
    def laminar_state(self, batch: int = 1) -> Tensor:
        """The laminar fixed point ``omega = -A k_f cos(k_f y)/(nu k_f^2 + drag)``, ``(batch, N, N)``."""
        y = torch.arange(self.n, dtype=torch.float64) * (self.length / self.n)
        kf = self.forcing_wavenumber
        amp = -self.forcing_amplitude * kf / (self.viscosity * kf**2 + self.drag)
        w = (amp * torch.cos(kf * y))[:, None].expand(self.n, self.n)
        return w.expand(batch, self.n, self.n).to(dtype=self.dtype, device=self.device).clone()

    def velocity(self, u: Tensor) -> Tensor:
        """Velocity ``(B, 2, N, N)`` (components ``u_x, u_y``) of the vorticity ``u``."""
        w_hat = self.to_spectral(u)
        return torch.fft.irfft2(w_hat.unsqueeze(-3) * self._uv_grad_ops[:2], s=(self.n, self.n))

    def energy_budget(self, u: Tensor) -> dict[str, Tensor]:
        """Kinetic-energy budget terms per sample, each ``(B,)`` (domain averages).

        ``energy`` E = <|u|^2>/2; ``forcing_work`` <u . f>; ``viscous_dissipation``
        nu <omega^2>; ``drag_dissipation`` drag <|u|^2>; ``tendency`` dE/dt =
        <u . d u/dt> computed from :meth:`rhs`.  For the continuous (and for
        the alias-free discretised) system
        ``tendency = forcing_work - viscous_dissipation - drag_dissipation``.
        """
        vel = self.velocity(u)
        vel_t = self.velocity(self.rhs(u))
        y = torch.arange(self.n, dtype=u.dtype, device=u.device) * (self.length / self.n)
        fx = self.forcing_amplitude * torch.sin(self.forcing_wavenumber * y)[:, None]
        mean = lambda a: a.mean(dim=(-2, -1))
        speed2 = mean(vel.pow(2).sum(dim=1))
        w = u - u.mean(dim=(-2, -1), keepdim=True)
        return {
            "energy": 0.5 * speed2,
            "tendency": mean((vel * vel_t).sum(dim=1)),
            "forcing_work": mean(vel[:, 0] * fx),
            "viscous_dissipation": self.viscosity * mean(w.pow(2)),
            "drag_dissipation": self.drag * speed2,
        }


#: Generation presets: ``paper`` (GPU-sized, reproduces the reference data) and ``cpu``.
PRESETS: dict[str, Preset] = {
    "paper": Preset(
        system={
            "n": 512,
            "coarse_n": 64,
            "reynolds": 1e4,
            "drag": 0.1,
            "forcing_wavenumber": 4,
            "dt": 1e-3,
            "dealias": "jaxcfd",
        },
        spinup_steps=10_000,
        save_every=2,
        n_frames=15_000,
        trajectories={"train": 7, "valid": 1, "test": 20},
        description=(
            "Paper recipe (GPU-sized): 512^2 -> 64^2 spectral truncation, Re 1e4, dt 1e-3, "
            "frames every 0.002, 10,000-step spin-up, jax-cfd dealiasing."
        ),
    ),
    "cpu": Preset(
        system={
            "n": 64,
            "coarse_n": 32,
            "reynolds": 1e3,
            "drag": 0.1,
            "forcing_wavenumber": 4,
            "dt": 1e-2,
            "dealias": "symmetric",
        },
        spinup_steps=2_000,
        save_every=10,
        n_frames=600,
        trajectories={"train": 16, "valid": 4, "test": 4},
        description=(
            "CPU-scale: 64^2 -> 32^2, Re 1e3, dt 1e-2, frames every 0.1, spin-up t = 20; "
            "chaotic, forced-dissipative (see module docstring)."
        ),
    ),
}
