"""The Henon-Heiles system: a conservative (Hamiltonian) reference system, batched.

Henon & Heiles (1964, Astron. J. 69, 73), unit masses, nondimensional units::

    H(x, y, px, py) = (px^2 + py^2) / 2 + U(x, y),     U = (x^2 + y^2) / 2 + x^2 y - y^3 / 3

    dx/dt = px,   dy/dt = py,   dpx/dt = -x - 2 x y,   dpy/dt = -y - x^2 + y^2

States are ``(B, 4)`` tensors ``(x, y, px, py)`` (positions ``q = (x, y)``, momenta
``p = (px, py)``); ``observe`` returns them unchanged.  The phase-space divergence is exactly
0 (Liouville): ``dq/dt`` depends only on ``p`` and ``dp/dt`` only on ``q``.

Energies.  The potential has a minimum 0 at the origin and three saddles of height 1/6 at
``(0, 1)`` and ``(+-sqrt(3)/2, -1/2)``; for ``E <= 1/6`` orbits are bounded by the triangle
``U = 1/6``, above it they can escape to infinity (``energy > 1/6`` is refused).  The classic
picture (Henon & Heiles 1964; Lichtenberg & Lieberman, *Regular and Chaotic Dynamics*,
section 1.4): at ``E = 1/12`` almost all of the Poincare section ``x = 0`` is covered by
invariant tori (regular orbits, largest Lyapunov exponent 0), at ``E = 1/8`` regular islands
and a chaotic sea coexist, at ``E = 1/6`` most of the section is chaotic.  Measured here
(two-trajectory Benettin method, yoshida4 at dt 0.05; ``tests/test_henon_heiles.py`` runs a
shorter version): 8 random section points at ``E = 1/6`` have largest exponents 0.074-0.172
(mean 0.13) after 400 time units; the regular orbit through ``(x, y, py) = (0, 0, 0)`` at
``E = 1/12`` has -0.0025 after 100 and -0.0002 after 400 time units (a finite-time estimate of
a zero exponent decays like ``log(t)/t``).

Initial conditions at energy ``E`` (:meth:`HenonHeiles.initial_condition`): points of the
Poincare section ``x = 0`` with ``px >= 0``, ``(y, py)`` drawn uniformly (by rejection) from
the region ``py^2/2 + U(0, y) <= E`` and ``px = +sqrt(2 (E - U(0, y)) - py^2)`` solved from
``H = E``.  Uniform area ``dy dpy`` on the section is the invariant measure of the Poincare
return map (the flux of the microcanonical measure through the section): restricted to the
chaotic sea it is the distribution of a chaotic orbit's crossings; points that land in a
regular island start regular orbits (at ``E = 1/6`` few do).  The energy is exact up to
round-off (~1e-16 in float64).

Reference integrator: Yoshida's fourth-order composition of leapfrog (``integrator =
"yoshida4"``, default; :mod:`sns.systems.symplectic`), symplectic and time-reversible, or
plain leapfrog (``"leapfrog"``, second order).  Measured at ``E = 1/6`` (float64, 64 orbits,
10^5 steps): the largest energy error ``|H(t) - H(0)|`` is 5.1e-9 at the default ``dt = 0.02``
(2000 time units) and 3.1e-10 at ``dt = 0.01`` with yoshida4, 2.2e-5 and 5.4e-6 (8 orbits)
with leapfrog;
it does not grow with time (symplectic integrators conserve a modified energy) and no orbit
left the triangle.  Halving ``dt`` divides the error of the state at ``t = 2`` by 16.0
(yoshida4) and 4.0 (leapfrog): fourth and second order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sns.systems.base import Preset, check_positive
from sns.systems.lorenz import _ODESystem
from sns.systems.symplectic import INTEGRATORS, integrate

PARAM_UNITS = {"energy": "1", "dt": "1", "integrator": "name"}

#: the saddle energy: orbits with ``H <= ESCAPE_ENERGY`` stay inside the triangle ``U = 1/6``
ESCAPE_ENERGY = 1.0 / 6.0


def potential(q: Tensor) -> Tensor:
    """``U(x, y) = (x^2 + y^2)/2 + x^2 y - y^3/3`` of positions ``(..., 2)``; shape ``(...)``."""
    x, y = q[..., 0], q[..., 1]
    return 0.5 * (x * x + y * y) + x * x * y - y**3 / 3.0


def grad_potential(q: Tensor) -> Tensor:
    """``dU/dq = (x + 2 x y, y + x^2 - y^2)`` of positions ``(..., 2)``."""
    x, y = q.unbind(-1)
    return torch.stack((x * (1.0 + 2.0 * y), y + (x - y) * (x + y)), dim=-1)


def energy(u: Tensor) -> Tensor:
    """``H`` of states ``(..., 4)``; shape ``(...)``."""
    p = u[..., 2:]
    return 0.5 * (p * p).sum(-1) + potential(u[..., :2])


def section_y_range(e: float) -> tuple[float, float]:
    """The interval of ``y`` on the line ``x = 0`` where ``U(0, y) <= e`` (around the origin)."""
    roots = np.roots([1.0, -1.5, 0.0, 3.0 * e])  # U(0, y) = e  <=>  y^3 - 1.5 y^2 + 3 e = 0
    real = np.sort(roots[np.abs(roots.imag) < 1e-7].real)
    lo = real[real < 0].max()
    hi = real[real > 0].min()
    return float(lo), float(hi)


class HenonHeiles(_ODESystem):
    """The Henon-Heiles Hamiltonian system at energy ``energy`` (see module docstring).

    Args:
        energy: energy ``E`` of the initial conditions, ``0 < E <= 1/6`` (default 1/6: mostly
            chaotic; 1/12: mostly regular).
        dt: step of the symplectic integrator (nondimensional time).
        integrator: ``"yoshida4"`` (default, fourth order) or ``"leapfrog"`` (second order).
    """

    name = "henon_heiles"
    dim = 4
    field_names = ("state",)
    field_units = ("1",)

    def __init__(
        self,
        energy: float = ESCAPE_ENERGY,
        dt: float = 0.02,
        integrator: str = "yoshida4",
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dt, dtype, device)
        check_positive("energy", energy)
        if energy > ESCAPE_ENERGY + 1e-12:
            raise ValueError(f"energy must be <= 1/6 (the saddle energy; above it orbits escape to infinity), "
                             f"got {energy!r}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"unknown integrator {integrator!r}; valid choices: {sorted(INTEGRATORS)}")
        self.energy_level = min(float(energy), ESCAPE_ENERGY)
        self.integrator = integrator

    @property
    def params(self) -> dict[str, Any]:
        return {"energy": self.energy_level, "dt": self.dt, "integrator": self.integrator}

    # the dynamics -------------------------------------------------------------------------

    potential = staticmethod(potential)
    grad_potential = staticmethod(grad_potential)
    energy = staticmethod(energy)

    def rhs(self, u: Tensor) -> Tensor:
        """``(px, py, -dU/dx, -dU/dy)`` of states ``(B, 4)``."""
        return torch.cat((u[..., 2:], -grad_potential(u[..., :2])), dim=-1)

    def divergence(self, u: Tensor) -> Tensor:
        """0 for every sample (Hamiltonian flow), shape ``(B,)``."""
        return torch.zeros(u.shape[:1], dtype=u.dtype, device=u.device)

    def step(self, u: Tensor, n: int = 1) -> Tensor:
        """Advance ``u`` of shape ``(B, 4)`` by ``n`` symplectic steps of size ``dt``."""
        if u.ndim != 2 or u.shape[1] != self.dim:
            raise ValueError(f"{self.name} expects states of shape (B, {self.dim}), got {tuple(u.shape)}")
        q, p = integrate(self.integrator, u[:, :2], u[:, 2:], grad_potential, self.dt, int(n))
        return torch.cat((q, p), dim=-1)

    # initial conditions -------------------------------------------------------------------

    def initial_condition(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """``batch`` states at energy ``E`` on the section ``x = 0``, ``px >= 0`` (module docstring)."""
        e = self.energy_level
        y_lo, y_hi = section_y_range(e)
        p_max = math.sqrt(2.0 * e)
        ys, pys = [], []
        n = 0
        while n < batch:
            m = max(16, 2 * (batch - n))
            r = torch.rand((m, 2), generator=generator, dtype=torch.float64)
            y = y_lo + (y_hi - y_lo) * r[:, 0]
            py = p_max * (2.0 * r[:, 1] - 1.0)
            ok = 0.5 * py * py + 0.5 * y * y - y**3 / 3.0 <= e
            ys.append(y[ok])
            pys.append(py[ok])
            n += int(ok.sum())
        y = torch.cat(ys)[:batch]
        py = torch.cat(pys)[:batch]
        px = torch.sqrt(torch.clamp(2.0 * (e - (0.5 * y * y - y**3 / 3.0)) - py * py, min=0.0))
        u = torch.stack((torch.zeros_like(y), y, px, py), dim=-1)
        return u.to(self.device, self.dtype)


PRESETS_HENON_HEILES = {
    # Henon-Heiles is not in the SNS paper; both presets are CPU-sized ("paper" is a longer,
    # larger data set).  Frames every 0.1 time units (~1/60 of the linear period 2 pi);
    # yoshida4 at dt 0.02 conserves H to ~5e-9 (module docstring).
    "paper": Preset(
        system={"energy": ESCAPE_ENERGY, "dt": 0.02, "integrator": "yoshida4"},
        spinup_steps=500,
        save_every=5,
        n_frames=20000,
        trajectories={"train": 64, "valid": 8, "test": 8},
        description="Henon-Heiles at E = 1/6 (chaotic), yoshida4 dt 0.02, saved every 0.1, 2000 time units",
    ),
    "cpu": Preset(
        system={"energy": ESCAPE_ENERGY, "dt": 0.02, "integrator": "yoshida4"},
        spinup_steps=500,
        save_every=5,
        n_frames=4000,
        trajectories={"train": 16, "valid": 4, "test": 4},
        description="Henon-Heiles at E = 1/6 (chaotic), yoshida4 dt 0.02, saved every 0.1, 400 time units",
    ),
}
