"""Small training callbacks.  EMA of the weights is Lightning's own
``lightning.pytorch.callbacks.EMAWeightAveraging`` (lightning >= 2.6); the subclass here only
keeps the raw weights in checkpoints written after training ended (nothing of the averaging is
reimplemented)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging as _LightningEMA
from torch import nn

__all__ = ["EMAWeightAveraging", "Throughput", "averaged_model"]


class EMAWeightAveraging(_LightningEMA):
    """Lightning's ``EMAWeightAveraging`` whose checkpoints always hold the raw weights.

    At ``on_train_end`` Lightning copies the average into the module (what the export writes);
    a checkpoint saved after that (``ModelCheckpoint.on_train_end`` saving ``last.ckpt`` when
    the call saved none, e.g. a re-run of a finished training) would then record the EMA
    weights as ``current_model_state`` and lose the raw ones.  This subclass keeps the raw
    weights at that point and writes them back into such a checkpoint.  Same name (and
    checkpoint ``state_key``) as Lightning's class, so old checkpoints load unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw_after_end: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raw_after_end = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raw_after_end = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._raw_after_end is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = dict(self._raw_after_end)


def averaged_model(callbacks: list[Any], module: pl.LightningModule) -> nn.Module:
    """The network to export: the EMA average of a ``WeightAveraging`` callback's averaged model
    when there is one (whether or not ``fit`` ran a step: a re-run of a finished training
    restores the average from ``last.ckpt`` without ``on_train_end`` copying it into the module),
    else ``module.model``."""
    from lightning.pytorch.callbacks import WeightAveraging

    for cb in callbacks:
        avg = getattr(cb, "_average_model", None) if isinstance(cb, WeightAveraging) else None
        if avg is not None:
            return avg.module.model
    return module.model


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
