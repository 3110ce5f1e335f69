"""Two-layer quasi-geostrophic (QG) model on a doubly periodic square, batched.

A PyTorch re-implementation of pyqg's ``QGModel`` (pyqg 0.7.2; Abernathey et
al., https://pyqg.readthedocs.io) with the same equations, grid, spectral
filter and time stepping, vectorised over a batch of trajectories (CPU or GPU,
float32 or float64).  In float64 it reproduces ``pyqg.QGModel`` to round-off:
``tests/test_reference_fixtures.py`` compares ``step`` loops and ``advance``
against a pyqg trajectory committed in ``tests/fixtures/`` (~3e-14 relative L2
after 300 steps), ``tests/test_reference_pyqg.py`` against pyqg itself when
it is installed.

Equations (layer 1 = upper, layer 2 = lower; ``delta = H1/H2``)::

    q1 = lap(psi1) + F1 (psi2 - psi1),     F1 = rd^-2 / (1 + delta)
    q2 = lap(psi2) + F2 (psi1 - psi2),     F2 = delta F1

    dq1/dt + J(psi1, q1) + U1 dq1/dx + Qy1 dpsi1/dx = ssd
    dq2/dt + J(psi2, q2) + U2 dq2/dx + Qy2 dpsi2/dx = -rek lap(psi2) + ssd

    Qy1 = beta + F1 (U1 - U2),   Qy2 = beta - F2 (U1 - U2)

``q`` is the PV *anomaly* (the background PV gradient ``Qy`` is carried by the
linear terms), ``u = -dpsi/dy``, ``v = dpsi/dx``, ``J(a, b) = a_x b_y - a_y b_x``
and ``ssd`` is the small-scale dissipation done by the exponential spectral
filter of the stepper (Arbic & Flierl 2003, as in pyqg)::

    filter(k, l) = exp(-filterfac (wvx - 0.65 pi)^4)   for wvx > 0.65 pi, else 1
    wvx = sqrt((k dx)^2 + (l dy)^2)

Spatial discretisation (pyqg's): pseudo-spectral with real FFTs, no
dealiasing; PV inversion ``psi_hat = A(k, l) q_hat`` with the 2x2 inverse of
``[[-(K^2+F1), F1], [F2, -(K^2+F2)]]`` (``K^2 = k^2 + l^2``; the mean,
``K = 0``, is not inverted: ``psi_hat = 0`` there); advection in flux form,
``-(ik FFT((u + U) q) + il FFT(v q))``.

Time stepping (pyqg's): third-order Adams-Bashforth on the spectral PV,
started with one forward-Euler step and one AB2 step, the filter applied to
the updated PV after every step::

    q_hat <- filter * (q_hat + dt (23 f_n - 16 f_{n-1} + 5 f_{n-2}) / 12)

Because AB3 is a multistep method, the tendency history is part of the
integration state.  Two ways to carry it:

* :meth:`TwoLayerQG.step` (the ``System`` protocol) remembers, like a
  ``pyqg.QGModel``, the state it returned last and the history that goes
  with it: when the next call is given that state again (equal values, same
  shape, dtype and device -- the loop ``u = qg.step(u)``), it continues
  with AB3, so looping equals one uninterrupted pyqg run to round-off.  Any
  other state (a new initial condition, a modified or perturbed state, a
  different batch) restarts the scheme with Euler then AB2, as pyqg does
  from a new ``q``; :meth:`TwoLayerQG.reset` forgets the history explicitly.
  One object follows one integration at a time: interleaving two batches on
  one object restarts each at every call.
* :meth:`TwoLayerQG.advance` takes and returns the history explicitly
  (:class:`ABHistory`) and keeps nothing in the object: several integrations
  on one object, or chunks of one (``sns.data.generate`` uses it), equal one
  uninterrupted pyqg run.

Shapes and units: states are PV anomalies ``q`` of shape ``(B, 2, N, N)`` in
1/s, axis order ``(batch, layer, y, x)`` with layer 0 the upper layer, on the
cell-centred grid ``x_i = (i + 1/2) L / N`` (pyqg's).  ``observe`` returns the
*eddy* PV (the zonal, i.e. x-, mean removed per row, as in the SNS data
scripts) block-averaged to ``(B, 2, n_coarse, n_coarse)``.  Times are in
seconds, lengths in metres.  The "jet" configuration (Ross et al. 2023, JAMES,
"Benchmarking of machine learning ocean subgrid parameterizations in an
idealized model") is the default.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sns.systems.base import Preset, check_positive

#: Per-layer scales (upper, lower) by which the dataset writer divides the
#: observed eddy PV of the jet configuration (1/s); from the SNS reference code.
NORM_SCALES: tuple[float, float] = (7.6382e-6, 3.0120e-7)

PARAM_UNITS: dict[str, str] = {
    "nx": "1",  # grid points per side of the solver grid
    "n_coarse": "1",  # grid points per side of the observed (block-averaged) grid
    "L": "m",  # side of the square domain
    "dt": "s",  # solver time step
    "beta": "1/(m s)",  # meridional gradient of the Coriolis parameter
    "rek": "1/s",  # linear (Ekman) bottom drag on the lower layer
    "delta": "1",  # layer thickness ratio H1/H2
    "rd": "m",  # deformation radius
    "U1": "m/s",  # background zonal velocity of the upper layer
    "U2": "m/s",  # background zonal velocity of the lower layer
    "H1": "m",  # upper layer thickness (H2 = H1/delta)
    "filterfac": "1",  # amplitude of the exponential small-scale filter
}

#: The "jet" configuration of pyqg used by the SNS paper (DESIGN.md section 2).
JET_PARAMS: dict[str, Any] = {
    "nx": 256,
    "n_coarse": 64,
    "L": 1.0e6,
    "dt": 3600.0,
    "beta": 1.0e-11,
    "rek": 7.0e-8,
    "delta": 0.1,
    "rd": 15000.0,
    "U1": 0.025,
    "U2": 0.0,
    "H1": 500.0,
    "filterfac": 23.6,
}

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class ABHistory(NamedTuple):
    """Adams-Bashforth tendency history carried between :meth:`TwoLayerQG.advance` calls.

    ``prev`` / ``prev2``: the spectral PV tendencies ``d q_hat / dt`` of the
    last and the second-to-last step, complex ``(B, 2, N, N//2 + 1)`` in 1/s^2
    (``rfft2`` layout), or ``None`` when fewer steps have been taken; the next
    step is forward Euler (no history), AB2 (``prev`` only) or AB3 (both).
    """

    prev: Tensor | None = None
    prev2: Tensor | None = None


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _COMPLEX:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


class TwoLayerQG:
    """Batched two-layer QG model with pyqg's ``QGModel`` conventions (see module docstring).

    Constructor arguments (units in ``PARAM_UNITS``; defaults: the jet configuration):

    ==========  =================================================================
    nx          solver grid points per side (even, >= 4)
    n_coarse    observed grid points per side; must divide ``nx`` (None: ``nx``)
    L           domain side (m)
    dt          solver time step (s)
    beta        gradient of the Coriolis parameter (1/(m s))
    rek         bottom drag on the lower layer (1/s)
    delta       H1/H2
    rd          deformation radius (m)
    U1, U2      background zonal flow of each layer (m/s)
    H1          upper layer depth (m); only enters energy diagnostics
    filterfac   small-scale filter amplitude (pyqg default 23.6)
    dtype       torch.float32/float64 or "float32"/"float64"
    device      torch device of the operators (states must live there)
    ==========  =================================================================
    """

    name = "qg"
    field_names = ("pv",)
    field_units = ("1/s",)
    n_layers = 2

    def __init__(
        self,
        nx: int = 256,
        n_coarse: int | None = 64,
        L: float = 1.0e6,
        dt: float = 3600.0,
        beta: float = 1.0e-11,
        rek: float = 7.0e-8,
        delta: float = 0.1,
        rd: float = 15000.0,
        U1: float = 0.025,
        U2: float = 0.0,
        H1: float = 500.0,
        filterfac: float = 23.6,
        dtype: torch.dtype | str = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(nx, bool) or not isinstance(nx, int) or nx < 4 or nx % 2:
            raise ValueError(f"nx must be an even integer >= 4, got {nx!r}")
        if n_coarse is None:
            n_coarse = nx
        if isinstance(n_coarse, bool) or not isinstance(n_coarse, int) or n_coarse < 1:
            raise ValueError(f"n_coarse must be a positive integer or None, got {n_coarse!r}")
        if nx % n_coarse:
            divisors = [d for d in range(1, nx + 1) if nx % d == 0]
            raise ValueError(
                f"n_coarse={n_coarse!r} must divide nx={nx}; valid choices: {divisors}"
            )
        for key, value in (("L", L), ("dt", dt), ("delta", delta), ("rd", rd), ("H1", H1)):
            check_positive(key, value)
        for key, value in (("rek", rek), ("filterfac", filterfac)):
            if not value >= 0:
                raise ValueError(f"{key} must be >= 0, got {value!r}")
        for key, value in (("beta", beta), ("U1", U1), ("U2", U2)):
            if not math.isfinite(value):
                raise ValueError(f"{key} must be finite, got {value!r}")

        self.nx, self.n_coarse = nx, n_coarse
        self.L, self.dt = float(L), float(dt)
        self.beta, self.rek, self.delta, self.rd = float(beta), float(rek), float(delta), float(rd)
        self.U1, self.U2, self.H1 = float(U1), float(U2), float(H1)
        self.filterfac = float(filterfac)
        self.dtype = _as_dtype(dtype)
        self.cdtype = _COMPLEX[self.dtype]
        self.device = torch.device(device)
        self._build_operators()
        self.reset()

    # ------------------------------------------------------------------ setup
    def _build_operators(self) -> None:
        """Precompute wavenumbers, inversion matrix, linear terms and filter (in float64)."""
        n, f64 = self.nx, torch.float64
        nk = n // 2 + 1
        dk = 2.0 * math.pi / self.L  # square domain: dl = dk
        self.dx = self.L / n
        # pyqg's ordering: l = dl * [0, 1, ..., n/2 - 1, -n/2, ..., -1], k = dk * [0..n/2]
        kk = dk * torch.arange(nk, dtype=f64)
        ll = dk * torch.cat((torch.arange(0, n // 2), torch.arange(-n // 2, 0))).to(f64)
        k, l = kk[None, :], ll[:, None]
        k2 = k**2 + l**2  # (N, nk)

        self.F1 = self.rd**-2 / (1.0 + self.delta)
        self.F2 = self.delta * self.F1
        self.Qy = (
            self.beta + self.F1 * (self.U1 - self.U2),
            self.beta - self.F2 * (self.U1 - self.U2),
        )

        # inversion psi_hat = a q_hat, a = inverse of [[-(K2+F1), F1], [F2, -(K2+F2)]], 0 at K = 0
        det = k2 * (k2 + self.F1 + self.F2)
        det_inv = torch.where(
            det == 0, torch.zeros_like(det), 1.0 / torch.where(det == 0, 1.0, det)
        )
        a = torch.stack(
            (
                torch.stack((-(k2 + self.F2) * det_inv, -self.F1 * det_inv)),
                torch.stack((-self.F2 * det_inv, -(k2 + self.F1) * det_inv)),
            )
        )  # (2, 2, N, nk)

        # spectral filter (Arbic & Flierl 2003; pyqg's _initialize_filter)
        cphi = 0.65 * math.pi
        wvx = torch.sqrt((k * self.dx) ** 2 + (l * self.dx) ** 2)
        filtr = torch.exp(-self.filterfac * (wvx - cphi) ** 4)
        filtr = torch.where(wvx <= cphi, torch.ones_like(filtr), filtr)

        # bottom drag +rek K^2 psi_hat on the lower layer only
        drag = torch.stack((torch.zeros_like(k2), self.rek * k2))  # (2, N, nk)
        ikQy = 1j * (kk[None, :] * torch.tensor(self.Qy, dtype=f64)[:, None])  # (2, nk)

        # Multipliers of complex tensors are stored complex (as pyqg does): a real
        # operand would be promoted at every call, and (x + 0i) * z == x * z exactly.
        dev, rdt, cdt = self.device, self.dtype, self.cdtype
        self._k2 = k2.to(dev, cdt)
        self._a = a.to(dev, cdt)
        self._ik = (1j * kk).to(dev, cdt)  # (nk,)
        self._il = (1j * ll).to(dev, cdt)[:, None]  # (N, 1)
        self._ikQy = ikQy.to(dev, cdt)[:, None, :]  # (2, 1, nk)
        self._drag = drag.to(dev, cdt)
        self._filtr = filtr.to(dev, cdt)
        self._Ubg = torch.tensor((self.U1, self.U2), dtype=rdt, device=dev)[:, None, None]
        # layer weights H_i / H for energies
        self._weights = (self.delta / (1.0 + self.delta), 1.0 / (1.0 + self.delta))

        # Phase-space divergence (see `divergence`): the trace over all N x N
        # Fourier modes of the lower-layer diagonal of the drag operator,
        # rek K^2 a22 = -rek (K^2 + F1) / (K^2 + F1 + F2)  (0 at K = 0).
        kf = dk * torch.fft.fftfreq(n, d=1.0 / n, dtype=f64)
        k2f = kf[None, :] ** 2 + kf[:, None] ** 2
        rate = -self.rek * (k2f + self.F1) / (k2f + self.F1 + self.F2)
        rate[0, 0] = 0.0
        self._divergence = float(rate.sum())

    # ------------------------------------------------------------- protocol
    @property
    def params(self) -> dict[str, Any]:
        return {
            "nx": self.nx,
            "n_coarse": self.n_coarse,
            "L": self.L,
            "dt": self.dt,
            "beta": self.beta,
            "rek": self.rek,
            "delta": self.delta,
            "rd": self.rd,
            "U1": self.U1,
            "U2": self.U2,
            "H1": self.H1,
            "filterfac": self.filterfac,
        }

    def _check(self, q: Tensor) -> None:
        shape = (2, self.nx, self.nx)
        if q.ndim != 4 or tuple(q.shape[1:]) != shape:
            raise ValueError(
                f"TwoLayerQG expects PV of shape (B, {', '.join(map(str, shape))}), got {tuple(q.shape)}"
            )
        if q.dtype != self.dtype:
            raise ValueError(
                f"TwoLayerQG was built for {self.dtype}, got a state of dtype {q.dtype}"
            )

    def _fft(self, x: Tensor) -> Tensor:
        return torch.fft.rfft2(x)

    def _ifft(self, xh: Tensor) -> Tensor:
        return torch.fft.irfft2(xh, s=(self.nx, self.nx))

    def _invert_hat(self, qh: Tensor) -> Tensor:
        """Spectral PV inversion ``psi_hat = a q_hat`` per wavenumber, ``(..., 2, N, nk)``."""
        a = self._a
        q1, q2 = qh[..., 0, :, :], qh[..., 1, :, :]
        return torch.stack((a[0, 0] * q1 + a[0, 1] * q2, a[1, 0] * q1 + a[1, 1] * q2), dim=-3)

    def _tendency(self, qh: Tensor) -> tuple[Tensor, Tensor]:
        """Spectral tendency ``d q_hat/dt`` (no filter) and physical PV, from the spectral PV.

        One inverse FFT gives ``u``, ``v`` and ``q`` together, one forward FFT
        the fluxes ``(u + U) q`` and ``v q`` (pyqg's algorithm, batched).
        """
        ph = self._invert_hat(qh)
        fields = self._ifft(
            torch.stack((-self._il * ph, self._ik * ph, qh), dim=1)
        )  # (B, 3, 2, N, N)
        u, v, q = fields.unbind(1)
        flux = self._fft(torch.stack(((u + self._Ubg) * q, v * q), dim=1))
        dqhdt = -(self._ik * flux[:, 0] + self._il * flux[:, 1] + self._ikQy * ph)
        return dqhdt + self._drag * ph, q

    def rhs(self, u: Tensor) -> Tensor:
        """Time derivative ``dq/dt`` (1/s^2) of PV ``u`` ``(B, 2, N, N)``, in physical space.

        Advection, background-gradient terms and bottom drag (module
        docstring); the small-scale filter belongs to the stepper and is not
        included.
        """
        self._check(u)
        return self._ifft(self._tendency(self._fft(u))[0])

    def advance(
        self, u: Tensor, n: int = 1, history: ABHistory | None = None
    ) -> tuple[Tensor, ABHistory]:
        """Advance PV ``u`` ``(B, 2, N, N)`` by ``n`` steps, carrying the AB3 history.

        ``history=None`` (or an empty :class:`ABHistory`) starts like pyqg: one
        forward-Euler step, one AB2 step, then AB3.  Returns the new PV and the
        history to pass to the next call; chaining calls is identical to one
        call with the summed ``n``.
        """
        self._check(u)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        prev, prev2 = history if history is not None else (None, None)
        for h in (prev, prev2):
            if h is not None and h.shape != (u.shape[0], 2, self.nx, self.nx // 2 + 1):
                raise ValueError(
                    f"history tendencies of shape {tuple(h.shape)} do not match a batch of {u.shape[0]} states"
                )
        if prev is None and prev2 is not None:
            raise ValueError("ABHistory.prev2 is set but ABHistory.prev is None")
        dt = self.dt
        c1, c2 = 1.5 * dt, -0.5 * dt  # AB2
        d1, d2, d3 = 23.0 / 12.0 * dt, -16.0 / 12.0 * dt, 5.0 / 12.0 * dt  # AB3
        qh = self._fft(u)
        for _ in range(n):
            f = self._tendency(qh)[0]
            if prev is None:
                qh = self._filtr * (qh + dt * f)
            elif prev2 is None:
                qh = self._filtr * (qh + c1 * f + c2 * prev)
            else:
                qh = self._filtr * (qh + d1 * f + d2 * prev + d3 * prev2)
            prev, prev2 = f, prev
        return (self._ifft(qh) if n else u), ABHistory(prev, prev2)

    def step(self, u: Tensor, n: int = 1) -> Tensor:
        """Advance ``u`` by ``n`` steps, continuing the AB3 integration that returned ``u``.

        When ``u`` equals the state the previous ``step`` call of this object
        returned (same values, shape, dtype and device; see
        :meth:`continues`), the multistep history of that call is used, so
        ``for _ in range(k): u = qg.step(u)`` equals ``qg.step(u, k)`` and
        pyqg's AB3 run.  Otherwise (first call, another state, after
        :meth:`reset`) the scheme restarts with Euler then AB2, as pyqg does
        from a new initial condition.  The returned state and its history are
        remembered for the next call (module docstring); :meth:`advance` is
        the variant that keeps nothing in the object.
        """
        history = self._history if self.continues(u) else None
        out, history = self.advance(u, n, history)
        self._last = out.detach().clone()
        self._history = history
        return out

    def continues(self, u: Tensor) -> bool:
        """Whether :meth:`step` would continue the remembered AB3 history from ``u``."""
        last = self._last
        return (
            last is not None
            and isinstance(u, Tensor)
            and u.shape == last.shape
            and u.dtype == last.dtype
            and u.device == last.device
            and bool(torch.equal(u.detach(), last))
        )

    def reset(self) -> None:
        """Forget the state and AB3 history remembered by :meth:`step`: its next call restarts."""
        self._last: Tensor | None = None
        self._history = ABHistory()

    def divergence(self, u: Tensor) -> Tensor:
        """Phase-space divergence ``tr(d rhs/d q)`` of the discretised vector field, ``(B,)`` in 1/s.

        With the flux-form pseudo-spectral Jacobian the advective Jacobian
        has zero trace (its terms are products of commuting circulant
        operators with a zero-diagonal, antisymmetric derivative), and the
        background terms ``U ik`` and ``Qy ik a`` have odd, purely imaginary
        symbols whose sum over +-k vanishes.  What remains is the bottom drag
        acting through the inversion: the diagonal (lower-to-lower) symbol
        ``rek K^2 a22 = -rek (K^2 + F1) / (K^2 + F1 + F2)`` summed over all
        ``N x N`` Fourier modes except the mean.  It is the same constant for
        every state.
        """
        self._check(u)
        return torch.full(u.shape[:1], self._divergence, dtype=u.dtype, device=u.device)

    def initial_condition(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Random PV ``(batch, 2, N, N)`` of pyqg's ``QGModel`` kind (spin up before use).

        pyqg's default: ``q1 = 1e-7 U(y, x) + 1e-6 U(x)`` (``U`` uniform on
        [0, 1), the second term constant along y), ``q2 = 0``; plus, as in the
        SNS data script, a baroclinic perturbation ``+-1e-7 n_i`` with
        independent zero-mean standard normal fields ``n_1, n_2`` (1/s).
        Drawn on the CPU in float64 so a seed gives the same state on every device.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        n, f64 = self.nx, torch.float64
        q = torch.zeros(batch, 2, n, n, dtype=f64)
        q[:, 0] = 1e-7 * torch.rand(batch, n, n, generator=generator, dtype=f64)
        q[:, 0] += 1e-6 * torch.rand(batch, 1, n, generator=generator, dtype=f64)
        noise = torch.randn(batch, 2, n, n, generator=generator, dtype=f64)
        noise = noise - noise.mean(dim=(-2, -1), keepdim=True)
        q[:, 0] += 1e-7 * noise[:, 0]
        q[:, 1] -= 1e-7 * noise[:, 1]
        return q.to(self.device, self.dtype)

    def observe(self, u: Tensor) -> Tensor:
        """Eddy PV (x-mean removed) block-averaged to ``(B, 2, n_coarse, n_coarse)``, 1/s."""
        self._check(u)
        eddy = u - u.mean(dim=-1, keepdim=True)
        f, m = self.nx // self.n_coarse, self.n_coarse
        return eddy.reshape(u.shape[0], 2, m, f, m, f).mean(dim=(3, 5))

    # ------------------------------------------------------------ diagnostics
    def streamfunction(self, q: Tensor) -> Tensor:
        """PV inversion: streamfunction ``psi`` (m^2/s) of PV ``q`` ``(..., 2, N, N)``; the mean of q is ignored."""
        return self._ifft(self._invert_hat(self._fft(q)))

    def pv(self, psi: Tensor) -> Tensor:
        """PV anomaly ``q = lap(psi) + F_i (psi_j - psi_i)`` of streamfunction ``psi`` ``(..., 2, N, N)``."""
        ph = self._fft(psi)
        p1, p2 = ph[..., 0, :, :], ph[..., 1, :, :]
        q1 = -(self._k2 + self.F1) * p1 + self.F1 * p2
        q2 = self.F2 * p1 - (self._k2 + self.F2) * p2
        return self._ifft(torch.stack((q1, q2), dim=-3))

    def velocity(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """Eddy velocities ``u = -psi_y``, ``v = psi_x`` (m/s) of PV ``q``, each ``(..., 2, N, N)``."""
        ph = self._invert_hat(self._fft(q))
        return self._ifft(-self._il * ph), self._ifft(self._ik * ph)

    def kinetic_energy(self, q: Tensor) -> Tensor:
        """Depth-weighted mean eddy kinetic energy ``sum_i H_i/H <(u_i^2 + v_i^2)/2>`` (m^2/s^2), ``(B,)``.

        Equals pyqg's ``_calc_ke``.
        """
        u, v = self.velocity(q)
        ke = 0.5 * (u**2 + v**2).mean(dim=(-2, -1))  # (B, 2)
        return self._weights[0] * ke[:, 0] + self._weights[1] * ke[:, 1]

    def cfl(self, q: Tensor) -> Tensor:
        """pyqg's CFL number ``max(|u + U|, |v|) dt / dx`` per sample, ``(B,)``."""
        u, v = self.velocity(q)
        speed = torch.maximum(
            (u + self._Ubg).abs().amax(dim=(1, 2, 3)), v.abs().amax(dim=(1, 2, 3))
        )
        return speed * self.dt / self.dx

    def linear_growth_rates(self) -> Tensor:
        """Growth rate ``Im(omega)`` (1/s) of the most unstable linear mode at each ``(l, k)``, ``(N, nk)``.

        Linearising about the background flow gives, per wavenumber, the
        2x2 generalised eigenproblem ``A phi = omega B phi`` with
        ``B = [[-(K^2+F1), F1], [F2, -(K^2+F2)]]`` and
        ``A = k diag(U) B + k diag(Qy) + i rek K^2 e_2 e_2^T`` for
        ``psi ~ phi exp(i(kx + ly - omega t))`` (pyqg's ``stability_analysis``
        with bottom friction).  Solved in closed form (complex quadratic).
        """
        f64 = torch.float64
        k = torch.fft.rfftfreq(self.nx, d=self.L / self.nx, dtype=f64)[None, :] * 2 * math.pi
        l = torch.fft.fftfreq(self.nx, d=self.L / self.nx, dtype=f64)[:, None] * 2 * math.pi
        k2 = (k**2 + l**2).to(torch.complex128)
        kc = k.to(torch.complex128)
        B11, B12, B21, B22 = -(k2 + self.F1), self.F1 + 0 * k2, self.F2 + 0 * k2, -(k2 + self.F2)
        A11 = kc * self.U1 * B11 + kc * self.Qy[0]
        A12 = kc * self.U1 * B12
        A21 = kc * self.U2 * B21
        A22 = kc * self.U2 * B22 + kc * self.Qy[1] + 1j * self.rek * k2
        # det(A - omega B) = 0  ->  a omega^2 + b omega + c = 0
        a = B11 * B22 - B12 * B21
        b = -(A11 * B22 + A22 * B11 - A12 * B21 - A21 * B12)
        c = A11 * A22 - A12 * A21
        disc = torch.sqrt(b**2 - 4 * a * c)
        safe_a = torch.where(a == 0, torch.ones_like(a), a)
        roots = torch.stack(((-b + disc) / (2 * safe_a), (-b - disc) / (2 * safe_a)))
        growth = roots.imag.amax(dim=0)
        return torch.where(a.real == 0, torch.zeros_like(growth), growth)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        system=dict(JET_PARAMS),
        # the SNS data script runs pyqg until tavestart = 3.1104e9 s (36,000 days, ~98.6 years)
        spinup_steps=864_000,
        save_every=10,  # 36,000 s
        n_frames=50_000,  # rollout_length of the SNS jet data set
        trajectories={"train": 1, "valid": 1, "test": 5},
        description=(
            "pyqg jet configuration at 256^2, eddy PV block-averaged to 64^2, saved every "
            "36,000 s after a 36,000-day (~98.6-year) spin-up, 50,000 frames per trajectory "
            "(SNS: one training run of 50,000 frames, 5 test ICs). GPU-sized."
        ),
    ),
    "cpu": Preset(
        system={**JET_PARAMS, "nx": 64, "n_coarse": 32},
        spinup_steps=52_560,  # 6 years of 365 days
        save_every=10,  # 36,000 s
        n_frames=1_000,
        trajectories={"train": 8, "valid": 2, "test": 2},
        description=(
            "jet parameters at 64^2 (dx = 15.6 km ~ rd), eddy PV block-averaged to 32^2, saved "
            "every 36,000 s after a 6-year spin-up. Same regime as the paper's (measured, 4 "
            "trajectories: the weak baroclinic instability, e-folding 259 days, saturates after "
            "~4 years; kinetic energy 1.2e-4 m^2/s^2 in years 6-9, then a slow drift of ~+2.5%/yr "
            "to 1.5e-4 at year 19, against ~3% fluctuations within a year; coarse eddy PV std "
            "0.75-0.8 of NORM_SCALES; finite-time Lyapunov exponent 0.017/day). Generates in "
            "minutes on a CPU; the paper preset's 98.6-year spin-up removes the drift."
        ),
    ),
}
