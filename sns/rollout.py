"""Generic autoregressive rollout over any stepper, streamed to zarr, with guards and resume.

A *stepper* is any callable mapping a batch of states to the next states::

    x_{n} = step(x_{n-1}),      x: (B, *state_shape)  ->  (B, *state_shape)

(fields ``(B, C, H, W)``, vector states ``(B, D)``).  :func:`rollout` iterates it
``n_steps`` times from ``x0`` -- the higher-order function of jax-cfd's
``funcutils.trajectory`` -- and knows nothing about models, channels or physics.

Stepper contract
----------------
* ``step(x) -> x_next`` with the same shape, dtype and device as ``x``, leaving
  ``x`` intact (no in-place update: the previous state is kept for the
  checkpoint and the guards; detected through torch's version counter).  It is
  called under ``torch.no_grad()`` (a stepper that needs autograd inside enables
  it itself).  It must be deterministic given its input and the generator state
  (fixed batch size, same device): that is what makes resume exact.  The rollout
  owns no model: stepping a model in ``eval()`` mode, on the right device, is the
  stepper's business.
* **Randomness.**  If the stepper has a parameter named ``generator`` (for an
  ``nn.Module``: its ``forward`` does), it is called as ``step(x, generator=g)``
  with a ``torch.Generator`` on ``x0.device`` that the rollout seeds from
  ``seed`` and saves with every chunk.  A stochastic stepper must draw all its
  randomness from that generator (``torch.randn(..., generator=g)``); randomness
  from the global RNG is neither reproducible nor resumable.
* **Network-call counter (optional).**  A stepper that declares an attribute
  ``last_calls`` (``None`` before the first call) sets it on every call to the
  number of network evaluations that call spent on each sample: an ``int`` (same
  for every sample) or an integer tensor / array of shape ``(B,)``.  The rollout
  reads it after each call, stores it per step and per trajectory as the
  variable ``calls`` and reports its mean and maximum (DESIGN.md section 5,
  pitfall 6: record calls per step).

Store layout (xarray-compatible zarr v3 group; names in the constants below)
-----------------------------------------------------------------------------
* ``<variable>`` (default ``"state"``): dims ``dims`` (default
  ``("trajectory", "time", "channel", "y", "x")`` for ``(C, H, W)`` states,
  ``("trajectory", "time", "dim")`` for ``(D,)`` states), ``store_dtype``
  (float32 by default), chunked ``(1, chunk, *state_shape)``.  Time index ``n``
  holds the state after ``n`` steps; index 0 is ``x0``.  Unwritten entries are NaN.
* ``rms`` ``(trajectory, time)``: the per-sample RMS of the state
  ``sqrt(mean(x**2))`` over all non-batch elements (the blow-up statistic).
* ``calls`` ``(trajectory, time)`` int32, only for steppers with ``last_calls``
  (0 at time 0, -1 where unwritten).
* coordinates ``trajectory`` (index), ``time`` (steps, int64) and, if ``dt`` is
  given, ``t = time * dt`` (physical time, units of ``dt``).
* attributes: the caller's ``attrs`` (JSON-serialisable, top level) plus
  ``rollout_*`` keys: ``rollout_config`` (what identifies the run),
  ``rollout_status`` (``running`` | ``completed`` | ``nonfinite`` | ``blowup`` |
  ``aborted`` | ``time_limit``), ``rollout_steps_done``, ``rollout_stop_step``,
  ``rollout_message`` and ``rollout_checkpoint`` (resume record, below).
* subgroup ``_checkpoint`` (not seen by ``xr.open_zarr``): array ``state`` of
  shape ``(2, B, *state_shape)`` in the stepper's own dtype, two slots.

Read a store with :func:`open_rollout` (it trims to the steps written) or
``xr.open_zarr(path, consolidated=False)``.

Resume and why it is exact
--------------------------
Memory is flat in ``n_steps``: one chunk of states is buffered, written, reused.
Each completed chunk is *committed* in this order:

1. the chunk's data (``<variable>``, ``rms``, ``calls``) is written;
2. the full-precision last state goes into the *inactive* checkpoint slot;
3. one write of the root group's ``zarr.json`` records step, slot, generator
   state (base64 of ``Generator.get_state()``), callback states, call counts
   and status.

Only step 3 makes the chunk count.  zarr's ``LocalStore`` writes every key
atomically (temporary file, then rename; zarr-python PR #3412, zarr >= 3.1.3),
so a process killed at any point leaves either the old record, pointing at the
untouched old slot, or the new one.  Data written past the recorded step is
ignored and rewritten on resume with identical values, because the stepper is
deterministic given the restored state and generator state.  Hence a rollout
killed at any point and called again with the same arguments produces the same
store, bit for bit, as an uninterrupted one.  (Atomic against process death, not
against power loss: no fsync.)  A new store is built in a temporary directory
and renamed into place, so a kill during creation never leaves a half-made store (the next
creation of that store deletes such leftovers).
There is no locking: do not run two rollouts on one store at the same time.

On a second call with the same configuration a ``running`` or ``time_limit``
store is resumed; a ``completed``, ``nonfinite``, ``blowup`` or ``aborted`` store is final
and its result is returned without stepping.  A store with a different
configuration (shape, seed, n_steps, dtype, x0, guards, the caller's ``identity``:
model-file hashes, noise, refiner settings, ...) or a directory that
is not a rollout store raises ``ValueError`` naming what differs unless ``overwrite=True`` (which
never deletes a directory that is not a zarr store).

Guards
------
The rollout stops the whole batch at step ``k`` if any sample of ``x_k`` is
non-finite (status ``nonfinite``) or its RMS exceeds
``blowup_factor * data_rms`` (status ``blowup``); states ``0..k-1`` are kept,
the arrays are trimmed to them and ``rollout_stop_step = k``.  A stepper may end the
rollout itself by raising :class:`StopRollout` at step ``k`` (status ``aborted``, same
trimming, its message recorded).  With
``max_wall_time`` (seconds, this call) it stops cleanly at a step boundary with
status ``time_limit``; calling again continues.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor
from tqdm.auto import tqdm

from sns.data import schema

__all__ = [
    "STATUSES",
    "Callback",
    "RMSSeries",
    "RolloutResult",
    "RunningMoments",
    "Stepper",
    "StopRollout",
    "default_dims",
    "open_rollout",
    "rollout",
    "state_rms",
]

# Names shared by writer and readers (dims declared once, in sns.data.schema).
TRAJECTORY_DIM = schema.TRAJECTORY
TIME_DIM = schema.TIME
PHYSICAL_TIME = "t"
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
_FINAL = (STATUS_COMPLETED, STATUS_NONFINITE, STATUS_BLOWUP, STATUS_ABORTED)


class StopRollout(RuntimeError):
    """Raised by a stepper to end a rollout on purpose (e.g. the Thermalizer's level limit).

    The rollout catches it, keeps the states up to the previous step, and records the status
    ``aborted`` with the exception's message (``rollout_message``) and ``trajectories`` (a list
    of the offending batch indices, or None) as ``rollout_bad_trajectories``.
    """

    def __init__(self, message: str, trajectories: list[int] | None = None) -> None:
        super().__init__(message)
        self.trajectories = trajectories

_DEFAULT_STATE_DIMS = {
    1: (schema.DIM,),
    2: (schema.Y, schema.X),
    3: (schema.CHANNEL, schema.Y, schema.X),
    4: (schema.CHANNEL, schema.Z, schema.Y, schema.X),
}


@runtime_checkable
class Stepper(Protocol):
    """``x_{n-1} (B, *state_shape) -> x_n`` (see the module docstring for the contract)."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


# --------------------------------------------------------------------------- callbacks


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
    ``(B, D)`` the default 1 gives moments per component.
    """

    def __init__(self, channel_axis: int = 1) -> None:
        if channel_axis == 0:
            raise ValueError("channel_axis must not be 0 (the batch axis)")
        self.channel_axis = channel_axis
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def on_step(self, step: int, x: Tensor) -> None:
        values = x.detach().to(torch.float64).movedim(self.channel_axis, 0).flatten(1)
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


# --------------------------------------------------------------------------- result


@dataclass
class RolloutResult:
    """What :func:`rollout` returns (memory independent of ``n_steps`` unless ``store=None``)."""

    steps_done: int  #: steps completed and kept: states 0..steps_done exist
    status: str  #: one of STATUSES
    stop_step: int | None  #: step whose state was rejected (nonfinite / blowup), else None
    calls_mean: float | None  #: mean network calls per sample per step (None: no counter)
    calls_max: int | None  #: max network calls of one sample in one step
    wall_time: float  #: seconds spent in this call
    wall_time_total: float  #: seconds over all calls on this store
    path: Path | None  #: the zarr store, None for in-memory rollouts
    final_state: Tensor  #: x_{steps_done}, stepper dtype and device
    callbacks: list[Any] = field(default_factory=list)  #: on_end results, in order
    states: Tensor | None = None  #: (B, steps_done + 1, *state_shape), only if store=None
    resumed_from: int | None = None  #: step the call resumed from (None: fresh start)
    message: str = ""  #: human-readable reason of the stop


# --------------------------------------------------------------------------- helpers


def state_rms(x: Tensor) -> Tensor:
    """Per-sample RMS ``sqrt(mean(x**2))`` over all non-batch elements, float64 ``(B,)``.

    Computed in float64 (no overflow for finite float32 states); NaN or inf in a
    sample propagates to its RMS.
    """
    flat = x.detach().reshape(x.shape[0], -1)
    return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64) / math.sqrt(flat.shape[1])


def default_dims(state_ndim: int) -> tuple[str, ...]:
    """Default dim names for states with ``state_ndim`` non-batch axes."""
    if state_ndim not in _DEFAULT_STATE_DIMS:
        raise ValueError(
            f"no default dim names for states with {state_ndim} non-batch axes "
            f"(defaults exist for {sorted(_DEFAULT_STATE_DIMS)}); pass dims=..."
        )
    return (TRAJECTORY_DIM, TIME_DIM, *_DEFAULT_STATE_DIMS[state_ndim])


def _accepts_generator(step: Callable[..., Tensor]) -> bool:
    target = step.forward if isinstance(step, torch.nn.Module) else step
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("generator")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    try:
        return torch.empty((), dtype=dtype).numpy().dtype
    except TypeError as err:
        raise ValueError(
            f"state dtype {dtype} has no numpy equivalent; use float32 or float64"
        ) from err


def _digest(x: Tensor) -> str:
    arr = np.ascontiguousarray(x.detach().cpu().numpy())
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _is_dataset_store(path: Path) -> bool:
    """Whether ``path`` is a data-set split written by :mod:`sns.data` (its root attributes
    carry ``sns_schema``); read from ``zarr.json`` without opening the store."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attrs, dict) and attrs.get("sns_schema") == schema.SCHEMA_NAME


def _check_identity(identity: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``identity`` as it reads back from JSON (dict of JSON values), or None."""
    if identity is None:
        return None
    if not isinstance(identity, Mapping):
        raise TypeError(f"identity must be a mapping or None, got {type(identity).__name__}")
    try:
        return json.loads(json.dumps(dict(identity), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"identity must be JSON-serialisable: {err}") from err


def _config_diff(
    stored: Mapping[str, Any], now: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, tuple[Any, Any]]]:
    """Entries that differ between two run configurations, nested dicts by dotted key, sorted;
    a key present on one side only reads as None on the other."""
    out: list[tuple[str, tuple[Any, Any]]] = []
    for k in sorted(set(stored) | set(now)):
        a, b = stored.get(k), now.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_config_diff(a, b, f"{prefix}{k}."))
        elif a != b:
            out.append((f"{prefix}{k}", (a, b)))
    return out


def _read_calls(step: Any, batch: int) -> np.ndarray:
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


def _callback_key(i: int, cb: Any) -> str:
    return f"{i}:{type(cb).__name__}"


def _callback_states(callbacks: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for i, cb in enumerate(callbacks):
        sd = cb.state_dict() if hasattr(cb, "state_dict") else None
        if sd is not None:
            out[_callback_key(i, cb)] = sd
    return out


def _cb(cb: Any, name: str, *args: Any) -> Any:
    fn = getattr(cb, name, None)
    return fn(*args) if fn is not None else None


# --------------------------------------------------------------------------- sinks


class _MemorySink:
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


class _ZarrSink:
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
    ) -> _ZarrSink:
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
            attributes={"coordinates": PHYSICAL_TIME} if dt is not None else {},
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
        root.create_array(
            TIME_DIM,
            data=np.arange(n_time, dtype=np.int64),
            dimension_names=(TIME_DIM,),
            attributes={"long_name": "rollout step", "units": "steps"},
        )
        if dt is not None:
            root.create_array(
                PHYSICAL_TIME,
                data=np.arange(n_time, dtype=np.float64) * dt,
                dimension_names=(TIME_DIM,),
                attributes={"long_name": "physical time, step * dt", "dt": dt},
            )
        ckpt = root.create_group(CHECKPOINT_GROUP)
        ckpt.create_array(
            "state",
            shape=(2, batch, *state_shape),
            chunks=(1, batch, *state_shape),
            dtype=_numpy_dtype(x0.dtype),
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
            "callbacks": _callback_states(callbacks),
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


# --------------------------------------------------------------------------- rollout


def rollout(
    step: Callable[..., Tensor],
    x0: Tensor,
    n_steps: int,
    *,
    store: str | os.PathLike[str] | None = None,
    chunk: int = 64,
    dims: Sequence[str] | None = None,
    variable: str = "state",
    dt: float | None = None,
    attrs: Mapping[str, Any] | None = None,
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    data_rms: float | None = None,
    blowup_factor: float = 10.0,
    max_wall_time: float | None = None,
    store_dtype: str | np.dtype = "float32",
    overwrite: bool = False,
    progress: bool | None = None,
    identity: Mapping[str, Any] | None = None,
) -> RolloutResult:
    """Roll ``step`` out ``n_steps`` times from ``x0``, streaming states to a zarr store.

    ``x_n = step(x_{n-1})`` (or ``step(x_{n-1}, generator=g)``, see the module
    docstring for the stepper contract, the store layout and the resume protocol).

    Args:
        step: the stepper, ``(B, *state_shape) -> (B, *state_shape)``.
        x0: initial states ``(B, *state_shape)``, real floating point; stored at time 0.
        n_steps: number of steps (>= 1); the store holds ``n_steps + 1`` states per trajectory.
        store: path of the zarr store (a directory), or None to keep the states in
            memory and return them in ``RolloutResult.states`` (short rollouts only).
        chunk: states per chunk along time: the write unit, the resume granularity
            and the memory buffer.  On resume the store's chunk length is used.
        dims: dim names of the stored variable, ``(trajectory, time, *state dims)``;
            default :func:`default_dims`.
        variable: name of the stored variable.
        dt: physical time between steps; adds the coordinate ``t = step * dt``.
        attrs: JSON-serialisable metadata stored as top-level attributes (keys must
            not start with ``"rollout_"``); written when the store is created.
        seed: seed of the ``torch.Generator`` handed to stochastic steppers.
        callbacks: :class:`Callback`-like objects (duck-typed: any subset of
            ``on_step``, ``on_chunk``, ``on_end``, ``state_dict``, ``load_state_dict``).
        data_rms: RMS of the data (same normalisation as the states); with it the
            rollout stops with status ``blowup`` when ``state_rms(x_n) >
            blowup_factor * data_rms`` for any sample.  None disables the check.
        blowup_factor: the multiple of ``data_rms`` that counts as blow-up (> 1).
        max_wall_time: seconds this call may run; at the first step boundary past it
            the rollout writes what it has and stops with status ``time_limit``.
        store_dtype: dtype of the stored states (float32 by default; the checkpoint
            keeps the stepper's own dtype, so resume is exact either way).
        overwrite: replace an existing store (a zarr store only) instead of
            resuming it or refusing a mismatched one.
        progress: show a tqdm bar on stderr; default: only if stderr is a terminal.
        identity: JSON-serialisable description of the stepper: everything that changes the
            states and that the rollout cannot see (content hashes of the model files, noise
            levels, refiner settings, ...).  It is part of the run's configuration
            (``rollout_config["identity"]``): a store written with another identity is
            refused instead of resumed, naming the entries that differ.

    Returns:
        A :class:`RolloutResult`.

    Raises:
        ValueError: bad arguments, a stepper output of the wrong shape or dtype, a
            path that is not a rollout store, or a store of another configuration.
    """
    dims, store_np_dtype, user_attrs = _check_arguments(
        x0,
        n_steps,
        chunk,
        dims,
        variable,
        dt,
        attrs,
        seed,
        data_rms,
        blowup_factor,
        max_wall_time,
        store_dtype,
    )
    batch, state_shape = x0.shape[0], tuple(x0.shape[1:])
    pass_generator = _accepts_generator(step)
    has_counter = hasattr(step, "last_calls")
    config = {  # what identifies a run: a store with another config is refused
        "n_steps": n_steps,
        "batch": batch,
        "state_shape": list(state_shape),
        "state_dtype": str(x0.dtype),
        "device": x0.device.type,  # generator states and exactness are per device type
        "store_dtype": store_np_dtype.name,
        "dims": list(dims),
        "variable": variable,
        "dt": dt,
        "seed": seed,
        "generator": pass_generator,
        "calls": has_counter,
        "data_rms": data_rms,
        "blowup_factor": blowup_factor if data_rms is not None else None,
        "x0_sha256": _digest(x0),
        "identity": _check_identity(identity),
    }
    config = json.loads(json.dumps(config))  # as it reads back from the store

    # ---------------------------------------------------------------- sink and start point
    t_start = time.perf_counter()
    device = x0.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    callbacks = list(callbacks)
    calls_stats = {"sum": 0, "count": 0, "max": 0}
    wall_prior = 0.0
    resumed_from: int | None = None
    x = x0.detach()
    last_written = -1  # highest time index committed

    sink: _MemorySink | _ZarrSink
    if store is None:
        sink = _MemorySink(batch, n_steps + 1, state_shape, _torch_dtype(store_np_dtype))
    else:
        path = Path(store)
        if overwrite:
            _ZarrSink.remove(path)
        root = _ZarrSink.open_existing(path)
        if root is None:
            sink = _ZarrSink.create(
                path,
                config=config,
                x0=x0,
                chunk=chunk,
                store_dtype=store_np_dtype,
                dt=dt,
                user_attrs=user_attrs,
            )
        else:
            stored = dict(root.attrs[ATTR_PREFIX + "config"])
            diff = _config_diff(stored, config)
            if diff:
                lines = "; ".join(f"{k}: store {a!r} vs now {b!r}" for k, (a, b) in diff)
                empty = root.attrs.get(ATTR_PREFIX + "checkpoint") is None
                raise ValueError(
                    f"{path} holds a rollout of another configuration ({lines}); "
                    + ("it holds no committed step (a start that failed); " if empty else "")
                    + "refusing to resume it: pass overwrite=True to replace it or choose "
                    "another path"
                )
            sink = _ZarrSink(path, root)
            chunk = sink.chunk
            record = sink.checkpoint()
            if record is not None:
                last_written = int(record["step"])
                resumed_from = last_written
                x = torch.from_numpy(sink.load_state(int(record["slot"]))).to(
                    device=device, dtype=x0.dtype
                )
                state = np.frombuffer(base64.b64decode(record["generator_state"]), dtype=np.uint8)
                generator.set_state(torch.from_numpy(state.copy()))
                calls_stats = dict(record["calls"])
                wall_prior = float(record["wall_time_s"])
                _restore_callbacks(callbacks, record["callbacks"], sink, last_written, chunk)
            status = root.attrs[ATTR_PREFIX + "status"]
            if status in _FINAL:
                if status != STATUS_COMPLETED:  # idempotent: finishes a trim cut short by a kill
                    sink.trim(last_written + 1)
                return _finish(
                    sink,
                    callbacks,
                    x,
                    last_written,
                    status,
                    root.attrs[ATTR_PREFIX + "stop_step"],
                    root.attrs[ATTR_PREFIX + "message"],
                    calls_stats,
                    0.0,
                    wall_prior,
                    resumed_from,
                )

    # ---------------------------------------------------------------- the loop
    buf = torch.empty(
        (batch, chunk, *state_shape), dtype=_torch_dtype(store_np_dtype), device=device
    )
    buf_rms = np.empty((batch, chunk), dtype=np.float64)
    buf_calls = np.zeros((batch, chunk), dtype=np.int32) if has_counter else None
    buf_start = last_written + 1
    n_buf = 0

    def push(t: int, state: Tensor, rms: np.ndarray, calls: np.ndarray | None) -> None:
        nonlocal n_buf
        buf[:, n_buf].copy_(state)
        buf_rms[:, n_buf] = rms
        if buf_calls is not None:
            buf_calls[:, n_buf] = 0 if calls is None else calls
        n_buf += 1
        for cb in callbacks:
            _cb(cb, "on_step", t, state)

    def flush(
        t: int,
        status: str,
        stop_step: int | None = None,
        message: str = "",
        extra: dict[str, Any] | None = None,
    ) -> None:
        nonlocal n_buf, buf_start, last_written
        if n_buf:
            states = buf[:, :n_buf].cpu()
            sink.write(
                buf_start,
                states,
                buf_rms[:, :n_buf],
                None if buf_calls is None else buf_calls[:, :n_buf],
            )
        sink.commit(
            step=t,
            state=x,
            generator=generator,
            callbacks=callbacks,
            calls_stats=dict(calls_stats),
            wall_time_total=wall_prior + time.perf_counter() - t_start,
            status=status,
            stop_step=stop_step,
            message=message,
            extra=extra,
        )
        if n_buf:
            for cb in callbacks:
                _cb(cb, "on_chunk", buf_start, states)
        last_written = t
        buf_start, n_buf = t + 1, 0

    status, stop_step, message = STATUS_RUNNING, None, ""
    t = last_written
    if t < 0:  # fresh start: x0 is time index 0
        t = 0
        push(0, x, state_rms(x).cpu().numpy(), None)
        if chunk == 1:
            flush(0, STATUS_RUNNING)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(
        total=n_steps, initial=t, disable=not show, desc="rollout", unit="step", file=sys.stderr
    )
    limit = None if max_wall_time is None else t_start + max_wall_time
    bad: list[int] = []
    try:
        with torch.no_grad():
            while t < n_steps:
                version = _version(x)
                try:
                    x_new = step(x, generator=generator) if pass_generator else step(x)
                except StopRollout as err:
                    t += 1
                    status, stop_step = STATUS_ABORTED, t
                    message = f"stopped by the stepper at step {t}: {err}"
                    bad = list(err.trajectories or [])
                    break
                t += 1
                if (
                    not isinstance(x_new, Tensor)
                    or x_new.shape != x.shape
                    or x_new.dtype != x.dtype
                ):
                    raise ValueError(
                        f"the stepper must return a tensor of shape {tuple(x.shape)} and dtype "
                        f"{x.dtype}; at step {t} it returned "
                        f"{type(x_new).__name__} {tuple(getattr(x_new, 'shape', ()))} "
                        f"{getattr(x_new, 'dtype', '')}"
                    )
                if version is not None and _version(x) != version:
                    raise ValueError(
                        f"the stepper modified its input in place at step {t}; it must leave it "
                        "intact (the previous state is kept for checkpoints and guards)"
                    )
                calls = _read_calls(step, batch) if has_counter else None
                rms = state_rms(x_new).cpu().numpy()
                if not np.isfinite(rms).all():
                    bad = np.flatnonzero(~np.isfinite(rms)).tolist()
                    status, stop_step = STATUS_NONFINITE, t
                    message = f"non-finite state at step {t} in trajectories {bad}"
                    break
                if data_rms is not None and (rms > blowup_factor * data_rms).any():
                    bad = np.flatnonzero(rms > blowup_factor * data_rms).tolist()
                    status, stop_step = STATUS_BLOWUP, t
                    message = (
                        f"blow-up at step {t}: RMS {rms.max():.4g} > {blowup_factor:g} x data RMS "
                        f"{data_rms:.4g} in trajectories {bad}"
                    )
                    break
                x = x_new
                if calls is not None:
                    calls_stats["sum"] += int(calls.sum())
                    calls_stats["count"] += batch
                    calls_stats["max"] = max(calls_stats["max"], int(calls.max()))
                push(t, x, rms, calls)
                bar.update(1)
                if t == n_steps:
                    status = STATUS_COMPLETED
                    flush(t, status)
                elif (t + 1) % chunk == 0:  # chunk boundary: aligned with the zarr chunks
                    flush(t, STATUS_RUNNING)
                if t < n_steps and limit is not None and time.perf_counter() >= limit:
                    status = STATUS_TIME_LIMIT
                    message = f"wall-clock cap of {max_wall_time:g} s reached after step {t}"
                    flush(t, status, message=message)
                    break
    finally:
        bar.close()

    if status in (STATUS_NONFINITE, STATUS_BLOWUP, STATUS_ABORTED):
        flush(
            stop_step - 1,
            status,
            stop_step=stop_step,
            message=message,
            extra={ATTR_PREFIX + "bad_trajectories": bad},
        )
        if isinstance(sink, _ZarrSink):
            sink.trim(stop_step)
    if show:
        print(f"rollout: {status} after {last_written} steps {message}".rstrip(), file=sys.stderr)
    return _finish(
        sink,
        callbacks,
        x,
        last_written,
        status,
        stop_step,
        message,
        calls_stats,
        time.perf_counter() - t_start,
        wall_prior + time.perf_counter() - t_start,
        resumed_from,
    )


def _check_arguments(
    x0: Tensor,
    n_steps: int,
    chunk: int,
    dims: Sequence[str] | None,
    variable: str,
    dt: float | None,
    attrs: Mapping[str, Any] | None,
    seed: int,
    data_rms: float | None,
    blowup_factor: float,
    max_wall_time: float | None,
    store_dtype: str | np.dtype,
) -> tuple[tuple[str, ...], np.dtype, dict[str, Any]]:
    """Validate :func:`rollout`'s arguments; return (dims, store dtype, JSON-normalised attrs)."""
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError(
            f"x0 must be a tensor of shape (B, *state_shape), got {getattr(x0, 'shape', x0)!r}"
        )
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be real floating point, got dtype {x0.dtype}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if data_rms is not None and not (data_rms > 0 and math.isfinite(data_rms)):
        raise ValueError(f"data_rms must be a positive finite number or None, got {data_rms!r}")
    if not blowup_factor > 1:
        raise ValueError(f"blowup_factor must be > 1, got {blowup_factor!r}")
    if max_wall_time is not None and not max_wall_time >= 0:
        raise ValueError(f"max_wall_time must be >= 0 seconds or None, got {max_wall_time!r}")
    if dt is not None and not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive finite number or None, got {dt!r}")
    store_np_dtype = np.dtype(store_dtype)
    if store_np_dtype.kind != "f":
        raise ValueError(
            f"store_dtype must be a floating dtype (float16/32/64), got {store_dtype!r}"
        )
    dims = tuple(dims) if dims is not None else default_dims(x0.ndim - 1)
    if len(dims) != x0.ndim + 1 or len(set(dims)) != len(dims):
        raise ValueError(
            f"dims must name {x0.ndim + 1} distinct axes (trajectory, time, *state axes) for x0 "
            f"of shape {tuple(x0.shape)}, got {dims!r}"
        )
    reserved = {
        RMS_VARIABLE,
        CALLS_VARIABLE,
        TIME_DIM,
        PHYSICAL_TIME,
        TRAJECTORY_DIM,
        CHECKPOINT_GROUP,
    }
    if variable in reserved | set(dims):
        raise ValueError(
            f"variable name {variable!r} is reserved; avoid {sorted(reserved | set(dims))}"
        )
    user_attrs = dict(attrs or {})
    bad_keys = [k for k in user_attrs if not isinstance(k, str) or k.startswith(ATTR_PREFIX)]
    if bad_keys:
        raise ValueError(
            f"attrs keys must be strings not starting with {ATTR_PREFIX!r}, got {bad_keys}"
        )
    try:
        user_attrs = json.loads(json.dumps(user_attrs, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"attrs must be JSON-serialisable: {err}") from err
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains non-finite values")
    return dims, store_np_dtype, user_attrs


def _version(x: Tensor) -> int | None:
    """Autograd's version counter of ``x`` (bumped by in-place ops); None for inference tensors."""
    try:
        return x._version
    except RuntimeError:
        return None


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _restore_callbacks(
    callbacks: Sequence[Any], saved: Mapping[str, Any], sink: _ZarrSink, last: int, chunk: int
) -> None:
    """Load saved callback states; replay the stored states 0..last into the others."""
    replay = []
    for i, cb in enumerate(callbacks):
        key = _callback_key(i, cb)
        if key in saved and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(saved[key])
        else:
            replay.append(cb)
    if not replay or last < 0:
        return
    for start in range(0, last + 1, chunk):
        states = torch.from_numpy(sink.read(start, min(start + chunk, last + 1)))
        for j in range(states.shape[1]):
            for cb in replay:
                _cb(cb, "on_step", start + j, states[:, j])
        for cb in replay:
            _cb(cb, "on_chunk", start, states)


def _finish(
    sink: _MemorySink | _ZarrSink,
    callbacks: Sequence[Any],
    x: Tensor,
    steps_done: int,
    status: str,
    stop_step: int | None,
    message: str,
    calls_stats: Mapping[str, int],
    wall: float,
    wall_total: float,
    resumed_from: int | None,
) -> RolloutResult:
    count = calls_stats["count"]
    return RolloutResult(
        steps_done=steps_done,
        status=status,
        stop_step=stop_step,
        calls_mean=calls_stats["sum"] / count if count else None,
        calls_max=calls_stats["max"] if count else None,
        wall_time=wall,
        wall_time_total=wall_total,
        path=sink.path,
        final_state=x,
        callbacks=[_cb(cb, "on_end", steps_done, status) for cb in callbacks],
        states=sink.states() if isinstance(sink, _MemorySink) else None,
        resumed_from=resumed_from,
        message=message,
    )


def open_rollout(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a rollout store lazily as an ``xarray.Dataset`` holding only the steps written.

    Time indices beyond ``rollout_steps_done`` (NaN fill of an unfinished run) are
    dropped; attributes are the store's (caller metadata plus ``rollout_*``).
    """
    ds = xr.open_zarr(os.fspath(path), consolidated=False)
    if ATTR_PREFIX + "config" not in ds.attrs:
        raise ValueError(f"{path} is not a rollout store (no '{ATTR_PREFIX}config' attribute)")
    return ds.isel({TIME_DIM: slice(0, int(ds.attrs[ATTR_PREFIX + "steps_done"]) + 1)})
