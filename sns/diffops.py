"""Differential operators of vector fields, shared by the losses and the metrics.

``divergence(field, x)``: ``tr(df/dx)`` per sample, exact (``D`` vector-Jacobian products) or
Hutchinson's unbiased estimate (``K`` Rademacher probes); ``jacobian`` (full, per sample);
``flow_map_divergence`` (``log|det dF/dx| / dt`` of a one-step map).  Estimators, costs and
variances: :mod:`sns.losses.divergence`, whose regularizer is built on these; the metrics
(:func:`sns.metrics.chaos.local_divergence`) use them without importing the losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["METHODS", "divergence", "flow_map_divergence", "jacobian", "rademacher"]

METHODS = ("exact", "hutchinson")


def _check_probes(n_probes: Any) -> int:
    if isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    return int(n_probes)


def _field_output(field: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, f(x))`` with ``x`` a fresh leaf that requires grad; checks shapes."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("the divergence needs autograd, which torch.inference_mode() disables; "
                           "wrap the call in `with torch.inference_mode(False):` (and clone inference tensors)")
    x = x.detach().clone() if x.is_inference() else x.detach()
    x = x.requires_grad_(True)
    out = field(x)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the vector field maps inputs of shape {tuple(x.shape)} to {got}; a vector field must "
            "return the shape of its input (B, *state)"
        )
    if not out.requires_grad:
        raise ValueError("the vector field's output does not depend on its input through autograd; "
                         "its divergence is undefined here (is it computed under torch.no_grad()?)")
    return x, out


def rademacher(shape: Sequence[int], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Independent ``+-1`` entries with probability 1/2, dtype and device of ``like``.

    Drawn on the generator's device (CPU for a CPU generator) and moved, so one seed
    gives the same probes on every device."""
    dev = generator.device if generator is not None else like.device
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=dev)
    return (2 * bits - 1).to(device=like.device, dtype=like.dtype)


def divergence(
    field: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> Tensor:
    """Divergence ``tr(df/dx)`` of ``field`` at each sample of ``x``.

    Args:
        field: ``f``, maps ``(B, *state)`` to the same shape, sample by sample (the
            Jacobian of sample ``b`` must not involve other samples: no batch norm).
        x: points ``(B, *state)``.  They are detached: the result is differentiable with
            respect to the field's parameters, not the points.
        method: ``"exact"`` (``D = prod(state)`` backward passes) or ``"hutchinson"``
            (``n_probes`` Rademacher probes; unbiased, variance ``~ 1/n_probes``).
        n_probes: number of probes of the Hutchinson estimator (>= 1).
        generator: random generator of the probes (None: torch's global one).
        create_graph: keep the graph so the result can be back-propagated (training).

    Returns:
        ``(B,)`` tensor, in units of the field per unit of ``x``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown divergence method {method!r}; valid choices: {METHODS}")
    n_probes = _check_probes(n_probes)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, *state), got {tuple(x.shape)}")
    with torch.enable_grad():
        x, out = _field_output(field, x)
        flat_out = out.reshape(out.shape[0], -1)
        D = flat_out.shape[1]
        div = x.new_zeros(x.shape[0])
        if method == "exact":
            for i in range(D):
                (g,) = torch.autograd.grad(flat_out[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
                div = div + g.reshape(x.shape[0], -1)[:, i]
            return div
        for _ in range(n_probes):
            v = rademacher(x.shape, x, generator)
            (g,) = torch.autograd.grad(out, x, grad_outputs=v, create_graph=create_graph, retain_graph=True)
            div = div + (g * v).reshape(x.shape[0], -1).sum(1)
        return div / n_probes


def jacobian(field: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = True) -> Tensor:
    """Per-sample Jacobian ``J[b, i, j] = d f_i / d x_j`` of a field on ``(B, D)`` states,
    by ``D`` vector-Jacobian products; shape ``(B, D, D)``."""
    if x.ndim != 2:
        raise ValueError(f"the full Jacobian needs vector states (B, D), got {tuple(x.shape)}")
    with torch.enable_grad():
        x, out = _field_output(field, x)
        rows = [torch.autograd.grad(out[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0]
                for i in range(out.shape[1])]
    return torch.stack(rows, 1)


def flow_map_divergence(step: Callable[[Tensor], Tensor], x: Tensor, dt: float, create_graph: bool = True) -> Tensor:
    """Time-averaged divergence over one step of a flow map ``F``: ``log|det dF/dx| / dt``.

    For the exact flow map ``Phi_dt`` (Liouville) this is ``(1/dt) int_0^dt div f(x(s)) ds``;
    for a constant divergence it is that constant whatever ``dt``.  ``(B, D)`` states
    only (full Jacobian: ``D`` backward passes); returns ``(B,)``.
    """
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    J = jacobian(step, x, create_graph=create_graph)
    return torch.linalg.slogdet(J)[1] / dt
