"""Rollout callbacks: what :func:`sns.rollout.rollout` calls for every kept state and chunk.

:class:`Callback` states the hooks; :class:`RunningMoments` and :class:`RMSSeries` are the
built-in ones.  A callback that saves no state is replayed from the store on resume
(:func:`restore_callbacks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Callback", "RMSSeries", "RunningMoments", "state_rms"]


def state_rms(x: Tensor) -> Tensor:
    """Per-sample RMS ``sqrt(mean(x**2))`` over all non-batch elements, float64 ``(B,)``.

    Computed in float64 (no overflow for finite float32 states); NaN or inf in a
    sample propagates to its RMS.
    """
    flat = x.detach().reshape(x.shape[0], -1)
    return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64) / math.sqrt(flat.shape[1])


class Callback:
    """Base class of rollout callbacks; override what you need.

    The rollout calls ``on_step(n, x_n)`` for every state it keeps, including
    ``x0`` at ``n = 0`` and never for a state rejected by a guard;
    ``on_chunk(start, states)`` after each chunk is written (``states``: CPU
    tensor ``(B, n, *state_shape)`` in the store dtype, time indices
    ``start .. start + n - 1``, possibly a view of the rollout's buffer: copy
    what you keep); ``on_end(steps_done, status)`` once, whose return
    value lands in :attr:`RolloutResult.callbacks`.

    For resume, a callback may implement ``state_dict() -> dict`` (JSON-serialisable,
    saved with every chunk) and ``load_state_dict(d)``.  A callback that returns
    ``None`` from ``state_dict`` is instead *replayed* on resume: ``on_step`` and
    ``on_chunk`` are called on the stored states ``0..m`` (CPU, store dtype),
    reading the store one chunk at a time.
    """

    def on_step(self, step: int, x: Tensor) -> None:
        pass

    def on_chunk(self, start: int, states: Tensor) -> None:
        pass

    def on_end(self, steps_done: int, status: str) -> Any:
        return None

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no resumable state")


class RunningMoments(Callback):
    """Running mean and variance per channel over every kept state (all samples, all steps).

    Batch update of Welford's algorithm (Chan, Golub & LeVeque 1979): for a new
    batch with ``n_b`` values, mean ``m_b`` and sum of squared deviations ``M2_b``
    per channel, ``delta = m_b - m``, ``n' = n + n_b``, ``m' = m + delta n_b / n'``,
    ``M2' = M2 + M2_b + delta^2 n n_b / n'``.  Accumulated in float64; memory
    ``O(C)``.  ``on_end`` returns ``{"mean", "var", "std"}`` (arrays ``(C,)``,
    population variance ``M2 / n``) and ``"count"`` (values per channel).

    ``channel_axis`` indexes the batched state ``(B, C, ...)``; for vector states
    ``(B, D)`` the default 1 gives moments per component.  Rows that are not finite (the NaN
    rows of trajectories retired by ``rollout(..., on_failure="retire")``) are left out.
    """

    def __init__(self, channel_axis: int = 1) -> None:
        if channel_axis == 0:
            raise ValueError("channel_axis must not be 0 (the batch axis)")
        self.channel_axis = channel_axis
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def on_step(self, step: int, x: Tensor) -> None:
        x = x.detach()
        rows = torch.isfinite(x.flatten(1)).all(dim=1)  # NaN rows: retired trajectories
        if not bool(rows.all()):
            x = x[rows]
            if x.shape[0] == 0:
                return
        values = x.to(torch.float64).movedim(self.channel_axis, 0).flatten(1)
        n_b = values.shape[1]
        mean_b = values.mean(dim=1)
        m2_b = (values - mean_b[:, None]).square().sum(dim=1)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        if self.mean.device != values.device:  # restored on the CPU, states elsewhere
            self.mean, self.m2 = self.mean.to(values.device), self.m2.to(values.device)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.square() * (self.count * n_b / n)
        self.count = n

    def on_end(self, steps_done: int, status: str) -> dict[str, Any]:
        if self.mean is None or self.m2 is None:
            raise RuntimeError("RunningMoments saw no state")
        var = (self.m2 / self.count).cpu().numpy()
        return {
            "mean": self.mean.cpu().numpy(),
            "var": var,
            "std": np.sqrt(var),
            "count": self.count,
        }

    def state_dict(self) -> dict[str, Any] | None:
        if self.mean is None or self.m2 is None:
            return {"count": 0}
        # Python floats round-trip exactly through JSON (repr is shortest exact).
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = int(state["count"])
        if self.count == 0:
            self.mean = self.m2 = None
        else:
            self.mean = torch.tensor(state["mean"], dtype=torch.float64)
            self.m2 = torch.tensor(state["m2"], dtype=torch.float64)


class RMSSeries(Callback):
    """RMS of every kept state as a time series, ``sqrt(mean(x_n**2))`` per sample.

    ``on_end`` returns an array ``(steps_done + 1, B)`` (float64).  Memory is
    ``O(n_steps * B)`` floats (0.6 MB for 20,000 steps of 4 samples); on resume
    it is rebuilt by replaying the stored states.  The same series is stored in
    the zarr store as the variable ``rms``.
    """

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []

    def on_step(self, step: int, x: Tensor) -> None:
        if step != len(self.values):
            raise RuntimeError(f"RMSSeries expected step {len(self.values)}, got {step}")
        self.values.append(state_rms(x).cpu().numpy())

    def on_end(self, steps_done: int, status: str) -> np.ndarray:
        return np.stack(self.values) if self.values else np.zeros((0, 0))


def callback_key(i: int, cb: Any) -> str:
    return f"{i}:{type(cb).__name__}"


def callback_states(callbacks: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for i, cb in enumerate(callbacks):
        sd = cb.state_dict() if hasattr(cb, "state_dict") else None
        if sd is not None:
            out[callback_key(i, cb)] = sd
    return out


def call_hook(cb: Any, name: str, *args: Any) -> Any:
    fn = getattr(cb, name, None)
    return fn(*args) if fn is not None else None


def restore_callbacks(
    callbacks: Sequence[Any],
    saved: Mapping[str, Any],
    read: Callable[[int, int], np.ndarray],
    last: int,
    chunk: int,
) -> None:
    """Load saved callback states; replay the stored states 0..last (``read(start, stop)``: the
    store's time indices ``start..stop-1``) into the others."""
    replay = []
    for i, cb in enumerate(callbacks):
        key = callback_key(i, cb)
        if key in saved and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(saved[key])
        else:
            replay.append(cb)
    if not replay or last < 0:
        return
    for start in range(0, last + 1, chunk):
        states = torch.from_numpy(read(start, min(start + chunk, last + 1)))
        for j in range(states.shape[1]):
            for cb in replay:
                call_hook(cb, "on_step", start + j, states[:, j])
        for cb in replay:
            call_hook(cb, "on_chunk", start, states)
