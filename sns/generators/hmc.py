"""Hamiltonian Monte Carlo with a learned potential (seed 000's third generator).

For a conservative system observed in phase space, states ``x = (q, p)`` with ``d`` positions
``q`` first and ``d`` momenta ``p`` last (unit mass: ``p = dq/dt``), we learn a potential
``U_theta(q)`` (:class:`LearnedPotential`, a small tanh MLP of ``q``) such that Hamilton's
equations of ``H_theta(q, p) = |p|^2 / 2 + U_theta(q)``, i.e. ``dq/dt = p``,
``dp/dt = -grad U_theta(q)``, reproduce the observed trajectories, and then generate traces.

Fit (:func:`fit_potential`), two stages:

1. *Acceleration matching* (cheap, default 1500 Adam steps): ``-grad U_theta(q_t)`` is fitted
   to the acceleration ``dp/dt`` of the data, estimated by the fourth-order central difference
   ``(-p_{t+2} + 8 p_{t+1} - 8 p_{t-1} + p_{t-2}) / (12 dt)`` of the observed momenta (error
   ``dt^4 p^(5) / 30``: ~3e-6 relative for Henon-Heiles frames of 0.1; three-point
   differences for series of 3-4 frames).  Loss: the mean squared residual divided by the
   variance of the target accelerations (1 = predicting zero).
2. *Trajectory matching* (optional, ``shoot_steps`` Adam steps, default 0): from observed states
   ``x_t``, integrate ``horizon`` frames with the trace integrator (``substeps`` steps per
   frame) and match the observed ``x_{t+1..t+horizon}`` (mean squared error per coordinate,
   divided by the data's variance per coordinate).  This corrects the finite-difference bias
   when frames are coarse; it also absorbs the integrator's own ``O(h^2)`` error into
   ``U_theta`` (a "modified potential"), which makes generated traces closer to the data
   and the potential itself very slightly further from the true one.  It costs ~``horizon *
   substeps`` times more per step than stage 1.  Measured on Henon-Heiles at E = 1/8 (16
   orbits, ``benchmarks/hmc_henon_heiles.py``): with frames of 0.1 stage 1 alone matches the
   potential to 0.19% RMS of its spread, so stage 2 is off by default; with frames of 0.5 the
   differences are biased (0.67%) and 150 stage-2 steps bring it to 0.22% (at ~25x the cost
   of a stage-1 step).

Sampling (:func:`hmc_sample`): the target of the initial conditions is the canonical density
restricted to the data's energy range and position box::

    pi(q, p)  ~  exp(-H_theta(q, p) / T) * 1[E_lo <= H_theta <= E_hi] * 1[q in box]

* **Temperature** ``T = mean_i <p_i^2>`` over the data (equipartition: under ``exp(-H/T)`` with
  unit masses every momentum component has variance ``T``), so the canonical weight has the
  data's kinetic energy scale.
* **Energy range** ``[E_lo, E_hi]`` = ``[min, max]`` of ``H_theta`` over the data states: for
  data at one energy (Henon-Heiles) the target becomes the microcanonical shell of the
  learned Hamiltonian, thickened by the fit's own spread of ``H_theta`` on the data; for data
  spanning energies ``T`` weights the range.  The restriction keeps the chains where the
  potential was learned: a learned potential is untrusted (and may be unbounded below) away
  from the data.
* **Box**: each position coordinate within the data's ``[min, max]`` widened by
  ``box_margin`` (default 5%) of its range on each side; same reason.

Each HMC iteration is (1) an exact Gibbs refresh of ``p | q``: the kinetic energy
``K = |p|^2/2`` of ``N(0, T I_d)`` is Gamma(d/2, T); it is drawn from that law truncated to
``[E_lo - U(q), E_hi - U(q)]`` by inverting the regularised incomplete gamma function
(bisection on ``torch.special.gammaincc``), the direction uniformly; without a range
``p ~ N(0, T I)``; (2) ``n_leapfrog`` leapfrog steps of size ``step_size`` (jittered by
+-``step_jitter`` per iteration against periodic orbits) and a Metropolis test with
``min(1, exp(-(H' - H)/T))``, rejecting proposals that leave the range or the box.  Leapfrog
is reversible and volume-preserving, so this is a valid Metropolis-Hastings chain for
``pi``.  Chains start at random data states (inside the support), one chain per initial
condition; the final states after ``n_iter`` iterations are the initial conditions.

Traces (:meth:`HMCGenerator.generate`): leapfrog of ``H_theta`` with ``substeps`` steps per
data frame (``frame_dt / substeps``), one frame kept per ``substeps``.  The leapfrog map is
symplectic: ``det d(x_{n+1}) / d(x_n) = 1`` exactly and the vector field ``(p, -grad U)`` has
divergence exactly 0, the seed's "naturally preserves volume"; the learned energy is
conserved to ``O(h^2)`` without drift.

Defaults and why.  They scale with the dynamical time scale
``tau = sqrt(<|q - <q>|^2> / <|grad U_theta|^2>)`` over the data (``1/omega`` for a harmonic
potential; ~1 for Henon-Heiles), not with the data's frame interval: ``step_size = 0.05 tau`` and
``n_leapfrog = 20`` (a trajectory of length ``tau``, ~1/6 of an oscillation: long enough to move
the positions by their spread, short of the U-turn); ``n_iter = 50`` (the chains start at
data states, inside the support, so no long burn-in is needed); trace steps ``h <= 0.01 tau``.
Measured on Henon-Heiles at E = 1/8 (frames of 0.1, ``tau = 1.16``: step 0.058, 9 substeps):
acceptance 0.90 (16 x 1000 frames of data) and 0.97 (the tests' 4 x 150), W1 per coordinate
between 64 initial conditions and the data 0.08-0.19 data std against 0.07-0.17 for 64 random
data states, learned energy conserved to 8e-5 T over 500 frames.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sns.systems.symplectic import INTEGRATORS, integrate

__all__ = [
    "HMCGenerator",
    "HMCResult",
    "LearnedPotential",
    "fit_potential",
    "hamiltonian",
    "hmc_sample",
    "potential_error",
    "sample_truncated_momenta",
]

log = logging.getLogger(__name__)

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "softplus": nn.Softplus, "silu": nn.SiLU}


# ----------------------------------------------------------------------------- the potential


class LearnedPotential(nn.Module):
    """``U_theta(q) = energy_scale * MLP((q - q_offset) / q_scale)``, a scalar per position.

    Args:
        dim: number of positions ``d``.
        hidden, depth: units per hidden layer and hidden layers of the MLP.
        activation: ``tanh`` (default), ``softplus`` or ``silu`` (smooth: forces are its gradient
            and the fit differentiates them again).
        q_offset, q_scale: input standardisation (length ``d``; default 0 and 1).
        energy_scale: output scale (the fit uses the temperature ``T``, so the MLP's output is O(1)).
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, activation: str = "tanh",
                 q_offset: list[float] | None = None, q_scale: list[float] | None = None,
                 energy_scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(hidden, int) or hidden < 1 or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"hidden and depth must be positive integers, got {hidden!r}, {depth!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid choices: {sorted(_ACTIVATIONS)}")
        if not energy_scale > 0:
            raise ValueError(f"energy_scale must be positive, got {energy_scale!r}")
        q_offset = [0.0] * dim if q_offset is None else [float(v) for v in q_offset]
        q_scale = [1.0] * dim if q_scale is None else [float(v) for v in q_scale]
        if len(q_offset) != dim or len(q_scale) != dim or min(q_scale) <= 0:
            raise ValueError(f"q_offset and q_scale need {dim} entries (scales > 0), got {q_offset}, {q_scale}")
        self.hparams = {"dim": dim, "hidden": hidden, "depth": depth, "activation": activation,
                        "q_offset": q_offset, "q_scale": q_scale, "energy_scale": float(energy_scale)}
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("q_offset", torch.tensor(q_offset))
        self.register_buffer("q_scale", torch.tensor(q_scale))
        self.energy_scale = float(energy_scale)

    @property
    def dim(self) -> int:
        return self.hparams["dim"]

    def forward(self, q: Tensor) -> Tensor:
        """``U_theta`` of positions ``(B, d)``; shape ``(B,)``."""
        return self.energy_scale * self.net((q - self.q_offset) / self.q_scale).squeeze(-1)

    def grad(self, q: Tensor) -> Tensor:
        """``dU_theta/dq`` of positions ``(B, d)``, by an explicit backward pass through the MLP.

        Plain tensor operations (4-5x faster than ``torch.func.grad`` at these sizes, checked
        against it in the tests): differentiable w.r.t. the parameters (the fit uses that),
        composes with ``torch.func`` (``jacrev``, ``vmap``) and works inside ``torch.no_grad``."""
        h = (q - self.q_offset) / self.q_scale
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        act = self.hparams["activation"]
        derivs = []
        for lin in linears[:-1]:
            z = nn.functional.linear(h, lin.weight, lin.bias)
            if act == "tanh":
                h = torch.tanh(z)
                derivs.append(1.0 - h * h)
            elif act == "softplus":
                h = nn.functional.softplus(z)
                derivs.append(torch.sigmoid(z))
            else:  # silu
                s = torch.sigmoid(z)
                h = z * s
                derivs.append(s * (1.0 + z * (1.0 - s)))
        g = linears[-1].weight.expand(q.shape[:-1] + linears[-1].weight.shape[-1:])
        for lin, dv in zip(reversed(linears[:-1]), reversed(derivs)):
            g = (g * dv) @ lin.weight
        return g * (self.energy_scale / self.q_scale)


def hamiltonian(potential: Callable[[Tensor], Tensor], q: Tensor, p: Tensor) -> Tensor:
    """``|p|^2 / 2 + U(q)`` per sample, shape ``(B,)``."""
    return 0.5 * (p * p).sum(-1) + potential(q)


def _grad_of(potential: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    if isinstance(potential, LearnedPotential):
        return potential.grad
    return torch.func.grad(lambda q: potential(q).sum())


# ----------------------------------------------------------------------------- fitting


def _split_states(states: Tensor, n_positions: int | None) -> int:
    if states.ndim != 3:
        raise ValueError(f"states must have shape (trajectories, time, 2 d), got {tuple(states.shape)}")
    D = states.shape[-1]
    d = D // 2 if n_positions is None else int(n_positions)
    if 2 * d != D:
        raise ValueError(f"states need d positions followed by d momenta (2 d = {D} entries); "
                         f"got n_positions={n_positions!r}")
    return d


def _fd_acceleration(p: Tensor, dt: float) -> tuple[Tensor, int]:
    """Central differences of ``p (N, T, d)`` along time: ``(accelerations (N, T - 2 m, d), m)``."""
    T = p.shape[1]
    if T >= 5:
        a = (-p[:, 4:] + 8 * p[:, 3:-1] - 8 * p[:, 1:-3] + p[:, :-4]) / (12 * dt)
        return a, 2
    if T >= 3:
        return (p[:, 2:] - p[:, :-2]) / (2 * dt), 1
    raise ValueError(f"need at least 3 frames per trajectory to estimate accelerations, got {T}")


def fit_potential(
    states: Tensor | np.ndarray,
    frame_dt: float,
    *,
    n_positions: int | None = None,
    hidden: int = 64,
    depth: int = 2,
    activation: str = "tanh",
    accel_steps: int = 1500,
    shoot_steps: int = 0,
    horizon: int = 5,
    substeps: int = 10,
    integrator: str = "leapfrog",
    lr: float = 3e-3,
    batch_size: int = 1024,
    shoot_batch_size: int = 256,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    log_every: int = 500,
) -> tuple[LearnedPotential, dict[str, Any]]:
    """Fit ``U_theta`` to trajectories ``states`` ``(N, T, 2 d)`` saved every ``frame_dt``.

    Stages and losses are in the module docstring.  Adam with learning rate ``lr``, cosine
    decay to ``lr / 20`` within each stage, minibatches of ``batch_size`` points (stage 1) or
    ``shoot_batch_size`` windows (stage 2).

    Returns ``(potential, info)``; ``info`` holds the final loss of each stage
    (``accel_loss``: normalised acceleration residual; ``shoot_loss``), the temperature ``T``
    used as the energy scale, and the wall time.
    """
    if not frame_dt > 0:
        raise ValueError(f"frame_dt must be positive, got {frame_dt!r}")
    for name, v, lo in (("accel_steps", accel_steps, 0), ("shoot_steps", shoot_steps, 0),
                        ("horizon", horizon, 1), ("substeps", substeps, 1), ("batch_size", batch_size, 1),
                        ("shoot_batch_size", shoot_batch_size, 1)):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; valid choices: {sorted(INTEGRATORS)}")
    x = torch.as_tensor(np.asarray(states) if not isinstance(states, Tensor) else states).to(dtype)
    d = _split_states(x, n_positions)
    if not torch.isfinite(x).all():
        raise ValueError("states contain non-finite values")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    q, p = x[..., :d], x[..., d:]
    temperature = float((p * p).mean())
    qf = q.reshape(-1, d)
    pot = LearnedPotential(d, hidden, depth, activation, q_offset=qf.mean(0).tolist(),
                           q_scale=qf.std(0).clamp_min(1e-12).tolist(), energy_scale=temperature).to(dtype)
    info: dict[str, Any] = {"temperature": temperature, "accel_loss": None, "shoot_loss": None}

    def run(n_steps: int, loss_fn: Callable[[Tensor], Tensor], n_items: int, stage: str, batch: int) -> float:
        opt = torch.optim.Adam(pot.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(n_steps, 1), eta_min=lr / 20)
        ema = None
        for step in range(n_steps):
            idx = torch.randint(n_items, (min(batch, n_items),), generator=g)
            loss = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if log_every and (step + 1) % log_every == 0:
                log.info("fit_potential %s step %d/%d loss %.3e", stage, step + 1, n_steps, ema)
        return float("nan") if ema is None else ema

    if accel_steps:
        a, m = _fd_acceleration(p, frame_dt)
        qa = q[:, m:q.shape[1] - m].reshape(-1, d)
        a = a.reshape(-1, d)
        a_var = float(a.var(0).sum() / d) or 1.0
        info["accel_loss"] = run(int(accel_steps),
                                 lambda idx: ((-pot.grad(qa[idx]) - a[idx]) ** 2).mean() / a_var,
                                 qa.shape[0], "accel", batch_size)
        with torch.no_grad():
            info["accel_loss"] = float(((-pot.grad(qa) - a) ** 2).mean() / a_var)
    if shoot_steps:
        N, T = x.shape[:2]
        if T <= horizon:
            raise ValueError(f"horizon {horizon} needs trajectories of more than {horizon} frames, got {T}")
        starts = torch.stack(torch.meshgrid(torch.arange(N), torch.arange(T - horizon), indexing="ij"), -1).reshape(-1, 2)
        var = x.reshape(-1, 2 * d).var(0).clamp_min(1e-30)
        h = frame_dt / substeps

        def shoot_loss(idx: Tensor) -> Tensor:
            i, t = starts[idx, 0], starts[idx, 1]
            qs, ps = q[i, t], p[i, t]
            err = 0.0
            for k in range(1, horizon + 1):
                qs, ps = integrate(integrator, qs, ps, pot.grad, h, substeps)
                err = err + (((torch.cat((qs, ps), -1) - x[i, t + k]) ** 2) / var).mean()
            return err / horizon

        info["shoot_loss"] = run(int(shoot_steps), shoot_loss, starts.shape[0], "shoot", shoot_batch_size)
    info["fit_seconds"] = time.perf_counter() - t0
    log.info("fit_potential: T %.4g, accel loss %s, shoot loss %s, %.1f s", temperature, info["accel_loss"],
             info["shoot_loss"], info["fit_seconds"])
    return pot, info


def potential_error(potential: Callable[[Tensor], Tensor], reference: Callable[[Tensor], Tensor],
                    q: Tensor) -> dict[str, float]:
    """Error of ``potential`` against ``reference`` up to a constant, over positions ``q (B, d)``.

    The constant is the mean difference over ``q``.  Returns ``rms`` and ``max`` of the
    aligned difference, ``rel_rms`` = rms / std of the reference over ``q``, ``rel_max``
    = max / (max - min of the reference over ``q``), and ``offset``.
    """
    with torch.no_grad():
        u, r = potential(q), reference(q)
        diff = u - r
        c = diff.mean()
        e = diff - c
        rms, mx = float(e.pow(2).mean().sqrt()), float(e.abs().max())
        return {"rms": rms, "max": mx, "rel_rms": rms / float(r.std()), "rel_max": mx / float(r.max() - r.min()),
                "offset": float(c)}


# ----------------------------------------------------------------------------- HMC


@dataclass
class HMCResult:
    """What :func:`hmc_sample` returns."""

    q: Tensor  #: final positions ``(B, d)``
    p: Tensor  #: final momenta ``(B, d)`` (freshly refreshed after the last Metropolis test)
    acceptance_rate: float  #: accepted / proposed over all chains and iterations
    acceptance_per_iter: Tensor  #: ``(n_iter,)`` acceptance over chains per iteration
    energy: Tensor  #: ``(n_iter, B)`` H after each iteration
    samples: Tensor | None = None  #: ``(n_kept, B, 2 d)`` states after the kept iterations
    info: dict[str, Any] = field(default_factory=dict)


def sample_truncated_momenta(q_potential: Tensor, d: int, temperature: float,
                             energy_range: tuple[float, float] | None,
                             generator: torch.Generator | None = None, bisection: int = 60) -> Tensor:
    """Momenta ``(B, d)`` from ``N(0, T I)`` conditioned on ``E_lo <= |p|^2/2 + U <= E_hi``.

    ``q_potential`` is ``U(q)`` per sample ``(B,)``.  The kinetic energy ``K`` is Gamma(d/2,
    scale T) truncated to ``[max(0, E_lo - U), E_hi - U]`` (sampled by inverting the
    survival function ``gammaincc(d/2, K/T)`` by bisection), the direction uniform.  Samples
    with an empty interval (``U > E_hi``) get ``K = 0``.  Without ``energy_range``: ``N(0, T I)``.
    """
    B = q_potential.shape[0]
    dt, dev = q_potential.dtype, q_potential.device
    z = torch.randn((B, d), generator=generator, dtype=torch.float64).to(dev, dt)
    if energy_range is None:
        return math.sqrt(temperature) * z
    lo_e, hi_e = energy_range
    u = q_potential.to(torch.float64)
    a = (lo_e - u).clamp_min(0.0) / temperature
    b = (hi_e - u).clamp_min(0.0) / temperature
    shape = torch.full_like(a, 0.5 * d)
    s_a, s_b = torch.special.gammaincc(shape, a), torch.special.gammaincc(shape, b)
    r = torch.rand((B,), generator=generator, dtype=torch.float64).to(dev)
    target = s_b + (s_a - s_b) * r
    lo, hi = a.clone(), b.clone()
    for _ in range(bisection):  # survival function is decreasing in K
        mid = 0.5 * (lo + hi)
        above = torch.special.gammaincc(shape, mid) > target
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    k = 0.5 * (lo + hi) * temperature
    direction = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return (torch.sqrt(2.0 * k)[:, None] * direction.to(torch.float64)).to(dt)


def _in_support(q: Tensor, h: Tensor, energy_range: tuple[float, float] | None,
                box: tuple[Tensor, Tensor] | None) -> Tensor:
    ok = torch.isfinite(h) & torch.isfinite(q).all(-1)
    if energy_range is not None:
        ok &= (h >= energy_range[0]) & (h <= energy_range[1])
    if box is not None:
        ok &= ((q >= box[0]) & (q <= box[1])).all(-1)
    return ok


def hmc_sample(
    potential: Callable[[Tensor], Tensor],
    q0: Tensor,
    *,
    temperature: float = 1.0,
    step_size: float = 0.1,
    n_leapfrog: int = 20,
    n_iter: int = 100,
    energy_range: tuple[float, float] | None = None,
    box: tuple[Tensor, Tensor] | None = None,
    step_jitter: float = 0.1,
    keep_from: int | None = None,
    generator: torch.Generator | None = None,
    grad: Callable[[Tensor], Tensor] | None = None,
) -> HMCResult:
    """Run ``B`` independent HMC chains from positions ``q0 (B, d)`` (module docstring).

    Target ``exp(-H/T)``, ``H = |p|^2/2 + potential(q)``, optionally restricted to
    ``energy_range = (E_lo, E_hi)`` and ``box = (q_min, q_max)``; ``q0`` must lie in the
    support.  ``grad`` is ``dU/dq`` (default: ``torch.func.grad`` of ``potential``).
    ``keep_from``: keep the states of iterations ``>= keep_from`` in ``samples``.
    The acceptance rate is returned and logged.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    for name, v, lo in (("n_leapfrog", n_leapfrog, 1), ("n_iter", n_iter, 1)):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not 0 <= step_jitter < 1:
        raise ValueError(f"step_jitter must be in [0, 1), got {step_jitter!r}")
    if energy_range is not None and not energy_range[0] <= energy_range[1]:
        raise ValueError(f"energy_range must be (low, high) with low <= high, got {energy_range!r}")
    if q0.ndim != 2:
        raise ValueError(f"q0 must have shape (chains, d), got {tuple(q0.shape)}")
    grad = grad or _grad_of(potential)
    if energy_range is not None:  # round-off slack: a refreshed state may sit on the range's edge
        eps = 1e-12 * (abs(energy_range[0]) + abs(energy_range[1]) + temperature)
        support_range = (energy_range[0] - eps, energy_range[1] + eps)
    else:
        support_range = None
    B, d = q0.shape
    q = q0.detach().clone()
    t0 = time.perf_counter()
    with torch.no_grad():
        u = potential(q)
        p = sample_truncated_momenta(u, d, temperature, energy_range, generator)
        h0 = 0.5 * (p * p).sum(-1) + u
        if not _in_support(q, h0, support_range, box).all():
            raise ValueError("every chain must start inside the support (energy range and box); "
                             f"{int((~_in_support(q, h0, support_range, box)).sum())} of {B} do not")
        accept_hist, energies, kept = [], [], []
        for it in range(int(n_iter)):
            jitter = 1.0 + step_jitter * (2.0 * float(torch.rand((), generator=generator, dtype=torch.float64)) - 1.0)
            h_old = 0.5 * (p * p).sum(-1) + u
            q_new, p_new = integrate("leapfrog", q, p, grad, step_size * jitter, int(n_leapfrog))
            u_new = potential(q_new)
            h_new = 0.5 * (p_new * p_new).sum(-1) + u_new
            log_alpha = -(h_new - h_old) / temperature
            r = torch.rand((B,), generator=generator, dtype=torch.float64).to(q.device, q.dtype)
            accept = _in_support(q_new, h_new, support_range, box) & (torch.log(r) < log_alpha)
            q = torch.where(accept[:, None], q_new, q)
            u = torch.where(accept, u_new, u)
            accept_hist.append(accept.to(torch.float64).mean())
            p = sample_truncated_momenta(u, d, temperature, energy_range, generator)
            energies.append(0.5 * (p * p).sum(-1) + u)
            if keep_from is not None and it >= keep_from:
                kept.append(torch.cat((q, p), -1))
    acc = torch.stack(accept_hist)
    rate = float(acc.mean())
    info = {"seconds": time.perf_counter() - t0, "step_size": step_size, "n_leapfrog": int(n_leapfrog),
            "n_iter": int(n_iter), "temperature": temperature, "chains": B}
    log.info("HMC: %d chains x %d iterations (%d leapfrog steps of %.3g): acceptance rate %.3f (%.1f s)",
             B, n_iter, n_leapfrog, step_size, rate, info["seconds"])
    return HMCResult(q=q, p=p, acceptance_rate=rate, acceptance_per_iter=acc, energy=torch.stack(energies),
                     samples=torch.stack(kept) if kept else None, info=info)


# ----------------------------------------------------------------------------- the generator


class HMCGenerator:
    """Synthetic traces from a learned potential: HMC initial conditions + leapfrog traces.

    Build with :meth:`fit` (or :meth:`from_dataset`), then :meth:`generate`.  Construction
    arguments (all plain numbers except ``potential`` and ``reference_states``):

    Args:
        potential: the learned ``U_theta``.
        frame_dt: time between frames of the data and of generated traces.
        temperature: ``T`` of the HMC target (default: from the data, see module docstring).
        energy_range: ``(E_lo, E_hi)`` of the target (``None``: unrestricted).
        box: ``(q_min, q_max)`` lists of length ``d`` (``None``: unrestricted).
        reference_states: data states ``(M, 2 d)`` the chains start from.
        step_size, n_leapfrog, n_iter, step_jitter: HMC settings (``step_size`` default
            ``0.05 tau``, with the dynamical time scale ``tau = sqrt(<|q - <q>|^2> / <|grad U|^2>)``
            over the reference states, ``1/omega`` for a harmonic potential; ``time_scale``).
        substeps: leapfrog steps per frame of a trace, ``h = frame_dt / substeps`` (default: the
            smallest number with ``h <= 0.01 tau``).
    """

    def __init__(self, potential: LearnedPotential, frame_dt: float, temperature: float,
                 energy_range: tuple[float, float] | None, box: tuple[list[float], list[float]] | None,
                 reference_states: Tensor, step_size: float | None = None, n_leapfrog: int = 20,
                 n_iter: int = 50, step_jitter: float = 0.1, substeps: int | None = None) -> None:
        if not frame_dt > 0:
            raise ValueError(f"frame_dt must be positive, got {frame_dt!r}")
        if substeps is not None and (int(substeps) != substeps or substeps < 1):
            raise ValueError(f"substeps must be an integer >= 1, got {substeps!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        d = potential.dim
        if reference_states.ndim != 2 or reference_states.shape[1] != 2 * d or reference_states.shape[0] < 1:
            raise ValueError(f"reference_states must have shape (M >= 1, {2 * d}), got {tuple(reference_states.shape)}")
        self.potential = potential
        self.d = d
        self.frame_dt = float(frame_dt)
        self.temperature = float(temperature)
        self.energy_range = None if energy_range is None else (float(energy_range[0]), float(energy_range[1]))
        self.box = None if box is None else ([float(v) for v in box[0]], [float(v) for v in box[1]])
        self.reference_states = reference_states.detach().to(potential.q_offset.dtype)
        with torch.no_grad():
            q = self.reference_states[:, :d]
            force2 = potential.grad(q).pow(2).sum(-1).mean()
            spread2 = (q - q.mean(0)).pow(2).sum(-1).mean()
        #: dynamical time scale sqrt(<|q - <q>|^2> / <|grad U|^2>): 1/omega for a harmonic potential
        self.time_scale = float(torch.sqrt(spread2 / force2.clamp_min(1e-300)))
        self.step_size = float(step_size) if step_size is not None else 0.05 * self.time_scale
        self.n_leapfrog, self.n_iter = int(n_leapfrog), int(n_iter)
        self.step_jitter = float(step_jitter)
        self.substeps = int(substeps) if substeps is not None else max(1, math.ceil(self.frame_dt / (0.01 * self.time_scale)))
        self.fit_info: dict[str, Any] = {}

    # ---- construction

    @classmethod
    def fit(cls, states: Tensor | np.ndarray, frame_dt: float, *, n_positions: int | None = None,
            box_margin: float = 0.05, max_reference: int = 20000, seed: int = 0,
            fit_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> HMCGenerator:
        """Fit ``U_theta`` to ``states (N, T, 2 d)`` (:func:`fit_potential` with ``fit_kwargs``) and
        set the HMC target from the data: ``T = <p_i^2>``, energy range ``[min, max]`` of
        ``H_theta`` over the data, box = the data's position range widened by ``box_margin``
        (range and box over the reference states: all states, or ``max_reference`` random ones).
        ``kwargs`` go to the constructor (``step_size``, ``n_leapfrog``, ...)."""
        pot, info = fit_potential(states, frame_dt, n_positions=n_positions, seed=seed, **(fit_kwargs or {}))
        dtype = pot.q_offset.dtype
        x = torch.as_tensor(np.asarray(states) if not isinstance(states, Tensor) else states).to(dtype)
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > max_reference:
            idx = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:max_reference]
            flat = flat[idx]
        d = pot.dim
        q, p = flat[:, :d], flat[:, d:]
        with torch.no_grad():
            h = hamiltonian(pot, q, p)
        q_min, q_max = q.min(0).values, q.max(0).values
        pad = box_margin * (q_max - q_min)
        gen = cls(pot, frame_dt, temperature=info["temperature"], energy_range=(float(h.min()), float(h.max())),
                  box=((q_min - pad).tolist(), (q_max + pad).tolist()), reference_states=flat, **kwargs)
        gen.fit_info = info
        log.info("HMCGenerator: T %.4g, energy range [%.6g, %.6g], box %s", gen.temperature,
                 *gen.energy_range, gen.box)
        return gen

    @classmethod
    def from_dataset(cls, directory: str | os.PathLike, split: str = "train",
                     max_trajectories: int | None = None, **kwargs: Any) -> HMCGenerator:
        """:meth:`fit` on an ``sns`` data set (physical units; frame interval from its time coordinate)."""
        from sns.data.io import open_dataset

        ds = open_dataset(directory, split)
        name = ds.attrs["variable"]
        var = ds[name]
        if max_trajectories is not None:
            var = var.isel(trajectory=slice(0, int(max_trajectories)))
        t = np.asarray(ds["time"].values, dtype=np.float64)
        if t.size < 2:
            raise ValueError(f"{directory}: need at least 2 frames to know the frame interval")
        return cls.fit(np.asarray(var.values, dtype=np.float64), float(t[1] - t[0]), **kwargs)

    # ---- dynamics

    def hamiltonian(self, x: Tensor) -> Tensor:
        """``H_theta`` of states ``(B, 2 d)``."""
        return hamiltonian(self.potential, x[..., :self.d], x[..., self.d:])

    def vector_field(self, x: Tensor) -> Tensor:
        """Hamilton's vector field ``(p, -grad U_theta(q))`` of states ``(B, 2 d)``: divergence 0."""
        return torch.cat((x[..., self.d:], -self.potential.grad(x[..., :self.d])), -1)

    def step(self, x: Tensor) -> Tensor:
        """One frame (``substeps`` leapfrog steps) of states ``(B, 2 d)``: a stepper for rollouts."""
        q, p = integrate("leapfrog", x[..., :self.d], x[..., self.d:], self.potential.grad,
                         self.frame_dt / self.substeps, self.substeps)
        return torch.cat((q, p), -1)

    __call__ = step

    # ---- sampling

    def _box(self) -> tuple[Tensor, Tensor] | None:
        if self.box is None:
            return None
        dt = self.reference_states.dtype
        return torch.tensor(self.box[0], dtype=dt), torch.tensor(self.box[1], dtype=dt)

    def sample_initial_conditions(self, n: int, seed: int = 0) -> tuple[Tensor, HMCResult]:
        """``n`` states ``(n, 2 d)`` from the HMC target (one chain each, started at random data states)."""
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randint(self.reference_states.shape[0], (int(n),), generator=g)
        q0 = self.reference_states[idx, :self.d]
        res = hmc_sample(self.potential, q0, temperature=self.temperature, step_size=self.step_size,
                         n_leapfrog=self.n_leapfrog, n_iter=self.n_iter, energy_range=self.energy_range,
                         box=self._box(), step_jitter=self.step_jitter, generator=g, grad=self.potential.grad)
        return torch.cat((res.q, res.p), -1), res

    def generate(self, n_traces: int, n_frames: int, seed: int = 0) -> tuple[Tensor, dict[str, Any]]:
        """``n_traces`` synthetic traces ``(n_traces, n_frames, 2 d)`` (frame 0 = the HMC draw).

        ``info``: ``acceptance_rate`` (of the HMC draws), ``energy_drift_max`` (largest
        ``|H_theta(x_t) - H_theta(x_0)|`` over traces and frames) and ``energy_drift_rel`` (the
        same divided by ``T``), ``left_box_fraction`` (traces that left the box at some frame;
        the box restricts the initial conditions only, a trace may go where ``U_theta`` allows),
        ``box_excursion`` (the farthest any trace went outside the box, as a fraction of the
        box's width in that coordinate), ``seconds``.
        """
        if int(n_frames) != n_frames or n_frames < 1:
            raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
        t0 = time.perf_counter()
        x, res = self.sample_initial_conditions(n_traces, seed)
        frames = [x]
        with torch.no_grad():
            for _ in range(int(n_frames) - 1):
                x = self.step(x)
                frames.append(x)
            traces = torch.stack(frames, 1)
            h = self.hamiltonian(traces.reshape(-1, 2 * self.d)).reshape(traces.shape[:2])
        drift = float((h - h[:, :1]).abs().max())
        box = self._box()
        left = excursion = 0.0
        if box is not None:
            qs = traces[..., :self.d]
            outside = torch.maximum(box[0] - qs, qs - box[1]).clamp_min(0.0) / (box[1] - box[0])
            left = float((outside > 0).any(-1).any(-1).to(torch.float64).mean())
            excursion = float(outside.max())
        info = {"acceptance_rate": res.acceptance_rate, "energy_drift_max": drift,
                "energy_drift_rel": drift / self.temperature, "left_box_fraction": left,
                "box_excursion": excursion, "seconds": time.perf_counter() - t0}
        log.info("HMCGenerator.generate: %d traces x %d frames, acceptance %.3f, energy drift %.2e (%.2e T), "
                 "left the box %.3f (by up to %.3f of its width)", n_traces, n_frames, res.acceptance_rate, drift,
                 drift / self.temperature, left, excursion)
        return traces, info

    # ---- persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only (``torch.load(weights_only=True)`` reads it)."""
        return {"potential_hparams": dict(self.potential.hparams), "potential": self.potential.state_dict(),
                "frame_dt": self.frame_dt, "temperature": self.temperature,
                "energy_range": None if self.energy_range is None else list(self.energy_range),
                "box": None if self.box is None else [list(self.box[0]), list(self.box[1])],
                "reference_states": self.reference_states, "step_size": self.step_size,
                "n_leapfrog": self.n_leapfrog, "n_iter": self.n_iter, "step_jitter": self.step_jitter,
                "substeps": self.substeps}

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic write of :meth:`state_dict` (:func:`sns.generators._io.save_state`)."""
        from sns.generators._io import save_state

        return save_state(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HMCGenerator:
        from sns.generators._io import load_state

        sd = load_state(path)
        pot = LearnedPotential(**sd["potential_hparams"]).to(sd["reference_states"].dtype)
        pot.load_state_dict(sd["potential"])
        box = sd["box"]
        return cls(pot, sd["frame_dt"], sd["temperature"],
                   None if sd["energy_range"] is None else tuple(sd["energy_range"]),
                   None if box is None else (box[0], box[1]), sd["reference_states"], sd["step_size"],
                   sd["n_leapfrog"], sd["n_iter"], sd["step_jitter"], sd["substeps"])
