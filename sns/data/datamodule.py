"""Lightning DataModule over an ``sns`` data directory (``train.zarr``, ``valid.zarr``, ...).

Training batches are windows of ``history + horizon`` consecutive normalised frames,
``(B, T, C, H, W)`` for fields or ``(B, T, D)`` for vector states (see
:class:`sns.data.windows.WindowDataset`).  Validation windows have their own length
``history + val_horizon`` so that a module can score a ``val_horizon``-step rollout
against the truth, not only the one-step loss.

Worker processes open the stores lazily (nothing is read in the parent before the
workers start); the multiprocessing start method is configurable (``spawn`` /
``forkserver`` avoid forking a process that holds threads, ``fork`` starts fastest),
and workers persist across epochs when ``num_workers > 0``.

The training order depends only on ``seed`` and the epoch (:class:`EpochSampler`: its own
generator, never the global RNG, so any ``num_workers`` gives the same batches; under DDP
each rank takes its share), and the training loader is resumable
(:class:`ResumableDataLoader`: Lightning stores its position in the epoch in every
checkpoint, and a run resumed mid-epoch continues with the very batches an uninterrupted run
would have drawn).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from sns.data.windows import WindowDataset

__all__ = ["EpochSampler", "ResumableDataLoader", "WindowDataModule"]


class EpochSampler(DistributedSampler):
    """Shuffled training order that depends only on ``(seed, epoch)``, resumable mid-epoch.

    The permutation of epoch ``e`` comes from a generator of its own seeded with
    ``seed * 1_000_003 + e`` (never the global RNG, which DataLoader workers and training steps
    consume differently); Lightning sets the epoch (``set_epoch``) before each epoch.  Under DDP
    (``num_replicas > 1``) each rank takes every ``num_replicas``-th index of the permutation
    (padded to a multiple of ``num_replicas``, as ``DistributedSampler``); being a
    ``DistributedSampler``, Lightning does not replace it.

    :meth:`resume_at` makes the next iteration over ``epoch`` start after its first ``skip``
    indices (the windows already trained on), once.
    """

    def __init__(self, dataset: Any, seed: int = 0, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=int(seed),
                         drop_last=False)
        self._resume: tuple[int, int] | None = None

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, in order."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + int(epoch))
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        padding = self.total_size - n
        if padding > 0:
            indices += (indices * (padding // n + 1))[:padding]
        return indices[self.rank:self.total_size:self.num_replicas]

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start the next iteration over ``epoch`` at its ``skip``-th index."""
        self._resume = (int(epoch), int(skip))

    def __iter__(self) -> Iterator[int]:
        indices = self.order(self.epoch)
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if epoch == self.epoch:
                indices = indices[skip:]
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` whose position is checkpointed.

    Lightning saves ``state_dict()`` (the epoch and the number of batches handed to the training
    loop in it) in every checkpoint and calls ``load_state_dict`` when it resumes mid-epoch; the
    next iteration then skips those batches, so the resumed epoch continues with the batches an
    uninterrupted run draws (no batch repeated or skipped, and Lightning's own count of the
    epoch's batches agrees with the data).  Batches are counted in the main process, as the
    training loop takes them (worker prefetching does not count).  The iteration starts lazily,
    at the first batch, after Lightning has set the sampler's epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch, self._batches = 0, 0

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        sampler = self.sampler
        resume = getattr(sampler, "_resume", None)
        self._epoch = getattr(sampler, "epoch", 0)
        self._batches = resume[1] // self.batch_size if resume is not None and resume[0] == self._epoch else 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches": int(self._batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state`` (only over an :class:`EpochSampler`; another sampler, e.g. the
        sequential one of ``overfit_batches``, starts its epoch afresh)."""
        self._epoch, self._batches = int(state["epoch"]), int(state["batches"])
        if isinstance(self.sampler, EpochSampler):
            self.sampler.resume_at(self._epoch, self._batches * self.batch_size)


_START_METHODS = ("fork", "spawn", "forkserver")


class WindowDataModule(pl.LightningDataModule):
    """Windows of a data set made by ``sns-generate``.

    Args:
        data_dir: directory holding ``train.zarr`` and ``valid.zarr`` (``test.zarr`` optional).
        history: frames of context per window (the surrogates use 1).
        horizon: frames to predict per training window (>= the longest unroll).
        val_horizon: frames after the context in validation windows (rollout metric length).
        stride: frames between the starts of consecutive training windows.
        val_stride: frames between validation windows (default: ``history + val_horizon``,
            non-overlapping).
        batch_size: training batch size (per process under DDP).
        val_batch_size: validation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes (0: load in the main process).
        start_method: multiprocessing start method of the workers (``fork``, ``spawn``,
            ``forkserver``) or None for the platform default.
        in_memory: load each split into memory once (small data sets).
        pin_memory: pin host memory (GPU training).
        max_val_windows: use at most this many validation windows (evenly spaced), None: all.
        seed: seed of the training order (:class:`EpochSampler`; sns-train passes its ``seed``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        history: int = 1,
        horizon: int = 1,
        val_horizon: int = 1,
        stride: int = 1,
        val_stride: int | None = None,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        start_method: str | None = None,
        in_memory: bool = False,
        pin_memory: bool = False,
        max_val_windows: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("history", history), ("horizon", horizon), ("val_horizon", val_horizon),
                            ("stride", stride), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WindowDataModule {name} must be a positive integer, got {value!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if start_method is not None and start_method not in _START_METHODS:
            raise ValueError(f"unknown start_method {start_method!r}; valid choices: {_START_METHODS} or None")
        if start_method is not None and start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start_method {start_method!r} is not available on this platform; "
                             f"valid choices: {multiprocessing.get_all_start_methods()}")
        self.data_dir = Path(data_dir)
        self.history, self.horizon, self.val_horizon = history, horizon, val_horizon
        self.stride = stride
        self.val_stride = val_stride if val_stride is not None else history + val_horizon
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.start_method = num_workers, start_method
        self.in_memory, self.pin_memory = in_memory, pin_memory
        self.max_val_windows = max_val_windows
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"WindowDataModule seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None
        self.test_set: WindowDataset | None = None

    def _split(self, split: str) -> Path:
        path = self.data_dir / f"{split}.zarr"
        if not path.exists():
            present = sorted(p.name for p in self.data_dir.glob("*.zarr")) if self.data_dir.exists() else []
            raise FileNotFoundError(
                f"{path} does not exist (found {present or 'nothing'} in {self.data_dir}); "
                "make the data set first, e.g. `sns-generate system=<name> preset=cpu out=<dir>`, or import one "
                "with `sns-import source=<file> out=<dir>`"
            )
        return path

    def setup(self, stage: str | None = None) -> None:
        """Open the split stores (metadata only unless ``in_memory``)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = WindowDataset(self._split("train"), self.history, self.horizon, self.stride,
                                           self.in_memory)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = WindowDataset(self._split("valid"), self.history, self.val_horizon, self.val_stride,
                                         self.in_memory)
        if stage == "test" and self.test_set is None:
            self.test_set = WindowDataset(self._split("test"), self.history, self.val_horizon, self.val_stride,
                                          self.in_memory)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one normalised state, ``(C, H, W)`` or ``(D,)`` (reads one window)."""
        ds = self.train_set or WindowDataset(self._split("train"), 1, 1, 1)
        return tuple(ds[0].shape[1:])

    def _loader(self, dataset, batch_size: int, drop_last: bool, sampler: EpochSampler | None = None) -> DataLoader:
        workers = self.num_workers
        cls = DataLoader if sampler is None else ResumableDataLoader
        return cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            multiprocessing_context=self.start_method if workers > 0 else None,
            # the workers' base seed from a generator of the loader's own: iterating never
            # draws from the global RNG (whose draws would then depend on num_workers)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _subset(self, dataset: WindowDataset):
        if self.max_val_windows is None or len(dataset) <= self.max_val_windows:
            return dataset
        from torch.utils.data import Subset

        step = len(dataset) / self.max_val_windows
        return Subset(dataset, [int(i * step) for i in range(self.max_val_windows)])

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        drop_last = len(self.train_set) >= self.batch_size
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(self.train_set, seed=self.seed, num_replicas=replicas, rank=rank)
        return self._loader(self.train_set, self.batch_size, drop_last, sampler)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self._subset(self.val_set), self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._loader(self._subset(self.test_set), self.val_batch_size, False)
