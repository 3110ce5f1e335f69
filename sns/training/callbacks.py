"""Small training callbacks.  EMA of the weights is Lightning's own
``lightning.pytorch.callbacks.EMAWeightAveraging`` (lightning >= 2.6); nothing here
reimplements it."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl

__all__ = ["Throughput"]


class Throughput(pl.Callback):
    """Log training throughput ``train/samples_per_s`` (samples = windows, all processes)
    averaged over every ``log_every`` optimizer steps, and keep the run's totals in
    ``samples``, ``seconds`` (training-step wall time, validation excluded).

    Args:
        log_every: batches per measurement.
    """

    def __init__(self, log_every: int = 50) -> None:
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
        self.log_every = log_every
        self.samples, self.seconds = 0, 0.0
        self._window_samples, self._window_seconds = 0, 0.0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        n = int(batch.shape[0]) * trainer.world_size
        self.samples += n
        self.seconds += dt
        self._window_samples += n
        self._window_seconds += dt
        if (batch_idx + 1) % self.log_every == 0 and self._window_seconds > 0:
            pl_module.log("train/samples_per_s", self._window_samples / self._window_seconds)
            self._window_samples, self._window_seconds = 0, 0.0

    @property
    def samples_per_s(self) -> float:
        """Mean throughput over the run so far (training steps only)."""
        return self.samples / self.seconds if self.seconds else float("nan")
