"""Stepper wrappers that enforce an invariant of the dynamics at every rollout step.

A learned stepper (a surrogate, SNS, a baseline) knows the physics only through its training
data, so a quantity the equations conserve exactly can drift over a long rollout.  The
Kolmogorov flow (periodic domain, zero-mean forcing, linear drag) and the two-layer QG model
keep the spatial mean of the vorticity / of each layer's potential vorticity at its initial
value (zero in the data sets of :mod:`sns.data`); a cpu-scale surrogate or denoiser trained for
minutes lets it drift linearly, and the drift dominates the enstrophy of the rollout
(``benchmarks/RESULTS.md``).

:class:`ConserveMean` projects every new state onto the set with the previous state's mean:

    x_n = y - mean(y) + mean(x_{n-1}),     y = step(x_{n-1}),

the mean taken per sample and channel over the spatial axes.  This is the orthogonal (L2)
projection onto that affine set, so it changes nothing but the mean: every nonzero Fourier
mode of ``y`` is kept.  It wraps any stepper of :mod:`sns.rollout`'s contract (the bare
surrogate, :class:`sns.refine.SNSRefiner`, every baseline) and keeps its random-generator
argument and its network-call counter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ConserveMean"]


class ConserveMean(nn.Module):
    """Stepper ``x -> y - mean(y) + mean(x)`` with ``y = step(x)``, means over ``dims``.

    Args:
        step: the stepper to wrap (an ``nn.Module`` or a callable ``(B, *state) -> (B, *state)``,
            with or without a ``generator`` argument; see :mod:`sns.rollout`).
        dims: the spatial axes, negative (counted from the end); default ``(-2, -1)``: ``(H, W)``
            of ``(B, C, H, W)`` fields, one mean per sample and channel.

    ``last_calls`` is the wrapped stepper's (the projection costs no network call) and
    ``counts_calls`` says whether the wrapped stepper has a counter (``sns.rollout.stepper``).

    Raises:
        ValueError: ``dims`` empty, not negative or repeated; at call time, a state with fewer
            than ``1 + len(dims)`` axes (a vector state has no spatial mean) or a wrapped
            stepper that changes the shape.
    """

    def __init__(self, step: nn.Module | Callable[..., Tensor], dims: Sequence[int] = (-2, -1)) -> None:
        super().__init__()
        if not callable(step):
            raise TypeError(f"step must be an nn.Module or a callable, got {type(step).__name__}")
        dims = tuple(int(d) for d in dims)
        if not dims or any(d >= 0 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"dims must be distinct negative axes (e.g. (-2, -1)), got {dims}")
        from sns.rollout.stepper import accepts_generator, counts_calls

        self.step = step
        self.dims = dims
        self._pass_generator = accepts_generator(step)
        self.counts_calls = counts_calls(step)  #: read by the rollout: the counter is the wrapped one's

    @property
    def last_calls(self) -> Any:
        """The wrapped stepper's ``last_calls`` (None when it has no counter)."""
        return getattr(self.step, "last_calls", None)

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One step ``(B, *state) -> (B, *state)`` with each channel's spatial mean of ``x``."""
        if x.ndim < 1 + len(self.dims):
            raise ValueError(f"ConserveMean over dims {self.dims} needs states with at least {len(self.dims)} "
                             f"axes after the batch, got shape {tuple(x.shape)} (vector states have no "
                             "spatial mean)")
        from sns.rollout.stepper import call_step, check_step_output

        y = check_step_output(x, call_step(self.step, x, generator, self._pass_generator), "the wrapped stepper")
        return y - y.mean(dim=self.dims, keepdim=True) + x.mean(dim=self.dims, keepdim=True)
