"""Lorenz-63 and Lorenz-96, batched, integrated with classical RK4.

Lorenz-63 (Lorenz 1963, J. Atmos. Sci. 20, 130)::

    dx/dt = sigma (y - x),   dy/dt = x (rho - z) - y,   dz/dt = x y - beta z

with phase-space divergence ``-(sigma + 1 + beta)`` everywhere.

Lorenz-96 (Lorenz 1996) with ``D`` cyclic variables and forcing ``F``::

    dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F

whose divergence is ``-D`` (the advective term has a zero diagonal Jacobian).

States are ``(B, D)`` tensors; ``observe`` returns them unchanged.  Time is
nondimensional ("model time units", MTU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sns.systems.base import Preset, check_positive

PARAM_UNITS = {
    "sigma": "1",
    "rho": "1",
    "beta": "1",
    "dim": "1",
    "forcing": "1",
    "dt": "MTU",
}


def rk4_step(f, u: Tensor, dt: float) -> Tensor:
    """One classical Runge-Kutta step of ``du/dt = f(u)``."""
    k1 = f(u)
    k2 = f(u + 0.5 * dt * k1)
    k3 = f(u + 0.5 * dt * k2)
    k4 = f(u + dt * k3)
    return u + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


class _ODESystem:
    """Shared RK4 stepping and bookkeeping for the vector systems."""

    name: str
    dim: int

    def __init__(self, dt: float, dtype: torch.dtype, device: str | torch.device) -> None:
        check_positive("dt", dt)
        self.dt = float(dt)
        self.dtype = dtype
        self.device = torch.device(device)

    def step(self, u: Tensor, n: int = 1) -> Tensor:
        """Advance ``u`` of shape ``(B, D)`` by ``n`` RK4 steps of size ``dt``."""
        if u.ndim != 2 or u.shape[1] != self.dim:
            raise ValueError(f"{self.name} expects states of shape (B, {self.dim}), got {tuple(u.shape)}")
        for _ in range(int(n)):
            u = rk4_step(self.rhs, u, self.dt)
        return u

    def observe(self, u: Tensor) -> Tensor:
        return u

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        # draw on CPU so that a seed gives the same state on every device
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(self.device, self.dtype)


class Lorenz63(_ODESystem):
    """Lorenz-63 with the standard chaotic parameters by default (see module docstring)."""

    name = "lorenz63"
    dim = 3
    field_names = ("state",)
    field_units = ("1",)

    def __init__(
        self,
        sigma: float = 10.0,
        rho: float = 28.0,
        beta: float = 8.0 / 3.0,
        dt: float = 0.01,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dt, dtype, device)
        check_positive("sigma", sigma)
        check_positive("beta", beta)
        self.sigma, self.rho, self.beta = float(sigma), float(rho), float(beta)

    @property
    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "rho": self.rho, "beta": self.beta, "dt": self.dt}

    def rhs(self, u: Tensor) -> Tensor:
        x, y, z = u.unbind(-1)
        return torch.stack(
            (self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z), dim=-1
        )

    def divergence(self, u: Tensor) -> Tensor:
        """``-(sigma + 1 + beta)`` for every sample, shape ``(B,)``."""
        return torch.full(u.shape[:1], -(self.sigma + 1.0 + self.beta), dtype=u.dtype, device=u.device)

    def initial_condition(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Points near the attractor: (1, 1, 25) plus unit Gaussian noise (spin up before use)."""
        centre = torch.tensor([1.0, 1.0, 25.0], dtype=self.dtype, device=self.device)
        return centre + self._randn((batch, 3), generator)


class Lorenz96(_ODESystem):
    """Lorenz-96 with ``dim`` cyclic variables and constant forcing (see module docstring)."""

    name = "lorenz96"
    field_names = ("state",)
    field_units = ("1",)

    def __init__(
        self,
        dim: int = 40,
        forcing: float = 8.0,
        dt: float = 0.01,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dt, dtype, device)
        if not isinstance(dim, int) or dim < 4:
            raise ValueError(f"Lorenz96 dim must be an integer >= 4, got {dim!r}")
        self.dim = dim
        self.forcing = float(forcing)

    @property
    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "forcing": self.forcing, "dt": self.dt}

    def rhs(self, u: Tensor) -> Tensor:
        return (u.roll(-1, -1) - u.roll(2, -1)) * u.roll(1, -1) - u + self.forcing

    def divergence(self, u: Tensor) -> Tensor:
        """``-D`` for every sample, shape ``(B,)``."""
        return torch.full(u.shape[:1], -float(self.dim), dtype=u.dtype, device=u.device)

    def initial_condition(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """The rest state ``F`` plus a perturbation of standard deviation 0.01 (spin up before use)."""
        return self.forcing + 0.01 * self._randn((batch, self.dim), generator)


PRESETS_LORENZ63 = {
    # The paper does not use Lorenz-63; both presets are CPU-sized. "paper" is a
    # longer, denser data set of the same system (DESIGN.md section 5: saved every 0.05).
    "paper": Preset(
        system={"dt": 0.01},
        spinup_steps=2000,
        save_every=5,
        n_frames=20000,
        trajectories={"train": 64, "valid": 8, "test": 8},
        description="Lorenz-63, dt 0.01, saved every 0.05 MTU, 1000 MTU per trajectory",
    ),
    "cpu": Preset(
        system={"dt": 0.01},
        spinup_steps=2000,
        save_every=5,
        n_frames=4000,
        trajectories={"train": 16, "valid": 4, "test": 4},
        description="Lorenz-63, dt 0.01, saved every 0.05 MTU, 200 MTU per trajectory",
    ),
}

PRESETS_LORENZ96 = {
    "paper": Preset(
        system={"dim": 40, "forcing": 8.0, "dt": 0.01},
        spinup_steps=2000,
        save_every=5,
        n_frames=20000,
        trajectories={"train": 64, "valid": 8, "test": 8},
        description="Lorenz-96, D 40, F 8, dt 0.01, saved every 0.05 MTU",
    ),
    "cpu": Preset(
        system={"dim": 40, "forcing": 8.0, "dt": 0.01},
        spinup_steps=2000,
        save_every=5,
        n_frames=4000,
        trajectories={"train": 16, "valid": 4, "test": 4},
        description="Lorenz-96, D 40, F 8, dt 0.01, saved every 0.05 MTU",
    ),
}
