"""The rollout loop: :func:`rollout` and what it returns (contract, layout, resume: :mod:`sns.rollout`)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sns.rollout.callbacks import call_hook, restore_callbacks, state_rms
from sns.rollout.stepper import (
    StopRollout,
    accepts_generator,
    check_step_output,
    counts_calls,
    read_calls,
)
from sns.rollout.store import (
    ATTR_PREFIX,
    CALLS_VARIABLE,
    CHECKPOINT_GROUP,
    FINAL_STATUSES,
    LEGACY_PHYSICAL_TIME,
    RMS_VARIABLE,
    STATUS_ABORTED,
    STATUS_BLOWUP,
    STATUS_COMPLETED,
    STATUS_NONFINITE,
    STATUS_RUNNING,
    STATUS_TIME_LIMIT,
    STEP_COORD,
    TIME_DIM,
    TRAJECTORY_DIM,
    MemorySink,
    ZarrSink,
    default_dims,
    torch_dtype,
)

log = logging.getLogger(__name__)

__all__ = ["ON_FAILURE", "RolloutResult", "rollout"]

ON_FAILURE = ("stop", "retire")  #: what one trajectory's non-finite or blown-up state does
RETIRED_ATTR = ATTR_PREFIX + "retired"


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
    #: ``on_failure="retire"``: trajectory -> the step whose state was rejected (its stored
    #: states are NaN from that step on); empty when every trajectory ran to the end
    retired: dict[int, int] = field(default_factory=dict)


def _digest(x: Tensor) -> str:
    arr = np.ascontiguousarray(x.detach().cpu().numpy())
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


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
    on_failure: str = "stop",
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
        on_failure: what a non-finite or blown-up state of one trajectory does.  ``"stop"``
            (default): the whole rollout stops at that step (status ``nonfinite`` / ``blowup``;
            the store is trimmed to the steps before it).  ``"retire"``: only that trajectory
            stops; its stored states (and ``rms``) are NaN from the rejected step on, the
            stepper keeps being handed its last good state (so the batch keeps its shape and
            the generator its draws: the other trajectories are bit-identical to a run in which
            nothing failed), its outputs are discarded and its network calls are not counted.
            The store records ``rollout_retired`` (``{trajectory: step}``, JSON keys are
            strings) and the result ``retired``; when the last trajectory is retired the rollout
            stops as with ``"stop"``.  Callbacks see the NaN rows (the library's own are
            NaN-aware).

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
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    batch, state_shape = x0.shape[0], tuple(x0.shape[1:])
    pass_generator = accepts_generator(step)
    has_counter = counts_calls(step)
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
    if on_failure != "stop":  # absent for the default, so stores written before the option resume
        config["on_failure"] = on_failure
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
    retired: dict[int, int] = {}  # trajectory -> rejected step (on_failure="retire")

    sink: MemorySink | ZarrSink
    if store is None:
        sink = MemorySink(batch, n_steps + 1, state_shape, torch_dtype(store_np_dtype))
    else:
        path = Path(store)
        if overwrite:
            ZarrSink.remove(path)
        root = ZarrSink.open_existing(path)
        if root is None:
            sink = ZarrSink.create(
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
            sink = ZarrSink(path, root)
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
                retired = {int(k): int(v) for k, v in (root.attrs.get(RETIRED_ATTR) or {}).items()}
                wall_prior = float(record["wall_time_s"])
                restore_callbacks(callbacks, record["callbacks"], sink.read, last_written, chunk)
            status = root.attrs[ATTR_PREFIX + "status"]
            if status in FINAL_STATUSES:
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
                    retired,
                )

    # ---------------------------------------------------------------- the loop
    buf = torch.empty(
        (batch, chunk, *state_shape), dtype=torch_dtype(store_np_dtype), device=device
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
            call_hook(cb, "on_step", t, state)

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
        if on_failure == "retire":
            extra = {**(extra or {}), RETIRED_ATTR: {str(k): v for k, v in sorted(retired.items())}}
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
                call_hook(cb, "on_chunk", buf_start, states)
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
                check_step_output(x, x_new, dtype=True, step=t)
                if version is not None and _version(x) != version:
                    raise ValueError(
                        f"the stepper modified its input in place at step {t}; it must leave it "
                        "intact (the previous state is kept for checkpoints and guards)"
                    )
                calls = read_calls(step, batch) if has_counter else None
                rms = state_rms(x_new).cpu().numpy()
                if on_failure == "retire":
                    x_new, rms, calls = _retire_failures(x, x_new, rms, calls, retired, t, data_rms, blowup_factor)
                live = np.where(np.isin(np.arange(batch), list(retired)), 0.0, rms) if retired else rms
                if not np.isfinite(live).all():
                    bad = np.flatnonzero(~np.isfinite(live)).tolist()
                    status, stop_step = STATUS_NONFINITE, t
                    message = f"non-finite state at step {t} in trajectories {bad}"
                    break
                if data_rms is not None and (live > blowup_factor * data_rms).any():
                    bad = np.flatnonzero(live > blowup_factor * data_rms).tolist()
                    status, stop_step = STATUS_BLOWUP, t
                    message = (
                        f"blow-up at step {t}: RMS {live.max():.4g} > {blowup_factor:g} x data RMS "
                        f"{data_rms:.4g} in trajectories {bad}"
                    )
                    break
                x = x_new
                if calls is not None:
                    calls_stats["sum"] += int(calls.sum())
                    calls_stats["count"] += batch - len(retired)
                    calls_stats["max"] = max(calls_stats["max"], int(calls.max()))
                push(t, _nan_rows(x, retired) if retired else x, rms, calls)
                bar.update(1)
                if t == n_steps:
                    status = STATUS_COMPLETED
                    if retired:
                        message = (f"{len(retired)} of {batch} trajectories retired (trajectory: step "
                                   f"{dict(sorted(retired.items()))})")
                    flush(t, status, message=message)
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
        if isinstance(sink, ZarrSink):
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
        retired,
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
        STEP_COORD,
        LEGACY_PHYSICAL_TIME,
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


def _finish(
    sink: MemorySink | ZarrSink,
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
    retired: Mapping[int, int] | None = None,
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
        callbacks=[call_hook(cb, "on_end", steps_done, status) for cb in callbacks],
        states=sink.states() if isinstance(sink, MemorySink) else None,
        resumed_from=resumed_from,
        message=message,
        retired=dict(sorted((retired or {}).items())),
    )


def _retire_failures(x: Tensor, x_new: Tensor, rms: np.ndarray, calls: np.ndarray | None, retired: dict[int, int],
                     t: int, data_rms: float | None, blowup_factor: float
                     ) -> tuple[Tensor, np.ndarray, np.ndarray | None]:
    """``on_failure="retire"`` at step ``t``: record in ``retired`` the trajectories whose new state
    is non-finite or blown up -- unless that would retire every one, which the caller then stops
    as a failure -- and return ``(x_new, rms, calls)`` with every retired row handed its last
    good state back (its output discarded), its RMS NaN and its calls 0."""
    rms = rms.copy()
    rms[sorted(retired)] = 0.0  # earlier retirees' outputs do not count
    failed = ~np.isfinite(rms)
    if data_rms is not None:
        failed |= rms > blowup_factor * data_rms
    new = np.flatnonzero(failed).tolist()
    if new and len(retired) + len(new) >= len(rms):
        return x_new, rms, calls  # the last trajectories fail: the rollout stops
    for i in new:
        retired[i] = t
        log.warning("rollout: trajectory %d retired at step %d (RMS %s)", i, t, rms[i])
    if not retired:
        return x_new, rms, calls
    gone = sorted(retired)
    out = x_new.clone()
    out[gone] = x[gone]
    rms[gone] = np.nan
    if calls is not None:
        calls = np.asarray(calls).copy()
        calls[gone] = 0
    return out, rms, calls


def _nan_rows(x: Tensor, rows: Mapping[int, int]) -> Tensor:
    """``x`` with the rows of the retired trajectories set to NaN (what the store records)."""
    out = x.clone()
    out[sorted(rows)] = float("nan")
    return out
