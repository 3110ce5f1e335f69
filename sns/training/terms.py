"""Plug-in loss terms and the unroll-length schedule shared by the training modules.

Loss-term protocol
------------------
An extra loss term is any callable::

    term(module, batch, outputs) -> (value, logs)

* ``module``: the calling LightningModule (gives ``module.model``, the network being
  trained, ``module.current_epoch`` / ``module.global_step`` for warm-ups, ``module.device``);
* ``batch``: the training batch as the module received it (windows ``(B, T, *state)``);
* ``outputs``: a dict the module fills before calling the terms; every module provides
  ``"inputs"`` (the states fed to the network, ``(N, *state)``) and ``"loss"`` (its own
  loss, a scalar tensor); the surrogate module adds ``"predictions"`` (``(B, L, *state)``)
  and ``"targets"``; the pair-denoiser module ``"x_prev"``, ``"x_next"``, ``"parts"``;
* ``value``: a scalar tensor (already weighted) added to the loss;
* ``logs``: ``{name: scalar}`` logged under ``train/<name>``.

A term may set an attribute ``name`` (its log prefix).  The modules never know what a
term computes, so a divergence regularizer (``sns.losses``) drops in through the
configuration's ``loss_terms`` list without touching them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["LossTerm", "UnrollSchedule", "term_name"]


@runtime_checkable
class LossTerm(Protocol):
    """``term(module, batch, outputs) -> (value, logs)`` (module docstring)."""

    def __call__(self, module: Any, batch: Any, outputs: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any]]: ...


def term_name(term: Any, index: int) -> str:
    """Log prefix of a loss term: its ``name`` attribute, else its class or function name."""
    name = getattr(term, "name", None) or getattr(term, "__name__", None) or type(term).__name__
    return f"{name}" if name else f"term{index}"


class UnrollSchedule:
    """Unroll length ``L`` as a function of the optimizer step ``k`` (grows during training)::

        L(k) = min(max_length, start + floor(k / every))      (every > 0)
        L(k) = start                                          (every = 0)

    A function of the global step only, so it is reproduced exactly on resume.

    Args:
        start: length at step 0 (>= 1).
        max_length: final length (>= start).
        every: optimizer steps per increment of one; 0 keeps ``start``.
    """

    def __init__(self, start: int = 1, max_length: int = 1, every: int = 0) -> None:
        if not isinstance(start, int) or start < 1:
            raise ValueError(f"unroll start must be an integer >= 1, got {start!r}")
        if not isinstance(max_length, int) or max_length < start:
            raise ValueError(f"unroll max_length must be an integer >= start ({start}), got {max_length!r}")
        if not isinstance(every, int) or every < 0:
            raise ValueError(f"unroll every must be a non-negative integer, got {every!r}")
        self.start, self.max_length, self.every = start, max_length, every

    def __call__(self, step: int) -> int:
        if self.every == 0:
            return self.start
        return min(self.max_length, self.start + int(step) // self.every)

    def __repr__(self) -> str:
        return f"UnrollSchedule(start={self.start}, max_length={self.max_length}, every={self.every})"
