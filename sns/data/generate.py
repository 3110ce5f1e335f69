"""Generate self-describing data sets: spin up, integrate, observe, write zarr.

Layout and names are in :mod:`sns.data.schema`.  Guarantees:

* **Reproducible per trajectory.**  Trajectory ``i`` of split ``s`` starts from
  an initial condition drawn with its own generator seeded by
  ``(seed, s, i)``, so the data do not depend on batch size, sharding or
  resumption.
* **Atomic.**  Each split is written to ``<split>.zarr.partial`` and renamed to
  ``<split>.zarr`` only once complete and carrying its normalisation attrs.
* **Resumable.**  After every batch of trajectories the partial store records
  how many are complete; an interrupted run continues from there (a batch
  whose data were written but not recorded is recomputed, identically).
* **Shardable.**  ``shard=(k, n)`` generates the k-th of n contiguous
  trajectory ranges of every split into ``shards/``; when the last shard
  finishes, shards are merged into the split stores (or call :func:`merge_shards`).
  A Hydra multirun over ``shard.index`` on a cluster launcher generates a
  paper-scale data set in parallel.
* **Refuses to overwrite** an existing data set unless ``overwrite=True``;
  on refusal nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from sns.data import schema
from sns.systems import get_preset, make_system, system_class
from sns.systems.base import Preset

_SPLIT_OFFSET = {"train": 0, "valid": 1, "test": 2}
_COMPLETED = "sns_completed_trajectories"

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sns")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def trajectory_seed(seed: int, split: str, index: int) -> int:
    """Seed of trajectory ``index`` of ``split``: independent of batching and sharding."""
    return (int(seed) * 1_000_003 + _SPLIT_OFFSET[split] * 100_003 + int(index)) % (2**63 - 1)


def resolve_preset(system: str, preset: str, overrides: dict[str, Any] | None = None) -> Preset:
    """The preset with ``overrides`` applied (``system`` entries merge into the solver kwargs)."""
    base = get_preset(system, preset)
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(asdict(base))
    if unknown:
        raise ValueError(f"unknown preset fields {sorted(unknown)}; valid choices: {sorted(asdict(base))}")
    if "system" in overrides:
        overrides["system"] = {**base.system, **overrides["system"]}
    if "trajectories" in overrides:
        bad = set(overrides["trajectories"]) - set(schema.SPLITS)
        if bad:
            raise ValueError(f"unknown splits {sorted(bad)}; valid choices: {list(schema.SPLITS)}")
        overrides["trajectories"] = {**base.trajectories, **overrides["trajectories"]}
    return replace(base, **overrides)


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
    """The contiguous range ``[start, stop)`` of ``n`` items owned by shard ``index`` of ``count``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index} (count {count})")
    per = math.ceil(n / count)
    return min(n, index * per), min(n, (index + 1) * per)


# ----------------------------------------------------------------------------- storage


def _coords(system_name: str, sys_obj: Any, preset: Preset, shape: tuple[int, ...]) -> dict:
    """Coordinate arrays (values, dims, attrs) for a variable of ``shape`` (without traj/time)."""
    lay = schema.layout(system_name)
    t0, dt_frame = preset.spinup_steps * sys_obj.dt, preset.save_every * sys_obj.dt
    coords = {
        schema.TIME: (
            t0 + dt_frame * np.arange(preset.n_frames, dtype=np.float64),
            {"units": lay["time_units"], "long_name": "time since the initial condition"},
        )
    }
    for dim, n in zip(lay["dims"], shape):
        if dim in (schema.Y, schema.X):
            length = float(getattr(sys_obj, "L", getattr(sys_obj, "length", 2 * math.pi)))
            offset = float(getattr(sys_obj, "grid_offset", 0.5))  # 0.5: cell centres, 0: nodes
            coords[dim] = (
                (np.arange(n) + offset) * length / n,
                {"units": lay["space_units"], "long_name": f"{dim} position (offset {offset} of a cell)"},
            )
        else:
            coords[dim] = (np.arange(n, dtype=np.int64), {"units": "1", "long_name": f"{dim} index"})
    return coords


def _create_store(path: Path, system_name: str, sys_obj: Any, preset: Preset, n_traj: int,
                  field_shape: tuple[int, ...], attrs: dict) -> zarr.Group:
    lay = schema.layout(system_name)
    root = zarr.open_group(str(path), mode="w")
    var = root.create_array(
        lay["variable"],
        shape=(n_traj, preset.n_frames, *field_shape),
        chunks=(1, min(preset.n_frames, 256), *field_shape),
        dtype="float32",
        dimension_names=schema.variable_dims(system_name),
        fill_value=float("nan"),
    )
    var.attrs.update({"units": lay["units"], "long_name": lay["long_name"]})
    for name, (values, cattrs) in _coords(system_name, sys_obj, preset, field_shape).items():
        arr = root.create_array(name, shape=values.shape, dtype=values.dtype, dimension_names=(name,))
        arr[:] = values
        arr.attrs.update(cattrs)
    root.attrs.update({**attrs, _COMPLETED: 0})
    return root


def _to_storage(system_name: str, obs: torch.Tensor) -> np.ndarray:
    """Observed tensor ``(B, C, ...)``/``(B, D)`` -> array in the variable's dim order (without time)."""
    if schema.layout(system_name)["dims"] == (schema.Y, schema.X):
        obs = obs[:, 0]
    return obs.detach().to("cpu", torch.float32).numpy()


def _base_attrs(system_name: str, preset_name: str, preset: Preset, sys_obj: Any, seed: int) -> dict:
    module = __import__(system_class(system_name).__module__, fromlist=["PARAM_UNITS"])
    return {
        "sns_schema": schema.SCHEMA_NAME,
        "sns_schema_version": schema.SCHEMA_VERSION,
        "sns_version": package_version(),
        "torch_version": torch.__version__,
        "system": system_name,
        "preset": preset_name,
        "variable": schema.layout(system_name)["variable"],
        "params": json.loads(json.dumps(sys_obj.params)),
        "param_units": dict(getattr(module, "PARAM_UNITS", {})),
        "dt": float(sys_obj.dt),
        "save_every": preset.save_every,
        "spinup_steps": preset.spinup_steps,
        "seed": int(seed),
        "description": preset.description,
    }


# ----------------------------------------------------------------------------- generation


def integrate(sys_obj: Any, u0: torch.Tensor, preset: Preset) -> torch.Tensor:
    """Spin up ``u0`` and return the observed frames, ``(B, n_frames, *observed)`` on the CPU.

    Multistep solvers (those with ``advance(u, n, history) -> (u, history)``,
    e.g. QG's AB3) carry their history across saves, so the frames are those of
    one uninterrupted integration.
    """
    history = None

    def advance(u: torch.Tensor, n: int) -> torch.Tensor:
        nonlocal history
        if hasattr(sys_obj, "advance"):
            u, history = sys_obj.advance(u, n, history)
            return u
        return sys_obj.step(u, n)

    u = advance(u0, preset.spinup_steps) if preset.spinup_steps else u0
    frames = []
    for j in range(preset.n_frames):
        if j:
            u = advance(u, preset.save_every)
        obs = sys_obj.observe(u)
        if not torch.isfinite(obs).all():
            raise FloatingPointError(
                f"{sys_obj.name} produced non-finite values at frame {j}; reduce dt ({sys_obj.dt})"
            )
        frames.append(obs.to("cpu", torch.float32))
    return torch.stack(frames, dim=1)


def _initial_conditions(sys_obj: Any, seed: int, split: str, indices: range) -> torch.Tensor:
    ics = []
    for i in indices:
        g = torch.Generator().manual_seed(trajectory_seed(seed, split, i))
        ics.append(sys_obj.initial_condition(1, generator=g))
    return torch.cat(ics)


def write_split(path: Path, system_name: str, preset_name: str, preset: Preset, split: str,
                sys_obj: Any, seed: int, traj: tuple[int, int], batch_size: int = 8,
                progress: Callable[[str], None] | None = print) -> Path:
    """Write trajectories ``traj = (start, stop)`` of ``split`` to ``path`` atomically and resumably.

    Returns ``path``.  If ``path`` exists already it is returned untouched.
    """
    path = Path(path)
    if path.exists():
        return path
    partial = path.with_name(path.name + ".partial")
    start, stop = traj
    n_traj = stop - start
    probe = sys_obj.observe(_initial_conditions(sys_obj, seed, split, range(start, start + 1)))
    field_shape = tuple(_to_storage(system_name, probe).shape[1:])
    attrs = {**_base_attrs(system_name, preset_name, preset, sys_obj, seed), "split": split,
             "split_trajectories": preset.trajectories[split],
             "trajectory_start": start, "trajectory_stop": stop}
    root = None
    if partial.exists():
        try:
            root = zarr.open_group(str(partial), mode="r+")
            same = all(root.attrs.get(k) == v for k, v in attrs.items() if k not in ("sns_version", "torch_version"))
            var = root[attrs["variable"]]
            if not same or tuple(var.shape) != (n_traj, preset.n_frames, *field_shape):
                root = None
        except Exception:  # unreadable leftovers: start again
            root = None
        if root is None:
            shutil.rmtree(partial)
    if root is None:
        root = _create_store(partial, system_name, sys_obj, preset, n_traj, field_shape, attrs)
    var = root[attrs["variable"]]
    done = int(root.attrs[_COMPLETED])
    t_start = time.perf_counter()
    while done < n_traj:
        hi = min(n_traj, done + batch_size)
        u0 = _initial_conditions(sys_obj, seed, split, range(start + done, start + hi))
        frames = integrate(sys_obj, u0, preset)  # (b, T, *observed)
        b, T = frames.shape[:2]
        data = _to_storage(system_name, frames.reshape(b * T, *frames.shape[2:]))
        var[done:hi] = data.reshape(b, T, *field_shape)
        done = hi
        root.attrs[_COMPLETED] = done  # recorded only after the data are written
        if progress:
            progress(f"  {split}: {done}/{n_traj} trajectories ({time.perf_counter() - t_start:.1f} s)")
    return partial


def channel_stats(path: Path) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of a split store, streamed trajectory by trajectory.

    Channels: the ``layer`` (QG), ``channel`` (imported fields) or ``dim`` (vector systems)
    axis; one channel for plain fields and for statistically homogeneous systems (layout
    ``pooled_stats``, e.g. Lorenz-96).
    """
    root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    var = root[root.attrs["variable"]]
    dims = tuple(var.metadata.dimension_names)
    ch_axis = next((i for i, d in enumerate(dims) if d in (schema.LAYER, schema.CHANNEL, schema.DIM)), None)
    if schema.layout(root.attrs["system"], dict(root.attrs)).get("pooled_stats"):
        ch_axis = None
    n_ch = var.shape[ch_axis] if ch_axis is not None else 1
    s1 = np.zeros(n_ch)
    s2 = np.zeros(n_ch)
    count = 0
    for i in range(var.shape[0]):
        a = np.asarray(var[i], dtype=np.float64)  # (time, ...)
        if ch_axis is None:
            a = a[..., None]
        else:
            a = np.moveaxis(a, ch_axis - 1, -1)
        a = a.reshape(-1, n_ch)
        s1 += a.sum(0)
        s2 += (a * a).sum(0)
        count += a.shape[0]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def normalisation(system_name: str, preset_name: str, mean: list[float], std: list[float],
                  centre: bool | None = None) -> tuple[list[float], list[float]]:
    """The normalisation ``x_norm = (x - offset) / scale`` stored with a data set.

    Paper presets use the paper's fixed scales where the system module defines
    ``NORM_SCALES`` (Kolmogorov 4.44; QG per layer); otherwise the train split's
    standard deviation (1 where it is 0).  Fields (zero-mean by construction) get offset 0;
    vector systems are centred on the train mean.  ``centre`` overrides that choice (the
    importer passes it: a foreign field need not have zero mean); it is required for
    :data:`sns.data.schema.GENERIC`, which has no solver module and no fixed scales.
    """
    if system_name == schema.GENERIC:
        if centre is None:
            raise ValueError(f"normalisation of a {schema.GENERIC!r} data set needs centre=True/False")
        fixed = None
    else:
        module = __import__(system_class(system_name).__module__, fromlist=["NORM_SCALES"])
        fixed = getattr(module, "NORM_SCALES", None)
        if centre is None:
            centre = schema.layout(system_name)["dims"] == (schema.DIM,)
    offset = [float(m) for m in mean] if centre else [0.0] * len(mean)
    if preset_name == "paper" and fixed is not None:
        scale = [float(s) for s in np.broadcast_to(np.asarray(fixed, dtype=float), (len(std),))]
    else:
        scale = [float(s) if s > 0 else 1.0 for s in std]
    return offset, scale


def _finalise(partials: dict[str, Path], finals: dict[str, Path], system_name: str, preset_name: str) -> None:
    """Attach normalisation attrs (from the train split) and rename partial stores into place."""
    source = partials.get("train") or finals.get("train")
    if source is None or not source.exists():
        raise FileNotFoundError("the train split is needed to compute normalisation statistics")
    root = zarr.open_group(str(source), mode="r")
    if "data_mean" in root.attrs:
        mean, std = list(root.attrs["data_mean"]), list(root.attrs["data_std"])
    else:
        mean, std = channel_stats(source)
    offset, scale = normalisation(system_name, preset_name, mean, std)
    for split, partial in partials.items():
        root = zarr.open_group(str(partial), mode="r+")
        root.attrs.update({"data_mean": mean, "data_std": std, "norm_offset": offset, "norm_scale": scale})
        consolidate(partial)
        os.replace(partial, finals[split])


def consolidate(path: Path) -> None:
    """Write consolidated metadata into a finished store, so that a plain ``xr.open_zarr(path)``
    opens it without warning (``sns``'s readers read the arrays' own metadata regardless)."""
    import warnings

    with warnings.catch_warnings():  # "consolidated metadata is not part of the zarr v3 spec"
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(str(path))


class GenerationLocked(RuntimeError):
    """Another process is generating into the same output (its lock file is held)."""


@contextlib.contextmanager
def _exclusive(lock: Path):
    """Hold an exclusive ``fcntl.flock`` on ``lock`` (created if missing) or raise
    :class:`GenerationLocked` at once.  The file is left in place: unlinking a lock file that
    another process has open would let two processes lock two different inodes.  Where
    ``fcntl`` does not exist (Windows) no lock is taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GenerationLocked(
                f"another sns-generate is writing {lock.parent} (it holds {lock}); wait for it to "
                "finish or choose another out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


_VOLATILE_ATTRS = ("sns_version", "torch_version")


def _refuse_existing(out: Path, splits: list[str], pre: Preset, expected: dict, count: int) -> None:
    """Raise ``FileExistsError`` if ``out`` holds a data set, unless it is this run's own data set
    left by a kill between its final renames (some ``<split>.zarr`` in place, every other split
    complete as ``<split>.zarr.partial``, same system, preset, seed and parameters): that one is
    finished, not refused."""
    existing = _existing(out)
    if count != 1 or not any(p.suffix == ".zarr" for p in existing):
        return
    finals = [s for s in splits if (out / f"{s}.zarr").exists()]
    missing = [s for s in splits if s not in finals]
    if missing and all(_is_complete_partial(out / f"{s}.zarr.partial", pre.trajectories[s]) for s in missing):
        mismatch = []
        for s in finals:
            try:
                attrs = dict(zarr.open_group(str(out / f"{s}.zarr"), mode="r").attrs)
            except Exception:  # noqa: BLE001 - unreadable: not ours to finish
                mismatch.append(f"{s}.zarr unreadable")
                continue
            wrong = [k for k, v in expected.items() if k not in _VOLATILE_ATTRS and attrs.get(k) != v]
            if attrs.get("split_trajectories") != pre.trajectories[s]:
                wrong.append("split_trajectories")
            if wrong:
                mismatch.append(f"{s}.zarr differs in {', '.join(wrong)}")
        if not mismatch:
            return  # finish the renames of an interrupted run
        detail = f" (a partial generation remains, but {'; '.join(mismatch)})"
    else:
        detail = ""
    raise FileExistsError(
        f"{out} already holds a data set ({', '.join(p.name for p in existing)}){detail}; "
        "pass overwrite=true to replace it"
    )


def _is_complete_partial(path: Path, n_traj: int) -> bool:
    """Whether ``path`` is a partial split store whose trajectories are all written."""
    if not path.exists():
        return False
    try:
        return int(zarr.open_group(str(path), mode="r").attrs.get(_COMPLETED, -1)) == n_traj
    except Exception:  # noqa: BLE001 - unreadable leftovers
        return False


def _existing(out: Path) -> list[Path]:
    return [out / f"{s}.zarr" for s in schema.SPLITS if (out / f"{s}.zarr").exists()] + (
        [out / "shards"] if (out / "shards").exists() else []
    )


def generate_dataset(
    system: str,
    preset: str = "cpu",
    out: str | os.PathLike = "data",
    seed: int = 0,
    overwrite: bool = False,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "cpu",
    params: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Generate (or resume generating) a data set of ``system`` with ``preset`` into ``out``.

    Args:
        system: registry name (``sns.systems.SYSTEMS``).
        preset: ``"paper"`` or ``"cpu"``.
        out: output directory; gets ``train.zarr``, ``valid.zarr``, ``test.zarr``.
        seed: base seed; trajectory seeds derive from it (see module docstring).
        overwrite: delete an existing data set in ``out`` first.  Without it an
            existing data set is refused (``FileExistsError``) and nothing is written.
        batch_size: trajectories integrated together (and the resume granularity).
        dtype: solver precision, ``"float32"`` or ``"float64"`` (stored data are float32).
        device: torch device of the solver.
        params: solver constructor arguments overriding the preset's.
        overrides: preset fields to override (``n_frames``, ``trajectories``, ...).
        shard: ``(index, count)``; with count > 1 only that trajectory range is
            generated into ``out/shards``, and the last shard to finish merges.

    Returns the output directory.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid choices: {sorted(DTYPES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pre = resolve_preset(system, preset, overrides)
    if params:
        pre = replace(pre, system={**pre.system, **params})
    index, count = shard
    shard_range(1, index, count) if count > 1 else None  # validates index/count
    # Build the solver before touching the disk: bad parameters raise here.
    sys_obj = make_system(system, **pre.system, dtype=DTYPES[dtype], device=device)
    splits = [s for s in schema.SPLITS if pre.trajectories.get(s, 0) > 0]
    if "train" not in splits:
        raise ValueError("the train split needs at least one trajectory (normalisation comes from it)")
    expected = _base_attrs(system, preset, pre, sys_obj, seed)
    if not overwrite:  # refuse before writing anything (checked again under the lock)
        _refuse_existing(out, splits, pre, expected, count)
    out.mkdir(parents=True, exist_ok=True)
    lock = ".generate.lock" if count == 1 else f".generate.{index:04d}-of-{count:04d}.lock"
    with _exclusive(out / lock):
        return _generate_locked(out, system, preset, pre, sys_obj, seed, splits, expected, overwrite,
                                batch_size, shard, progress)


def _generate_locked(out: Path, system: str, preset: str, pre: Preset, sys_obj: Any, seed: int,
                     splits: list[str], expected: dict, overwrite: bool, batch_size: int,
                     shard: tuple[int, int], progress: Callable[[str], None] | None) -> Path:
    """The body of :func:`generate_dataset`, run while holding the output's lock file."""
    index, count = shard
    existing = _existing(out)
    if existing and overwrite:
        for p in existing:
            shutil.rmtree(p)
        for s in schema.SPLITS:
            p = out / f"{s}.zarr.partial"
            if p.exists():
                shutil.rmtree(p)
    elif not overwrite:
        _refuse_existing(out, splits, pre, expected, count)
    if count == 1:
        partials = {}
        for s in splits:
            if progress:
                progress(f"{system}/{preset} {s}: {pre.trajectories[s]} trajectories x {pre.n_frames} frames")
            final = out / f"{s}.zarr"
            p = write_split(final, system, preset, pre, s, sys_obj, seed, (0, pre.trajectories[s]),
                            batch_size, progress)
            if p != final:
                partials[s] = p
        _finalise(partials, {s: out / f"{s}.zarr" for s in splits}, system, preset)
        return out
    shards = out / "shards"
    shards.mkdir(exist_ok=True)
    for s in splits:
        lo, hi = shard_range(pre.trajectories[s], index, count)
        if hi > lo:
            p = write_split(shards / f"{s}.{index:04d}-of-{count:04d}.zarr", system, preset, pre, s,
                            sys_obj, seed, (lo, hi), batch_size, progress)
            if p.name.endswith(".partial"):
                os.replace(p, shards / f"{s}.{index:04d}-of-{count:04d}.zarr")
    try:
        merge_shards(out, count, progress=progress)
    except FileNotFoundError as err:  # other shards still running
        if progress:
            progress(f"shard {index}/{count} done; not merging yet ({err})")
    return out


def merge_shards(out: str | os.PathLike, count: int, progress: Callable[[str], None] | None = print) -> Path:
    """Concatenate ``out/shards/<split>.<k>-of-<count>.zarr`` into ``out/<split>.zarr``.

    Raises ``FileNotFoundError`` if a shard is missing.  Safe to call from
    several jobs: one takes a lock file, the others return.
    """
    out = Path(out)
    shards = out / "shards"
    if not shards.exists() and (out / "train.zarr").exists():
        return out  # merged already
    per_split: dict[str, list[Path]] = {}
    for s in schema.SPLITS:
        paths = sorted(shards.glob(f"{s}.*-of-{count:04d}.zarr"))
        if paths:
            per_split[s] = paths
    if "train" not in per_split:
        raise FileNotFoundError(f"no train shards in {shards}")
    for s, paths in per_split.items():
        first = zarr.open_group(str(paths[0]), mode="r")
        # every shard that owns trajectories must be complete (renamed from .partial)
        ranges = [shard_range(_total(first), k, count) for k in range(count)]
        expected = [k for k, (lo, hi) in enumerate(ranges) if hi > lo]
        have = {int(p.name.split(".")[1].split("-")[0]) for p in paths}
        missing = sorted(set(expected) - have)
        if missing:
            raise FileNotFoundError(f"split {s}: shards {missing} of {count} not finished")
    lock = out / ".merge.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if progress:
            progress("another job is merging the shards")
        return out
    try:
        partials = {}
        for s, paths in per_split.items():
            final = out / f"{s}.zarr"
            if final.exists():
                continue
            partial = out / f"{s}.zarr.partial"
            if partial.exists():
                shutil.rmtree(partial)
            first = zarr.open_group(str(paths[0]), mode="r")
            attrs = dict(first.attrs)
            name = attrs["variable"]
            shape0 = first[name].shape
            n_total = _total(first)
            root = zarr.open_group(str(partial), mode="w")
            var = root.create_array(name, shape=(n_total, *shape0[1:]), chunks=first[name].chunks,
                                    dtype="float32", dimension_names=first[name].metadata.dimension_names,
                                    fill_value=float("nan"))
            var.attrs.update(dict(first[name].attrs))
            for cname, arr in first.arrays():
                if cname != name:
                    c = root.create_array(cname, shape=arr.shape, dtype=arr.dtype,
                                          dimension_names=arr.metadata.dimension_names)
                    c[:] = arr[:]
                    c.attrs.update(dict(arr.attrs))
            for p in paths:
                r = zarr.open_group(str(p), mode="r")
                lo, hi = r.attrs["trajectory_start"], r.attrs["trajectory_stop"]
                for i in range(lo, hi):
                    var[i] = r[name][i - lo]
            for k in ("trajectory_start", "trajectory_stop"):
                attrs.pop(k, None)
            root.attrs.update({**attrs, _COMPLETED: n_total, "merged_from_shards": count})
            partials[s] = partial
            if progress:
                progress(f"merged {len(paths)} shards of {s}: {n_total} trajectories")
        _finalise(partials, {s: out / f"{s}.zarr" for s in per_split}, first.attrs["system"],
                  first.attrs["preset"])
        shutil.rmtree(shards)
    finally:
        os.close(fd)
        os.remove(lock)
    return out


def _total(root: zarr.Group) -> int:
    """Total trajectories of the split a shard belongs to (from its preset record)."""
    return int(root.attrs["split_trajectories"])
