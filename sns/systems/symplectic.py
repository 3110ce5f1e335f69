"""Symplectic integrators for separable Hamiltonians ``H(q, p) = |p|^2 / 2 + U(q)`` (unit mass).

Both integrators take the force through ``grad_u(q) = dU/dq`` (batched, ``(B, d) -> (B, d)``)
and are written without in-place operations, so they compose with autograd and with
``torch.func`` transforms (``jacrev``, ``vmap``).

* :func:`leapfrog`: velocity Verlet / Stoermer-Verlet in kick-drift-kick form::

      p <- p - h/2 grad U(q);   q <- q + h p;   p <- p - h/2 grad U(q)

  second order, symplectic (hence volume-preserving: ``det d(q', p')/d(q, p) = 1``) and
  time-reversible (negating ``p`` and stepping again retraces the path).  ``n`` steps cost
  ``n + 1`` force evaluations (the half kicks of consecutive steps are merged).
* :func:`yoshida4`: Yoshida's (1990) fourth-order "triple jump" composition of three leapfrog
  steps of sizes ``w1 h, w0 h, w1 h`` with ``w1 = 1 / (2 - 2^(1/3))``, ``w0 = 1 - 2 w1``
  (the same scheme as Forest & Ruth 1990); symplectic, reversible (the composition is
  symmetric), ``3 n + 1`` force evaluations for ``n`` steps.  Its fourth order is checked
  numerically in ``tests/test_henon_heiles.py``.

For a separable Hamiltonian the exact flow's vector field ``(p, -grad U(q))`` has zero
divergence; these maps preserve phase-space volume exactly (each kick and drift is a shear).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["INTEGRATORS", "YOSHIDA_W0", "YOSHIDA_W1", "integrate", "leapfrog", "yoshida4"]

YOSHIDA_W1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
YOSHIDA_W0 = 1.0 - 2.0 * YOSHIDA_W1  # = -2^(1/3) / (2 - 2^(1/3))

GradU = Callable[[Tensor], Tensor]


def _check(h: float, n: int) -> int:
    if not h > 0:
        raise ValueError(f"step size must be positive, got {h!r}")
    if int(n) != n or n < 0:
        raise ValueError(f"number of steps must be an integer >= 0, got {n!r}")
    return int(n)


def _kdk(q: Tensor, p: Tensor, grad_u: GradU, drifts: list[float], kicks: list[float]) -> tuple[Tensor, Tensor]:
    """Alternate ``kicks[0], drifts[0], kicks[1], ..., drifts[-1], kicks[-1]`` (len(kicks) = len(drifts) + 1)."""
    p = torch.add(p, grad_u(q), alpha=-kicks[0])
    for d, k in zip(drifts, kicks[1:]):
        q = torch.add(q, p, alpha=d)
        p = torch.add(p, grad_u(q), alpha=-k)
    return q, p


def leapfrog(q: Tensor, p: Tensor, grad_u: GradU, h: float, n: int = 1) -> tuple[Tensor, Tensor]:
    """``n`` kick-drift-kick leapfrog steps of size ``h`` (module docstring). Returns ``(q, p)``."""
    n = _check(h, n)
    if n == 0:
        return q, p
    kicks = [0.5 * h] + [h] * (n - 1) + [0.5 * h]
    return _kdk(q, p, grad_u, [h] * n, kicks)


def yoshida4(q: Tensor, p: Tensor, grad_u: GradU, h: float, n: int = 1) -> tuple[Tensor, Tensor]:
    """``n`` steps of Yoshida's fourth-order composition of leapfrog (module docstring)."""
    n = _check(h, n)
    if n == 0:
        return q, p
    w1, w0 = YOSHIDA_W1 * h, YOSHIDA_W0 * h
    drifts = [w1, w0, w1] * n
    inner = [0.5 * (w1 + w0), 0.5 * (w0 + w1)]
    kicks = [0.5 * w1]
    for i in range(n):
        kicks += inner + ([w1] if i < n - 1 else [0.5 * w1])
    return _kdk(q, p, grad_u, drifts, kicks)


INTEGRATORS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"leapfrog": leapfrog, "yoshida4": yoshida4}


def integrate(name: str, q: Tensor, p: Tensor, grad_u: GradU, h: float, n: int = 1) -> tuple[Tensor, Tensor]:
    """Dispatch to the integrator ``name`` (``"leapfrog"`` or ``"yoshida4"``)."""
    if name not in INTEGRATORS:
        raise ValueError(f"unknown integrator {name!r}; valid choices: {sorted(INTEGRATORS)}")
    return INTEGRATORS[name](q, p, grad_u, h, n)
