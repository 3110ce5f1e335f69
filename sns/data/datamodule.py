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
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from sns.data.windows import WindowDataset

__all__ = ["WindowDataModule"]

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
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None
        self.test_set: WindowDataset | None = None

    def _split(self, split: str) -> Path:
        path = self.data_dir / f"{split}.zarr"
        if not path.exists():
            present = sorted(p.name for p in self.data_dir.glob("*.zarr")) if self.data_dir.exists() else []
            raise FileNotFoundError(
                f"{path} does not exist (found {present or 'nothing'} in {self.data_dir}); "
                "make the data set first, e.g. `sns-generate system=<name> preset=cpu out=<dir>`"
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

    def _loader(self, dataset, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            multiprocessing_context=self.start_method if workers > 0 else None,
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
        return self._loader(self.train_set, self.batch_size, True, drop_last)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self._subset(self.val_set), self.val_batch_size, False, False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._loader(self._subset(self.test_set), self.val_batch_size, False, False)
