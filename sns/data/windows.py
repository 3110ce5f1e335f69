"""Windowed, normalised views of a split store for training.

:class:`WindowDataset` maps an index to a window of ``history + horizon``
consecutive frames of one trajectory, as a float32 tensor of shape
``(history + horizon, C, *spatial)`` (fields: ``C`` = 1 or the number of
layers; vectors: ``(T, D)``), normalised with the store's
``norm_offset``/``norm_scale`` attrs.  Windows start every ``stride`` frames.

The zarr array is opened lazily on first access in each process, so a
DataLoader with worker processes never shares (or reads) arrays opened in the
parent before the workers start.  ``in_memory=True`` loads the whole split once
(small data sets).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from sns.data import schema
from sns.data.io import check_store


class WindowDataset(Dataset):
    """Windows of ``history + horizon`` frames from one split store (see module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        history: int = 1,
        horizon: int = 1,
        stride: int = 1,
        in_memory: bool = False,
        trajectories: slice | None = None,
    ) -> None:
        for name, value in (("history", history), ("horizon", horizon), ("stride", stride)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.path = Path(path)
        attrs = check_store(self.path)  # metadata only
        self.system = attrs["system"]
        self.variable = attrs["variable"]
        self.history, self.horizon, self.stride = int(history), int(horizon), int(stride)
        self.window = self.history + self.horizon
        root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        shape = root[self.variable].shape  # metadata only
        self.n_traj_total, self.n_time = shape[0], shape[1]
        self.traj_index = np.arange(self.n_traj_total)[trajectories or slice(None)]
        if len(self.traj_index) == 0:
            which = "" if trajectories is None else f" (selection {trajectories} of {self.n_traj_total})"
            raise ValueError(f"split {self.path.stem!r} of {self.path} has no trajectories{which}")
        if self.n_time < self.window:
            raise ValueError(f"{self.path}: {self.n_time} frames < window {self.window}")
        self.per_traj = (self.n_time - self.window) // self.stride + 1
        # single-channel fields are stored (trajectory, time, y, x): a channel axis is added
        self.is_field = schema.layout(self.system, attrs)["dims"] == (schema.Y, schema.X)
        offset, scale = np.asarray(attrs["norm_offset"], np.float32), np.asarray(attrs["norm_scale"], np.float32)
        # broadcast over (T, C, *spatial) or (T, D)
        extra = len(shape) - 3 if not self.is_field else len(shape) - 2
        self._offset = torch.from_numpy(offset.reshape(-1, *([1] * extra)))
        self._scale = torch.from_numpy(scale.reshape(-1, *([1] * extra)))
        self._array = None
        self._memory = self._load_all() if in_memory else None

    def _load_all(self) -> np.ndarray:
        root = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        return np.asarray(root[self.variable][self.traj_index[0]:self.traj_index[-1] + 1])[
            self.traj_index - self.traj_index[0]
        ]

    def _arr(self):
        if self._array is None:  # first access in this process
            self._array = zarr.open_group(str(self.path), mode="r", use_consolidated=False)[self.variable]
        return self._array

    def __len__(self) -> int:
        return len(self.traj_index) * self.per_traj

    def locate(self, index: int) -> tuple[int, int]:
        """``(trajectory, first frame)`` of window ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"window index {index} out of range [0, {len(self)})")
        k, j = divmod(index, self.per_traj)
        return int(self.traj_index[k]), j * self.stride

    def __getitem__(self, index: int) -> torch.Tensor:
        traj, t0 = self.locate(index)
        if self._memory is not None:
            k = index // self.per_traj
            x = self._memory[k, t0:t0 + self.window]
        else:
            x = self._arr()[traj, t0:t0 + self.window]
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.is_field:
            x = x.unsqueeze(1)  # (T, 1, H, W)
        return (x - self._offset) / self._scale

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # never ship an open array to a worker
        return state

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of a tensor ``(..., C, *spatial)`` / ``(..., D)``."""
        return x * self._scale.to(x) + self._offset.to(x)
