"""The stepper contract of :func:`sns.rollout.rollout`, stated once.

A stepper maps a batch of states to the next states, ``(B, *state_shape) -> (B, *state_shape)``.
Two optional parts of the contract are declared by the stepper, not guessed from its class:

* :class:`StochasticStepper`: it takes a keyword ``generator`` (for an ``nn.Module``: its
  ``forward`` does) and draws all its randomness from it;
* :class:`CountingStepper`: it has an attribute ``last_calls`` (``None`` before the first call)
  that every call sets to the network evaluations it spent per sample.  A wrapper whose
  counter depends on what it wraps (e.g. :class:`sns.constraints.ConserveMean`) also defines
  ``counts_calls`` (bool), which :func:`counts_calls` reads before it looks for ``last_calls``.

:func:`call_step` calls a stepper the way the rollout does, and :func:`check_step_output` is the
one check that a stepper (or a wrapped surrogate) returned a tensor of the state's shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CountingStepper",
    "Stepper",
    "StochasticStepper",
    "StopRollout",
    "accepts_generator",
    "call_step",
    "check_step_output",
    "counts_calls",
    "read_calls",
]


class StopRollout(RuntimeError):
    """Raised by a stepper to end a rollout on purpose (e.g. the Thermalizer's level limit).

    The rollout catches it, keeps the states up to the previous step, and records the status
    ``aborted`` with the exception's message (``rollout_message``) and ``trajectories`` (a list
    of the offending batch indices, or None) as ``rollout_bad_trajectories``.
    """

    def __init__(self, message: str, trajectories: list[int] | None = None) -> None:
        super().__init__(message)
        self.trajectories = trajectories


@runtime_checkable
class Stepper(Protocol):
    """``x_{n-1} (B, *state_shape) -> x_n``, same shape, dtype and device; ``x_{n-1}`` left intact."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


@runtime_checkable
class StochasticStepper(Protocol):
    """A stepper that draws its randomness from the rollout's generator (seeded, checkpointed)."""

    def __call__(self, x: Tensor, /, *, generator: torch.Generator | None = None) -> Tensor: ...


@runtime_checkable
class CountingStepper(Protocol):
    """A stepper that reports the network calls of its last call per sample: an ``int`` (the same
    for every sample) or an integer tensor / array of shape ``(B,)``; ``None`` before any call."""

    last_calls: int | Tensor | np.ndarray | None

    def __call__(self, x: Tensor, /) -> Tensor: ...


def accepts_generator(step: Callable[..., Tensor]) -> bool:
    """Whether ``step`` (its ``forward`` for an ``nn.Module``) takes a ``generator`` keyword."""
    target = step.forward if isinstance(step, torch.nn.Module) else step
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("generator")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def counts_calls(step: Any) -> bool:
    """Whether ``step`` reports network calls: its ``counts_calls`` if it declares one, else
    whether it has a ``last_calls`` attribute."""
    declared = getattr(step, "counts_calls", None)
    if declared is not None:
        return bool(declared)
    return hasattr(step, "last_calls")


def call_step(step: Callable[..., Tensor], x: Tensor, generator: torch.Generator | None,
              pass_generator: bool | None = None) -> Tensor:
    """``step(x, generator=generator)`` for a stochastic stepper, ``step(x)`` otherwise
    (``pass_generator``: :func:`accepts_generator` of ``step``, computed when None)."""
    if pass_generator is None:
        pass_generator = accepts_generator(step)
    return step(x, generator=generator) if pass_generator else step(x)


def check_step_output(x: Tensor, y: Any, what: str = "the stepper", *, dtype: bool = False,
                      step: int | None = None) -> Tensor:
    """``y`` if it is a tensor of ``x``'s shape (and dtype, with ``dtype=True``), else a
    ``ValueError`` naming ``what`` returned what instead (at rollout step ``step`` if given)."""
    if isinstance(y, Tensor) and y.shape == x.shape and (not dtype or y.dtype == x.dtype):
        return y
    if isinstance(y, Tensor):
        got = f"{tuple(y.shape)}" + (f" {y.dtype}" if dtype else "")
    else:
        got = type(y).__name__
    want = f"a tensor of the state's shape {tuple(x.shape)}" + (f" and dtype {x.dtype}" if dtype else "")
    where = f" at step {step}" if step is not None else ""
    raise ValueError(f"{what} must return {want}, got {got}{where}")


def read_calls(step: Any, batch: int) -> np.ndarray:
    """``step.last_calls`` after a call as an int64 array ``(batch,)``; raises if malformed."""
    value = step.last_calls
    if value is None:
        raise ValueError("stepper declares last_calls but left it None after a call")
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(batch, arr)
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(arr == np.round(arr)))
    )
    if arr.shape != (batch,) or not integral or bool(np.any(arr < 0)):
        raise ValueError(
            "stepper.last_calls must be an int or a non-negative integer array of shape "
            f"({batch},), got {value!r}"
        )
    return arr.astype(np.int64)
