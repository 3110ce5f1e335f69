"""Independent forward noising of the pair ``(x_{t-1}, x_t)``.

Each state gets its own level and its own noise (SNS, DESIGN.md section 1)::

    x_t^{i1}     = sqrt(abar_{i1}) x_t     + sqrt(1 - abar_{i1}) e1
    x_{t-1}^{i2} = sqrt(abar_{i2}) x_{t-1} + sqrt(1 - abar_{i2}) e2

Levels ``i1, i2`` are 0-based table indices in ``[0, S)`` (see :mod:`sns.diffusion.schedules`;
the 1-based phase-space coordinates ``s = i + 1`` belong to :mod:`sns.diffusion.paths`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sns.diffusion.schedules import Schedule

__all__ = ["noise_pair", "noise_state", "randn_like", "table"]


def table(values: Tensor, levels: Tensor, like: Tensor) -> Tensor:
    """``values[levels]`` reshaped to ``(B, 1, ..., 1)`` to broadcast against ``like``.

    ``values`` is a float64 schedule table; the result has ``like``'s dtype and device.
    """
    v = values.to(like.device)[levels.to(like.device)]
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise of ``x``'s shape and dtype, drawn on ``generator``'s device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def noise_state(schedule: Schedule, x: Tensor, s: Tensor, eps: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Return ``(x^s, eps)`` with ``x^s = sqrt(abar_s) x + sqrt(1 - abar_s) eps``.

    Args:
        x: clean states ``(B, ...)``.
        s: integer levels ``(B,)`` in ``[0, S)``.
        eps: the noise (``x``'s shape); drawn from ``N(0, I)`` with ``generator`` if ``None``.
    """
    if s.shape != (x.shape[0],):
        raise ValueError(f"levels must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, "
                         f"got {tuple(s.shape)}")
    schedule.check_levels(s)
    if eps is None:
        eps = randn_like(x, generator)
    elif eps.shape != x.shape:
        raise ValueError(f"noise shape {tuple(eps.shape)} differs from state shape {tuple(x.shape)}")
    abar = table(schedule.abar, s, x)
    return abar.sqrt() * x + (1 - abar).sqrt() * eps, eps


def noise_pair(
    schedule: Schedule,
    x_prev: Tensor,
    x_next: Tensor,
    i2: Tensor,
    i1: Tensor,
    e2: Tensor | None = None,
    e1: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Noise ``x_{t-1}`` to level ``i2`` and ``x_t`` to level ``i1`` independently.

    Returns ``(x_prev^{i2}, x_next^{i1}, e2, e1)``; shapes as the inputs, levels ``(B,)``.
    """
    x_prev_i2, e2 = noise_state(schedule, x_prev, i2, e2, generator)
    x_next_i1, e1 = noise_state(schedule, x_next, i1, e1, generator)
    return x_prev_i2, x_next_i1, e2, e1
