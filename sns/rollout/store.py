"""The rollout store: a zarr v3 group streamed chunk by chunk, and its commit protocol.

Layout, commit order and why resume is exact: :mod:`sns.rollout`.  :class:`ZarrSink` creates,
validates, writes, commits and trims one store; :class:`MemorySink` is its in-memory stand-in
for short rollouts (``store=None``); :func:`open_rollout` reads a store back.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor

from sns.data import schema
from sns.rollout.callbacks import callback_states

__all__ = ["STATUSES", "MemorySink", "ZarrSink", "default_dims", "open_rollout"]

_ZARR_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")  #: a per-key temp of zarr.storage.LocalStore

# Names shared by writer and readers (dims declared once, in sns.data.schema).
TRAJECTORY_DIM = schema.TRAJECTORY
TIME_DIM = schema.TIME  # coordinate: physical time (step * dt) where dt is known, else the step
STEP_COORD = schema.STEP  # coordinate along TIME_DIM: the step index
LEGACY_PHYSICAL_TIME = schema.LEGACY_PHYSICAL_TIME
RMS_VARIABLE = "rms"
CALLS_VARIABLE = "calls"
CHECKPOINT_GROUP = "_checkpoint"
ATTR_PREFIX = "rollout_"

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_NONFINITE = "nonfinite"
STATUS_BLOWUP = "blowup"
STATUS_TIME_LIMIT = "time_limit"
STATUS_ABORTED = "aborted"
STATUSES = (STATUS_COMPLETED, STATUS_NONFINITE, STATUS_BLOWUP, STATUS_TIME_LIMIT, STATUS_ABORTED)
FINAL_STATUSES = (STATUS_COMPLETED, STATUS_NONFINITE, STATUS_BLOWUP, STATUS_ABORTED)

_DEFAULT_STATE_DIMS = {
    1: (schema.DIM,),
    2: (schema.Y, schema.X),
    3: (schema.CHANNEL, schema.Y, schema.X),
    4: (schema.CHANNEL, schema.Z, schema.Y, schema.X),
}


def default_dims(state_ndim: int) -> tuple[str, ...]:
    """Default dim names for states with ``state_ndim`` non-batch axes."""
    if state_ndim not in _DEFAULT_STATE_DIMS:
        raise ValueError(
            f"no default dim names for states with {state_ndim} non-batch axes "
            f"(defaults exist for {sorted(_DEFAULT_STATE_DIMS)}); pass dims=..."
        )
    return (TRAJECTORY_DIM, TIME_DIM, *_DEFAULT_STATE_DIMS[state_ndim])


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    try:
        return torch.empty((), dtype=dtype).numpy().dtype
    except TypeError as err:
        raise ValueError(
            f"state dtype {dtype} has no numpy equivalent; use float32 or float64"
        ) from err


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _is_dataset_store(path: Path) -> bool:
    """Whether ``path`` is a data-set split written by :mod:`sns.data` (its root attributes
    carry ``sns_schema``); read from ``zarr.json`` without opening the store."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attrs, dict) and attrs.get("sns_schema") == schema.SCHEMA_NAME




class MemorySink:
    """Keeps the states in memory (short rollouts, ``store=None``): one preallocated tensor."""

    path = None

    def __init__(self, batch: int, n_time: int, state_shape: tuple[int, ...], dtype: torch.dtype):
        self.data = torch.empty((batch, n_time, *state_shape), dtype=dtype)
        self.n_time = 0

    def write(self, start: int, states: Tensor, rms: np.ndarray, calls: np.ndarray | None) -> None:
        self.data[:, start : start + states.shape[1]] = states
        self.n_time = start + states.shape[1]

    def commit(self, **kwargs: Any) -> None:
        pass

    def states(self) -> Tensor:
        if self.n_time == self.data.shape[1]:
            return self.data
        return self.data[:, : self.n_time].clone()  # stopped early: free the rest


def _zarr_writes_atomically() -> bool:
    """zarr's LocalStore writes keys by temporary file + rename since 3.1.3 (PR #3412)."""
    parts = []
    for part in zarr.__version__.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= (3, 1, 3)


class ZarrSink:
    """Creates, validates, writes and commits one rollout store (see module docstring)."""

    def __init__(self, path: Path, root: zarr.Group) -> None:
        if not _zarr_writes_atomically():
            warnings.warn(
                f"zarr {zarr.__version__} writes store files in place: a rollout killed while "
                "writing may leave a corrupt store; zarr >= 3.1.3 writes atomically",
                RuntimeWarning,
                stacklevel=3,
            )
        self.path = path
        self.root = root
        self.var = root[root.attrs[ATTR_PREFIX + "config"]["variable"]]
        self.rms = root[RMS_VARIABLE]
        self.calls = root.get(CALLS_VARIABLE)
        self.ckpt = root[CHECKPOINT_GROUP]["state"]
        self.chunk = int(self.var.chunks[1])

    # ----- creation / opening
    @classmethod
    def create(
        cls,
        path: Path,
        *,
        config: dict[str, Any],
        x0: Tensor,
        chunk: int,
        store_dtype: np.dtype,
        dt: float | None,
        user_attrs: dict[str, Any],
    ) -> ZarrSink:
        batch, state_shape = x0.shape[0], tuple(x0.shape[1:])
        n_time = config["n_steps"] + 1
        dims = tuple(config["dims"])
        cls.remove_stale(path)
        tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex}")
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        var = root.create_array(
            config["variable"],
            shape=(batch, n_time, *state_shape),
            chunks=(1, chunk, *state_shape),
            dtype=store_dtype,
            fill_value=np.nan,
            dimension_names=dims,
            attributes={"coordinates": STEP_COORD},
        )
        del var
        root.create_array(
            RMS_VARIABLE,
            shape=(batch, n_time),
            chunks=(batch, chunk),
            dtype="float64",
            fill_value=np.nan,
            dimension_names=(TRAJECTORY_DIM, TIME_DIM),
            attributes={"long_name": "RMS of the state over all non-batch elements"},
        )
        if config["calls"]:
            root.create_array(
                CALLS_VARIABLE,
                shape=(batch, n_time),
                chunks=(batch, chunk),
                dtype="int32",
                fill_value=-1,
                dimension_names=(TRAJECTORY_DIM, TIME_DIM),
                attributes={"long_name": "network calls spent on the step that produced the state"},
            )
        root.create_array(
            TRAJECTORY_DIM, data=np.arange(batch, dtype=np.int64), dimension_names=(TRAJECTORY_DIM,)
        )
        if dt is not None:  # like a data set's time: physical
            root.create_array(
                TIME_DIM,
                data=np.arange(n_time, dtype=np.float64) * dt,
                dimension_names=(TIME_DIM,),
                attributes={"long_name": "physical time, step * dt", "dt": dt},
            )
        else:
            root.create_array(
                TIME_DIM,
                data=np.arange(n_time, dtype=np.int64),
                dimension_names=(TIME_DIM,),
                attributes={"long_name": "rollout step (no dt given)", "units": "steps"},
            )
        root.create_array(
            STEP_COORD,
            data=np.arange(n_time, dtype=np.int64),
            dimension_names=(TIME_DIM,),
            attributes={"long_name": "rollout step", "units": "steps"},
        )
        ckpt = root.create_group(CHECKPOINT_GROUP)
        ckpt.create_array(
            "state",
            shape=(2, batch, *state_shape),
            chunks=(1, batch, *state_shape),
            dtype=numpy_dtype(x0.dtype),
            fill_value=0,
        )
        try:
            from importlib.metadata import version

            sns_version = version("sns")
        except Exception:  # noqa: BLE001 - not installed as a distribution
            sns_version = "unknown"
        root.update_attributes(
            {
                **user_attrs,
                ATTR_PREFIX + "config": config,
                ATTR_PREFIX + "status": STATUS_RUNNING,
                ATTR_PREFIX + "steps_done": -1,
                ATTR_PREFIX + "stop_step": None,
                ATTR_PREFIX + "message": "",
                ATTR_PREFIX + "checkpoint": None,
                ATTR_PREFIX + "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                ATTR_PREFIX + "versions": {
                    "sns": sns_version,
                    "torch": torch.__version__,
                    "zarr": zarr.__version__,
                },
            }
        )
        os.rename(tmp, path)  # atomic: the store appears complete or not at all
        return cls(path, zarr.open_group(str(path), mode="r+", zarr_format=3))

    @staticmethod
    def open_existing(path: Path) -> zarr.Group | None:
        """The rollout group at ``path``, or None if ``path`` does not exist; raise if foreign."""
        if not path.exists():
            return None
        if not (path / "zarr.json").is_file():
            raise ValueError(
                f"{path} exists and is not a zarr store; choose another path"
                " (overwrite=True never deletes a directory that is not a zarr store)"
            )
        # zarr's LocalStore writes each key to ``<key>.<hex>.partial`` and renames it into place:
        # a SIGKILL in between leaves the temp file (the key keeps its old value, so resuming is
        # exact); only one rollout writes a store at a time, so none of them is in use
        for tmp in path.rglob("*.partial"):
            if _ZARR_TEMP.search(tmp.name) and tmp.is_file():
                tmp.unlink(missing_ok=True)
        root = zarr.open_group(str(path), mode="r+", zarr_format=3)
        if ATTR_PREFIX + "config" not in root.attrs:
            raise ValueError(
                f"{path} is a zarr store not written by sns.rollout (no "
                f"'{ATTR_PREFIX}config' attribute); pass overwrite=True to replace it "
                "or choose another path"
            )
        return root

    @staticmethod
    def remove_stale(path: Path) -> None:
        """Delete what a run killed while creating or deleting the store at ``path`` left next to
        it (``.<name>.partial-<hex>``, ``.<name>.deleting-<hex>``: no ``except`` runs on SIGKILL).
        Only one rollout writes a store at a time, so none of them is in use."""
        prefix = f".{path.name}."
        for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
            rest = p.name[len(prefix):]
            kind, _, tag = rest.partition("-")
            if kind in ("partial", "deleting") and len(tag) == 32 and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    def remove(path: Path) -> None:
        """Delete a zarr store (or empty directory) atomically enough: rename aside, then delete."""
        if not path.exists():
            return
        if not path.is_dir() or not ((path / "zarr.json").is_file() or not any(path.iterdir())):
            raise ValueError(
                f"overwrite=True refuses to delete {path}: it is not a zarr store; "
                "remove it yourself"
            )
        if _is_dataset_store(path):
            raise ValueError(
                f"overwrite=True refuses to delete {path}: it is a data-set split "
                f"(sns_schema={schema.SCHEMA_NAME!r}), never a rollout's output; choose another path"
            )
        aside = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex}")
        os.rename(path, aside)
        shutil.rmtree(aside)

    # ----- state
    def checkpoint(self) -> dict[str, Any] | None:
        return self.root.attrs[ATTR_PREFIX + "checkpoint"]

    def load_state(self, slot: int) -> np.ndarray:
        return self.ckpt[slot]

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.var[:, start:stop]

    # ----- writing
    def write(self, start: int, states: Tensor, rms: np.ndarray, calls: np.ndarray | None) -> None:
        stop = start + states.shape[1]
        self.var[:, start:stop] = states.numpy()
        self.rms[:, start:stop] = rms
        if self.calls is not None and calls is not None:
            self.calls[:, start:stop] = calls

    def commit(
        self,
        *,
        step: int,
        state: Tensor,
        generator: torch.Generator,
        callbacks: Sequence[Any],
        calls_stats: dict[str, int],
        wall_time_total: float,
        status: str,
        stop_step: int | None,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Steps 2 and 3 of the commit protocol (the data of the chunk is already written)."""
        old = self.checkpoint()
        slot = 0 if old is None else 1 - int(old["slot"])
        self.ckpt[slot] = state.detach().cpu().numpy()
        record = {
            "step": step,
            "slot": slot,
            "generator_state": base64.b64encode(generator.get_state().numpy().tobytes()).decode(),
            "callbacks": callback_states(callbacks),
            "calls": calls_stats,
            "wall_time_s": wall_time_total,
        }
        self.root.update_attributes(
            {
                ATTR_PREFIX + "checkpoint": record,
                ATTR_PREFIX + "status": status,
                ATTR_PREFIX + "steps_done": step,
                ATTR_PREFIX + "stop_step": stop_step,
                ATTR_PREFIX + "message": message,
                **(extra or {}),
            }
        )

    def trim(self, n_time: int) -> None:
        """Shrink every time-dependent array to ``n_time`` entries (after a final stop)."""
        for name, arr in self.root.arrays():
            dims = arr.metadata.dimension_names or ()
            if TIME_DIM in dims:
                axis = dims.index(TIME_DIM)
                if arr.shape[axis] != n_time:
                    shape = list(arr.shape)
                    shape[axis] = n_time
                    arr.resize(tuple(shape))


def open_rollout(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a rollout store lazily as an ``xarray.Dataset`` holding only the steps written.

    Time indices beyond ``rollout_steps_done`` (NaN fill of an unfinished run) are
    dropped; attributes are the store's (caller metadata plus ``rollout_*``).  Coordinates:
    ``time`` (physical time where the rollout had a ``dt``, else the step index) and ``step``
    (the step index); a store written before 2026-12-03 (``time`` = step, ``t`` = physical
    time) is presented the same way, its files unchanged.
    """
    ds = xr.open_zarr(os.fspath(path), consolidated=False)
    if ATTR_PREFIX + "config" not in ds.attrs:
        raise ValueError(f"{path} is not a rollout store (no '{ATTR_PREFIX}config' attribute)")
    if STEP_COORD not in ds.variables:  # the earlier layout
        steps = ds[TIME_DIM].values
        if LEGACY_PHYSICAL_TIME in ds.variables:
            physical = ds[LEGACY_PHYSICAL_TIME]
            ds = ds.drop_vars(LEGACY_PHYSICAL_TIME).assign_coords(
                {TIME_DIM: (TIME_DIM, physical.values, dict(physical.attrs))})
        ds = ds.assign_coords({STEP_COORD: (TIME_DIM, steps, {"long_name": "rollout step", "units": "steps"})})
    return ds.isel({TIME_DIM: slice(0, int(ds.attrs[ATTR_PREFIX + "steps_done"]) + 1)})
