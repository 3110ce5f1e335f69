"""Small training callbacks.  EMA of the weights is Lightning's own
``lightning.pytorch.callbacks.EMAWeightAveraging`` (lightning >= 2.6); the subclass here only
keeps the raw weights in checkpoints written after training ended (nothing of the averaging is
reimplemented).  :class:`ModelCheckpoint` is Lightning's, made exact to resume from."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging as _LightningEMA
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from torch import nn

__all__ = ["EMAWeightAveraging", "ModelCheckpoint", "Throughput", "as_last_batch_end", "averaged_model",
           "normalise_loop_state"]


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


_NORMALISED = "sns_loop_state_normalised"


def _epoch_complete(fit: dict[str, Any], n_batches: Any) -> bool:
    batches = fit["epoch_loop.batch_progress"]
    return bool(batches.get("is_last_batch")) or (isinstance(n_batches, int)
                                                  and batches["current"]["completed"] >= n_batches)


def normalise_loop_state(checkpoint: dict[str, Any], exited: bool, n_batches: Any) -> None:
    """Write the fit loop's counters of ``checkpoint`` in the form Lightning resumes from exactly.

    Lightning (2.6) resumes wrongly from three states it writes itself; the counters are
    rewritten here (``exited``: the checkpoint is written after the epoch loop left its epoch,
    at ``on_train_epoch_end`` or ``on_train_end``; ``n_batches``: batches per epoch):

    - An epoch left before its last batch (``max_steps``, ``max_time``, ``should_stop``) is
      counted as processed, so a resume started the next epoch: with an epoch budget the rest
      of the epoch was never trained (10 steps instead of 3 epochs x 4 = 12 when the first run
      stopped at step 2), with ``max_steps`` the next epoch inherited the stopped epoch's batch
      count and ended early.  It is recorded as unfinished (``processed = completed = e``, the
      state of a mid-epoch validation checkpoint), and the resume continues it at the next
      batch.
    - After resuming from a checkpoint written at the last batch's ``on_train_batch_end``,
      Lightning does not count the next epoch as started, so a mid-epoch checkpoint of that
      epoch looked finished and a resume from it re-ran the whole epoch (steps beyond the
      budget).  ``ready`` and ``started`` are set to ``processed + 1`` in every checkpoint
      written inside an epoch (to ``processed`` after it).
    - An end-of-epoch checkpoint resumed under ``max_steps`` runs a phantom epoch end (a
      skipped epoch in the shuffle, the logging step one ahead); :meth:`ModelCheckpoint.on_load_checkpoint`
      converts it when such a run resumes (:func:`as_last_batch_end`).
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit or "epoch_loop.batch_progress" not in fit:
        return
    if checkpoint.get(_NORMALISED):  # once per checkpoint (several ModelCheckpoint callbacks)
        return
    checkpoint[_NORMALISED] = True
    progress = fit["epoch_progress"]
    for part in ("total", "current"):
        p = progress[part]
        if not exited:
            p["ready"] = p["started"] = p["processed"] + 1
        elif _epoch_complete(fit, n_batches):
            p["ready"] = p["started"] = p["processed"]
        else:  # left mid-epoch: unfinished
            p["ready"] = p["started"] = p["processed"]
            p["processed"] = p["completed"] = p["processed"] - 1
    checkpoint["epoch"] = progress["current"]["completed"]


def as_last_batch_end(checkpoint: dict[str, Any], n_batches: Any) -> bool:
    """Turn an end-of-epoch checkpoint (epoch ``e`` processed, ``ready == started ==
    processed``, every batch completed) into the one written at ``on_train_batch_end`` of the
    epoch's last batch, which Lightning resumes into epoch ``e + 1`` (step, epoch and logging
    step exact) whether training counts steps or epochs.  Returns whether it changed
    ``checkpoint``."""
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit or "epoch_loop.batch_progress" not in fit:
        return False
    progress, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
    cur = progress["current"]
    if not (cur["processed"] >= 1 and cur["ready"] == cur["started"] == cur["processed"]
            and _epoch_complete(fit, n_batches)):
        return False
    # written by normalise_loop_state: at on_train_epoch_end or on_train_end; else (Lightning's
    # own checkpoint) only at on_train_epoch_end, as all-equal counters may be a validation at
    # the last batch of an epoch that Lightning did not count as started
    ends = (cur["processed"] - 1, cur["processed"]) if checkpoint.get(_NORMALISED) else (cur["processed"] - 1,)
    if cur["completed"] not in ends:
        return False
    if any(batches[part]["completed"] != batches[part]["processed"] for part in ("total", "current")):
        return False
    for part in ("total", "current"):
        progress[part]["processed"] = progress[part]["completed"] = progress[part]["processed"] - 1
        batches[part]["completed"] -= 1
    batches["is_last_batch"] = True
    loop_state = fit.setdefault("epoch_loop.state_dict", {})
    loop_state["_batches_that_stepped"] = max(int(loop_state.get("_batches_that_stepped", 1)) - 1, 0)
    checkpoint["epoch"] = progress["current"]["completed"]
    return True


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` resumes a run exactly.

    - ``last.ckpt`` is written at every checkpoint opportunity (end of validation / of the
      epoch, ``every_n_train_steps``): Lightning 2.6 writes it only together with a top-k
      checkpoint, i.e. with ``save_top_k=1`` only when ``val/loss`` improved, so a resume went
      back to the best epoch and trained its successors again.
    - ``last.ckpt`` is written at the end of every fit that trained past the last save
      (Lightning writes it at ``on_train_end`` only when the fit saved nothing, so a run stopped
      by ``max_steps`` or ``max_time`` between two saves lost its last steps, and a re-run of
      the finished command trained them again); a fit that trained nothing (a re-run of a
      finished run) writes nothing.
    - The fit loop's counters are written in the form Lightning resumes from exactly
      (:func:`normalise_loop_state`, :func:`as_last_batch_end`).
    - The state of the global torch RNGs (CPU, CUDA) goes into every checkpoint and is restored
      on resume, so that the random numbers of the training steps (input noise, noise levels)
      continue as in an uninterrupted run.
    - A checkpoint whose file exists already replaces it (``enable_version_counter=False`` by
      default): a run killed after committing ``epoch..-step..ckpt`` but before ``last.ckpt``
      saves that step again on resume, and Lightning's default wrote a second copy
      (``...-v1.ckpt``) next to the orphan, which top-k never deleted; a fresh start
      (``ckpt_path=null``) in a used directory wrote ``last-v1.ckpt``, and the next resume took
      the old run's ``last.ckpt``.  Temporary files of writes killed half-way
      (:func:`sns.training.checkpoint_io.remove_stale_temp_files`) are removed when a fit starts.

    The training loader's position in the epoch is the loader's own state
    (:class:`sns.data.datamodule.ResumableDataLoader`).  Same name (and checkpoint
    ``state_key``) as Lightning's class, so old checkpoints load unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self._start_step: int | None = None
        self._after_fit = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and "://" not in str(self.dirpath):
            from sns.training.checkpoint_io import remove_stale_temp_files

            remove_stale_temp_files(self.dirpath)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_step, self._after_fit = trainer.global_step, False

    def _save_last_if_new(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_new(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_new(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # not Lightning's (which saves when the fit saved nothing, even if it trained nothing)
        self._after_fit = True
        if trainer.global_step != self._start_step:
            self._save_last_if_new(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        epochs = trainer.fit_loop.epoch_progress.current
        exited = self._after_fit or epochs.processed > epochs.completed
        normalise_loop_state(checkpoint, exited, trainer.num_training_batches)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if trainer.max_steps != -1:  # Lightning resumes an end-of-epoch checkpoint well only by epochs
            as_last_batch_end(checkpoint, None)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rng_torch"] = torch.get_rng_state()
        state["rng_cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("rng_torch") is not None:
            torch.set_rng_state(state_dict["rng_torch"])
        cuda = state_dict.get("rng_cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


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
