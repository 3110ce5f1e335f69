"""Neural ODE generator of seed 000 ("Step-by-Step Guide", steps 2-3).

A neural network is the vector field of an ODE on ``(B, D)`` states::

    dx/dt = f_theta(x, t),     f_theta = MLP([x, gamma(t)])   (tanh, 2-3 hidden layers of 128-256)

integrated by torchdiffeq's adaptive Dormand-Prince 5(4) (``method="dopri5"``, tolerances
``rtol``/``atol``), optionally with the adjoint method (``adjoint=True``: memory constant
in the number of solver steps, one extra backward solve; Chen et al., NeurIPS 2018).

Time.  ``t`` is the time since the start of the current integration (a training window,
one :meth:`NeuralODE.forward` step, or a generated trace), in the system's time unit (the
unit of ``dt``).  ``gamma(t)`` is a NeRF-style sinusoidal encoding with ``time_features``
entries (even)::

    gamma(t) = (sin(2^k pi t / time_scale), cos(2^k pi t / time_scale)),   k = 0 .. time_features/2 - 1

``time_features = 0`` (the default) drops ``t``: the field is autonomous, which is what
an autonomous system (Lorenz-63, Hodgkin-Huxley) has.  With ``t`` the model is tied to
the window start: a stepper restarts ``t`` at 0 every step, a long generated trace feeds
times never seen in training (seed 000 recommends the encoding "to improve gradient
flow"; it is an option here, off by default, for that reason).

Interfaces: ``forward(x)`` advances by one saved interval ``dt`` (a *stepper*, for
:func:`sns.rollout.rollout`), :meth:`vector_field` (for the divergence regularizer,
:mod:`sns.losses.divergence`), :meth:`trajectory` (one integration over a time grid, for
training on windows) and :meth:`generate` (synthetic traces).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["NeuralODE", "SinusoidalTimeEncoding"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU, "softplus": nn.Softplus}
#: torchdiffeq solvers accepted here (adaptive first, then fixed-step ones, which need options.step_size)
METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2", "rk4", "midpoint", "euler")


class SinusoidalTimeEncoding(nn.Module):
    """``gamma(t)``: ``n_features`` (even) sinusoids of ``t`` at frequencies ``2^k pi / time_scale``.

    Input ``t``: a scalar (float or 0-d tensor) or ``(B,)``; output ``(B, n_features)``."""

    def __init__(self, n_features: int, time_scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(n_features, int) or n_features < 0 or n_features % 2:
            raise ValueError(f"time_features must be an even integer >= 0, got {n_features!r}")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale!r}")
        freqs = math.pi * 2.0 ** torch.arange(n_features // 2, dtype=torch.float64) / time_scale
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.n_features = n_features

    def forward(self, t: Tensor | float, batch: int) -> Tensor:
        t = torch.as_tensor(t, dtype=self.freqs.dtype, device=self.freqs.device)
        t = t.expand(batch) if t.ndim == 0 else t
        arg = t[:, None] * self.freqs
        return torch.cat((arg.sin(), arg.cos()), -1)


class NeuralODE(nn.Module):
    """``dx/dt = f_theta(x, t)`` with an MLP field, integrated by torchdiffeq (module docstring).

    Args:
        dim: D, the state dimension.
        hidden: units per hidden layer (seed: 128-256).
        depth: hidden layers (seed: 2-3).
        activation: ``tanh`` (seed), ``silu``, ``gelu`` or ``softplus`` (smooth: the
            divergence regularizer differentiates the field).
        time_features: entries of the sinusoidal time encoding (even; 0: autonomous).
        time_scale: time of the slowest sinusoid's half period, in units of ``dt``'s unit.
        dt: time between saved frames (one :meth:`forward` step), in the system's time unit.
        method: torchdiffeq solver (``METHODS``; default ``dopri5``).
        rtol, atol: tolerances of the adaptive solvers.
        step_size: step of the fixed-step solvers (default: ``dt``).
        adjoint: integrate gradients with the adjoint method (``odeint_adjoint``).
        max_num_steps: cap on the adaptive solver's steps per integration (guards
            against a stiff, diverging field during training).
        zero_init: zero the output layer (the untrained field is 0: persistence).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        depth: int = 3,
        activation: str = "tanh",
        time_features: int = 0,
        time_scale: float = 1.0,
        dt: float = 1.0,
        method: str = "dopri5",
        rtol: float = 1e-4,
        atol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = False,
        max_num_steps: int = 10_000,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("max_num_steps", max_num_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NeuralODE {name} must be a positive integer, got {value!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid choices: {sorted(_ACTIVATIONS)}")
        if method not in METHODS:
            raise ValueError(f"unknown ODE method {method!r}; valid choices: {METHODS}")
        for name, value in (("dt", dt), ("rtol", rtol), ("atol", atol)):
            if not value > 0:
                raise ValueError(f"NeuralODE {name} must be positive, got {value!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be positive or None, got {step_size!r}")
        self.dim, self.dt = dim, float(dt)
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.step_size = float(step_size) if step_size is not None else None
        self.adjoint, self.max_num_steps = bool(adjoint), int(max_num_steps)
        self.time_encoding = SinusoidalTimeEncoding(time_features, time_scale)
        widths = [dim + time_features] + [hidden] * depth + [dim]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        if zero_init:
            with torch.no_grad():
                self.net[-1].weight.zero_()
                self.net[-1].bias.zero_()
        self.nfe = 0  #: vector-field evaluations since the last reset (solver cost)
        self.last_calls: int | None = None  #: evaluations of the last forward() (sns.rollout reads it)

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"NeuralODE expects states of shape (B, {self.dim}), got {tuple(x.shape)}")

    def vector_field(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:
        """``f_theta(x, t)``: ``(B, D) -> (B, D)``, units of state per unit time."""
        self._check(x)
        self.nfe += 1
        if self.time_encoding.n_features:
            x = torch.cat((x, self.time_encoding(t, x.shape[0]).to(x.dtype)), -1)
        return self.net(x)

    def _rhs(self, t: Tensor, x: Tensor) -> Tensor:
        return self.vector_field(x, t)

    def _options(self) -> dict[str, Any]:
        if self.method in ("rk4", "midpoint", "euler"):
            return {"step_size": self.step_size or self.dt}
        return {"max_num_steps": self.max_num_steps}

    def integrate(self, x0: Tensor, t: Tensor, options: Mapping[str, Any] | None = None) -> Tensor:
        """States at the times ``t`` (1-d, increasing, ``t[0]`` = start), ``(len(t), B, D)``."""
        import torchdiffeq

        self._check(x0)
        opts = {**self._options(), **dict(options or {})}
        t = t.to(device=x0.device, dtype=x0.dtype)
        if self.adjoint:
            return torchdiffeq.odeint_adjoint(self._rhs, x0, t, rtol=self.rtol, atol=self.atol, method=self.method,
                                              options=opts, adjoint_params=tuple(self.parameters()))
        return torchdiffeq.odeint(self._rhs, x0, t, rtol=self.rtol, atol=self.atol, method=self.method, options=opts)

    def time_grid(self, n_steps: int, like: Tensor) -> Tensor:
        """``0, dt, ..., n_steps dt`` on ``like``'s device and dtype."""
        return torch.arange(n_steps + 1, device=like.device, dtype=like.dtype) * self.dt

    def forward(self, x: Tensor) -> Tensor:
        """One saved interval: ``x(t + dt)`` from ``x(t)``, ``(B, D) -> (B, D)`` (``t`` restarts at 0)."""
        n0 = self.nfe
        out = self.integrate(x, self.time_grid(1, x))[-1]
        self.last_calls = self.nfe - n0
        return out

    def trajectory(self, x0: Tensor, n_steps: int) -> Tensor:
        """One integration over ``0, dt, ..., n_steps dt``: ``(B, n_steps + 1, D)`` (index 0 is ``x0``)."""
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        return self.integrate(x0, self.time_grid(n_steps, x0)).transpose(0, 1)

    @torch.no_grad()
    def generate(self, x0: Tensor, n_steps: int, chunk: int | None = None) -> Tensor:
        """Synthetic traces ``(B, n_steps + 1, D)`` from initial conditions ``x0`` ``(B, D)``.

        Seed 000, step 3: draw ``x0`` from the data (e.g. random frames of the training
        set) and integrate the learned field forward.  ``chunk`` integrates ``chunk``
        intervals at a time, restarting the solver (and ``t``) at each chunk boundary:
        the adaptive step does not carry over, which bounds one integration's cost.
        Non-finite states propagate (a diverged trace is NaN/inf from then on)."""
        if chunk is None:
            return self.trajectory(x0, n_steps)
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
        parts, x, done = [x0[:, None]], x0, 0
        while done < n_steps:
            k = min(chunk, n_steps - done)
            seg = self.trajectory(x, k)
            parts.append(seg[:, 1:])
            x, done = seg[:, -1], done + k
        return torch.cat(parts, 1)
