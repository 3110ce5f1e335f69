"""The Hodgkin-Huxley neuron (4 state variables), batched, integrated with classical RK4.

Hodgkin & Huxley (J. Physiol. 117 (1952) 500), in the modern convention (membrane
potential ``V`` in mV with the resting potential near -65 mV; e.g. Dayan & Abbott,
*Theoretical Neuroscience*, 2001; Gerstner et al., *Neuronal Dynamics*, 2014)::

    C_m dV/dt = I_ext - g_Na m^3 h (V - E_Na) - g_K n^4 (V - E_K) - g_L (V - E_L)
    dx/dt     = alpha_x(V) (1 - x) - beta_x(V) x,          x in {m, h, n}

    alpha_m = 0.1 (V + 40) / (1 - exp(-(V + 40) / 10))     beta_m = 4 exp(-(V + 65) / 18)
    alpha_h = 0.07 exp(-(V + 65) / 20)                     beta_h = 1 / (1 + exp(-(V + 35) / 10))
    alpha_n = 0.01 (V + 55) / (1 - exp(-(V + 55) / 10))    beta_n = 0.125 exp(-(V + 65) / 80)

(rates in 1/ms, ``V`` in mV).  Standard parameters: ``C_m = 1 uF/cm^2``, ``g_Na = 120``,
``g_K = 36``, ``g_L = 0.3 mS/cm^2``, ``E_Na = 50``, ``E_K = -77``, ``E_L = -54.387 mV``;
``I_ext`` in uA/cm^2, time in ms.  ``alpha_m`` and ``alpha_n`` have removable singularities
at ``V = -40`` and ``V = -55`` mV; they are evaluated as ``u / (1 - exp(-u))`` with a
series near ``u = 0`` (no 0/0, finite gradients).

Regimes under a constant current (these parameters): rest at -65.0 mV for ``I_ext = 0``;
repetitive (tonic) spiking for ``I_ext`` above ~6.3 (coexisting with a stable rest up to
the subcritical Hopf point ~9.8); the default ``I_ext = 10`` fires regularly with an
interspike interval of 14.64 ms (~68 Hz), spikes peaking at ~30.4 mV and an
after-hyperpolarisation to ~-74.9 mV on the limit cycle (measured in
``tests/test_hodgkin_huxley.py``; an isolated spike from rest overshoots further, ~+45 mV).
The current is constant: the dynamics are autonomous, with a stable limit cycle, so
interspike intervals are regular (no noise: ``rhs`` stays a deterministic vector field
with an analytic divergence).

Phase-space divergence (sum of the diagonal partial derivatives)::

    div f = -(g_Na m^3 h + g_K n^4 + g_L) / C_m - (alpha_m + beta_m) - (alpha_h + beta_h) - (alpha_n + beta_n)

in 1/ms, state dependent (strongly negative during a spike).

States are ``(B, 4)`` tensors ``(V [mV], m, h, n)``; ``observe`` returns them unchanged.
Stiffness: the fastest time scale is the membrane time constant during the upstroke,
``C_m / (g_Na m^3 h + ...) ~ 0.02-0.03 ms``.  RK4 is stable up to ``dt ~ 0.045 ms`` and
blows up at 0.05 (measured from random initial conditions), so ``dt > 0.04`` is refused.
The default ``dt = 0.025 ms`` is accurate: the interspike interval at ``I_ext = 10`` is
14.63621 ms for every ``dt`` in {0.001, 0.005, 0.01, 0.025} (relative differences < 1e-6),
spike peaks agree within 0.02%.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sns.systems.base import Preset, check_positive
from sns.systems.lorenz import _ODESystem

PARAM_UNITS = {
    "i_ext": "uA/cm^2",
    "c_m": "uF/cm^2",
    "g_na": "mS/cm^2",
    "g_k": "mS/cm^2",
    "g_l": "mS/cm^2",
    "e_na": "mV",
    "e_k": "mV",
    "e_l": "mV",
    "dt": "ms",
}


def _exprel(u: Tensor) -> Tensor:
    """``u / (1 - exp(-u))``, finite at ``u = 0`` (value 1) with finite gradients.

    Near 0 the series ``1 + u/2 + u^2/12`` (error < 1e-14 for ``|u| < 1e-4``); elsewhere
    ``u / -expm1(-u)``.  Both branches are evaluated on safe inputs so that autograd never
    meets 0/0.
    """
    small = u.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, 1.0 + u / 2.0 + u * u / 12.0, safe / -torch.expm1(-safe))


def rates(v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Opening/closing rates ``(alpha_m, beta_m, alpha_h, beta_h, alpha_n, beta_n)`` in 1/ms at ``V`` [mV]."""
    alpha_m = _exprel((v + 40.0) / 10.0)  # = 0.1 (V + 40) / (1 - exp(-(V + 40) / 10))
    beta_m = 4.0 * torch.exp(-(v + 65.0) / 18.0)
    alpha_h = 0.07 * torch.exp(-(v + 65.0) / 20.0)
    beta_h = torch.sigmoid((v + 35.0) / 10.0)  # = 1 / (1 + exp(-(V + 35) / 10))
    alpha_n = 0.1 * _exprel((v + 55.0) / 10.0)  # = 0.01 (V + 55) / (1 - exp(-(V + 55) / 10))
    beta_n = 0.125 * torch.exp(-(v + 65.0) / 80.0)
    return alpha_m, beta_m, alpha_h, beta_h, alpha_n, beta_n


class HodgkinHuxley(_ODESystem):
    """The Hodgkin-Huxley neuron under a constant current (see module docstring).

    Args:
        i_ext: injected current ``I_ext`` [uA/cm^2] (default 10: tonic spiking).
        c_m: membrane capacitance [uF/cm^2].
        g_na, g_k, g_l: maximal conductances [mS/cm^2].
        e_na, e_k, e_l: reversal potentials [mV].
        dt: RK4 step [ms].
    """

    name = "hodgkin_huxley"
    dim = 4
    field_names = ("state",)
    field_units = ("V: mV; m, h, n: 1",)

    def __init__(
        self,
        i_ext: float = 10.0,
        c_m: float = 1.0,
        g_na: float = 120.0,
        g_k: float = 36.0,
        g_l: float = 0.3,
        e_na: float = 50.0,
        e_k: float = -77.0,
        e_l: float = -54.387,
        dt: float = 0.025,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dt, dtype, device)
        check_positive("c_m", c_m)
        for name, value in (("g_na", g_na), ("g_k", g_k), ("g_l", g_l)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 (a conductance, mS/cm^2), got {value!r}")
        if dt > 0.04:
            raise ValueError(f"dt = {dt!r} ms is too large for RK4 on Hodgkin-Huxley (unstable near 0.05 ms: the "
                             "spike upstroke has a time constant of ~0.02-0.03 ms); use dt <= 0.04 ms (default 0.025)")
        self.i_ext, self.c_m = float(i_ext), float(c_m)
        self.g_na, self.g_k, self.g_l = float(g_na), float(g_k), float(g_l)
        self.e_na, self.e_k, self.e_l = float(e_na), float(e_k), float(e_l)

    @property
    def params(self) -> dict[str, Any]:
        return {"i_ext": self.i_ext, "c_m": self.c_m, "g_na": self.g_na, "g_k": self.g_k, "g_l": self.g_l,
                "e_na": self.e_na, "e_k": self.e_k, "e_l": self.e_l, "dt": self.dt}

    def rhs(self, u: Tensor) -> Tensor:
        """``d(V, m, h, n)/dt`` of states ``(B, 4)``: mV/ms and 1/ms."""
        v, m, h, n = u.unbind(-1)
        a_m, b_m, a_h, b_h, a_n, b_n = rates(v)
        i_ion = (self.g_na * m**3 * h * (v - self.e_na) + self.g_k * n**4 * (v - self.e_k)
                 + self.g_l * (v - self.e_l))
        dv = (self.i_ext - i_ion) / self.c_m
        return torch.stack((dv, a_m * (1 - m) - b_m * m, a_h * (1 - h) - b_h * h, a_n * (1 - n) - b_n * n), dim=-1)

    def divergence(self, u: Tensor) -> Tensor:
        """Analytic ``tr(d rhs / du)`` per sample, shape ``(B,)``, 1/ms (module docstring)."""
        v, m, h, n = u.unbind(-1)
        a_m, b_m, a_h, b_h, a_n, b_n = rates(v)
        g = self.g_na * m**3 * h + self.g_k * n**4 + self.g_l
        return -g / self.c_m - (a_m + b_m) - (a_h + b_h) - (a_n + b_n)

    def steady_gates(self, v: Tensor) -> Tensor:
        """Steady-state gates ``x_inf(V) = alpha_x / (alpha_x + beta_x)``, ``(..., 3)`` for ``(m, h, n)``."""
        a_m, b_m, a_h, b_h, a_n, b_n = rates(v)
        return torch.stack((a_m / (a_m + b_m), a_h / (a_h + b_h), a_n / (a_n + b_n)), dim=-1)

    def initial_condition(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Random states off the resting point: ``V ~ U(-80, 20)`` mV, gates at their steady
        state ``x_inf(V)`` plus ``U(-0.1, 0.1)``, clipped to [0, 1].

        Under the default current they reach the spiking limit cycle within one or two spikes
        (spin up ~50 ms before use).  States near the (barely unstable, at ``I_ext = 10``) rest
        would spiral out only slowly, which is why ``V`` is not drawn around -65 mV alone.
        """
        r = torch.rand((batch, 4), generator=generator, dtype=torch.float64)
        v = -80.0 + 100.0 * r[:, 0]
        gates = (self.steady_gates(v) + 0.2 * (r[:, 1:] - 0.5)).clamp(0.0, 1.0)
        return torch.cat((v[:, None], gates), dim=1).to(self.device, self.dtype)


PRESETS = {
    # The SNS paper does not use Hodgkin-Huxley (seed 000 does); both presets are CPU-sized.
    # Frames every 0.25 ms (10 solver steps): ~58 frames per interspike interval, ~4 per spike;
    # 50 ms spin-up (random initial conditions reach the limit cycle within ~30 ms).
    "paper": Preset(
        system={"i_ext": 10.0, "dt": 0.025},
        spinup_steps=2000,
        save_every=10,
        n_frames=8000,
        trajectories={"train": 64, "valid": 8, "test": 8},
        description="Hodgkin-Huxley, I_ext 10 uA/cm^2, dt 0.025 ms, saved every 0.25 ms, 2000 ms per trajectory",
    ),
    "cpu": Preset(
        system={"i_ext": 10.0, "dt": 0.025},
        spinup_steps=2000,
        save_every=10,
        n_frames=2000,
        trajectories={"train": 16, "valid": 4, "test": 4},
        description="Hodgkin-Huxley, I_ext 10 uA/cm^2, dt 0.025 ms, saved every 0.25 ms, 500 ms per trajectory",
    ),
}
PRESETS_HODGKIN_HUXLEY = PRESETS
