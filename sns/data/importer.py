"""Import trajectories made by other tools as an ``sns`` data set (``sns-import``).

:func:`import_dataset` reads any xarray-readable source (zarr, netCDF, HDF5 through
``h5netcdf`` when it is installed, or an ``xarray.Dataset``) or a CSV table of vector
states (or a ``pandas.DataFrame``), maps its dims onto ``sns``'s, and writes a data set of
the system :data:`sns.data.schema.GENERIC` that ``sns-train``, ``sns-rollout`` and
``sns-evaluate`` read like a generated one.

**Dims.**  ``dims`` maps an ``sns`` dim (a *role*: ``trajectory``, ``time``, ``y``, ``x``,
``channel`` for fields, ``dim`` for vectors) to the source's dim name, e.g. jax-cfd data
``(sample, time, x, y)``: ``dims={"trajectory": "sample"}`` (``time``, ``x``, ``y`` map to
the dims of the same name by default).  The data are transposed to ``sns``'s layout
(:mod:`sns.data.schema`): ``(trajectory, time, y, x)`` for one field,
``(trajectory, time, channel, y, x)`` when a channel dim is mapped or several variables are
given (one channel each), ``(trajectory, time, dim)`` for vectors (the ``dim`` role, or
several variables of dims ``(trajectory, time)``, one component each; one variable of
dims ``(trajectory, time)`` is a 1-D vector).  Every source dim must be mapped.  CSV tables
are long format: one row per frame, a trajectory column and (optionally) a time column,
named by ``dims["trajectory"]`` / ``dims["time"]`` (default ``trajectory`` / ``time``),
and the state columns (``columns``; default every other column), one component each.

**Splits** are by trajectory: ``splits`` gives fractions (floats summing to 1) or counts
(integers) per split; the trajectories are taken in source order (``shuffle=True``:
permuted with ``seed``), train first, then valid, then test.  A split of 0 is not written
(``sns-train`` needs ``valid``; ``sns-rollout`` and ``sns-evaluate`` default to ``test``).
Each split store records the source indices of its trajectories (``source_trajectories``).

**Coarsening** (fields only) by an integer ``coarsen`` factor: ``coarsen_method="spectral"``
is spectral truncation (:func:`sns.systems.spectral.resample_spectral`: keeps the Fourier
modes ``|k_x|, |k_y| < M/2`` of the coarse ``M x M`` grid, the coarse Nyquist modes dropped;
the values are those of the truncated field at every ``coarsen``-th source grid point;
square grids with an even coarse size, and meant for periodic fields), ``"mean"`` is the
mean over ``coarsen x coarsen`` blocks (any grid; positions become the block centres).

**Time.**  ``sns`` records the frame interval as ``dt`` with ``save_every = 1`` and
``spinup_steps = 0`` (the source's solver step is unknown).  It is ``frame_interval`` or,
when that is not given, the step of the source's time coordinate (or CSV time column),
which must then be numeric, strictly increasing and uniform; when both are given they must
agree.  The stored time coordinate is ``t0 + k * dt`` with ``t0`` the source's first time
(of the first trajectory, for CSV), 0 without a time coordinate.

**Normalisation** is computed from the train split by the code ``sns-generate`` uses
(:func:`sns.data.generate.channel_stats`, :func:`sns.data.generate.normalisation`): per
channel (fields) or component (vectors; ``pooled_stats=True``: one mean and standard
deviation for all), stored as ``data_mean``/``data_std``, and ``x_norm = (x - norm_offset) /
norm_scale`` with ``norm_scale`` the train standard deviation (1 where it is 0) and
``norm_offset`` the train mean.  Unlike ``sns-generate``'s fields (zero-mean by
construction, offset 0), an imported field is centred too by default, since a foreign field
(a temperature, a concentration) need not have zero mean; ``centre=False`` gives
``sns-generate``'s field rule (offset 0), for zero-mean fields such as vorticity.

**Units** are labels: ``sns`` has no units vocabulary and converts nothing, but every units
string (``units`` of the variable, ``time_units``, ``space_units``) must be a non-empty
printable label such as ``"1"`` (dimensionless), ``"m"``, ``"1/s"``, ``"m^2 s^-2"`` or ``"K"``
(letters, digits, spaces and ``. , : ; / * ^ ( ) [ ] + - % ' °``, at most 80 characters);
placeholders (``"unknown"``, ``"none"``, ``"?"``...) are refused.  Defaults come from the
source's ``units`` attrs where it has them (``"<unit> since <date>"`` time units keep
``<unit>``).

**Atomic.**  Everything is checked before anything is written (source, dims, variables,
dtypes, units, frame interval, splits, coarsening, output); the data set is then written
into a temporary directory next to ``out`` and renamed into place when complete.  Values
are checked while they stream (no NaN or infinity, also after the cast to float32): a bad
value stops the import, and the temporary directory is removed, so nothing is left behind.
An existing non-empty ``out`` is refused unless ``overwrite=True``, and even then only when
it holds nothing but an ``sns`` data set.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from sns.data import schema
from sns.data.generate import channel_stats, consolidate, normalisation, package_version

__all__ = ["COARSEN_METHODS", "FORMATS", "PRESET", "ROLES", "check_units", "import_dataset", "split_assignment"]

#: The ``preset`` attr of imported data sets.
PRESET = "imported"
#: Roles of ``dims``: the sns dims a source dim can be mapped to.
ROLES = (schema.TRAJECTORY, schema.TIME, schema.CHANNEL, schema.Y, schema.X, schema.DIM)
FORMATS = ("zarr", "netcdf", "hdf5", "csv")
COARSEN_METHODS = ("spectral", "mean")
DEFAULT_SPLITS = {"train": 0.8, "valid": 0.1, "test": 0.1}
#: Frames read, checked and written at a time (the time chunk of the stores).
CHUNK_FRAMES = 256

_SUFFIXES = {".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".cdf": "netcdf", ".netcdf": "netcdf",
             ".h5": "hdf5", ".hdf5": "hdf5", ".he5": "hdf5", ".hdf": "hdf5", ".csv": "csv"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
_UNITS_RE = re.compile(r"^[\w .,:;/*^()\[\]+\-%'°]+$")
_PLACEHOLDER_UNITS = {"unknown", "none", "null", "nan", "n/a", "na", "?", "??", "tbd", "undefined", "-"}
_RESERVED_NAMES = {schema.TRAJECTORY, schema.TIME, schema.LAYER, schema.Y, schema.X, schema.DIM, schema.CHANNEL,
                   schema.Z}


# ----------------------------------------------------------------------------- validation helpers


def check_units(key: str, value: Any) -> str:
    """``value`` if it is a valid units label (module docstring), else ``ValueError`` naming it."""
    ok = (isinstance(value, str) and value == value.strip() and 0 < len(value) <= 80
          and _UNITS_RE.match(value) is not None and value.lower() not in _PLACEHOLDER_UNITS)
    if not ok:
        raise ValueError(
            f"{key}={value!r} is not a units string; give a printable label such as '1' (dimensionless), "
            "'m', '1/s', 'm^2 s^-2' or 'K' (letters, digits, spaces and . , : ; / * ^ ( ) [ ] + - % ' °, "
            "at most 80 characters, no placeholder such as 'unknown'; sns records units, it converts nothing)")
    return value


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not float(value) > 0:
        raise ValueError(f"{key} must be a positive number (the time between frames), got {value!r}")
    return float(value)


def _json_value(v: Any) -> Any:
    """A JSON-able version of a coordinate value (trajectory ids)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _source_units(units: Any) -> str | None:
    """A units attr of a source as a default (``"s since 2000-01-01"`` -> ``"s"``), None if absent."""
    if not isinstance(units, str) or not units.strip():
        return None
    return units.split(" since ")[0].strip() or None


def _numeric_1d(values: Any) -> np.ndarray | None:
    a = np.asarray(values)
    if a.ndim != 1 or a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        return None
    return a.astype(np.float64)


# ----------------------------------------------------------------------------- the source


@dataclass
class _Source:
    """A source seen as per-trajectory arrays in ``sns`` order: ``read(i, a, b)`` returns frames
    ``a:b`` of trajectory ``i`` as ``(b - a, *shape)`` (``shape``: ``(C, H, W)``, ``(H, W)`` or
    ``(D,)``), in the source's dtype."""

    where: str
    kind: str  # "field" | "vector"
    dims: tuple[str, ...]  # sns dims after (trajectory, time)
    shape: tuple[int, ...]
    n_traj: int
    n_time: int
    read: Callable[[int, int, int], np.ndarray]
    locate: Callable[[int, int, tuple[int, ...]], str]  # (traj, frame, index in the frame) -> text
    traj_ids: list[Any]
    times: list[np.ndarray] | None  # numeric times: one array (shared) or one per trajectory
    time_name: str | None
    variables: list[str]
    mapping: dict[str, str]
    units: str | None = None
    long_name: str | None = None
    time_units: str | None = None
    space: dict[str, tuple[np.ndarray | None, str | None]] = field(default_factory=dict)  # dim -> (positions, units)
    names: list[str] | None = None  # channel / component names
    close: Callable[[], None] = lambda: None


def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid choices: {FORMATS}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]
    if path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
        return "zarr"
    raise ValueError(f"cannot tell the format of {path} from its name; give format= one of {FORMATS} "
                     f"(suffixes: {sorted(_SUFFIXES)})")


def _open_xarray(path: Path, fmt: str, engine: str | None):
    import xarray as xr

    try:
        if fmt == "zarr":
            with warnings.catch_warnings():  # foreign stores are often not consolidated
                warnings.filterwarnings("ignore", message=".*consolidated.*")
                return xr.open_zarr(str(path), decode_times=False, chunks=None)
        if fmt == "hdf5" and engine is None:
            engine = "h5netcdf"
        return xr.open_dataset(str(path), engine=engine, decode_times=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        hint = (" (netCDF-4 / HDF5 files need the netCDF4 or h5netcdf package: pip install 'sns[netcdf]'; "
                "netCDF-3 files are read by scipy)" if fmt in ("netcdf", "hdf5") else "")
        raise ValueError(f"cannot read {path} as {fmt}{hint}: {err}") from err


def _resolve_dims(dims: Mapping[str, Any] | None, src_dims: tuple[str, ...], stacked: bool,
                  where: str) -> tuple[dict[str, str], str]:
    """The role -> source dim mapping and the kind ("field" / "vector") of a variable with dims
    ``src_dims`` (``stacked``: several variables, stacked as channels / components)."""
    given = {k: v for k, v in dict(dims or {}).items() if v is not None}
    unknown = sorted(set(given) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown dims roles {unknown}; valid choices: {list(ROLES)} (role=<source dim>)")
    for role, d in given.items():
        if not isinstance(d, str) or d not in src_dims:
            raise ValueError(f"dims.{role}={d!r} is not a dim of {where}; its dims are {list(src_dims)}")
    mapping = dict(given)
    for role in ROLES:  # default: the source dim of the same name
        if role not in mapping and role in src_dims and role not in mapping.values():
            mapping[role] = role
    used = list(mapping.values())
    dup = sorted({d for d in used if used.count(d) > 1})
    if dup:
        raise ValueError(f"source dims {dup} are mapped to more than one role: {mapping}")
    unmapped = [d for d in src_dims if d not in used]
    if unmapped:
        raise ValueError(f"dims {unmapped} of {where} are not mapped to sns dims; map each with "
                         f"dims.<role>=<source dim>, roles {list(ROLES)} (source dims {list(src_dims)})")
    for role in (schema.TRAJECTORY, schema.TIME):
        if role not in mapping:
            raise ValueError(f"no dim of {where} is mapped to {role!r} (its dims are {list(src_dims)}); "
                             f"give dims.{role}=<source dim>")
    has_y, has_x = schema.Y in mapping, schema.X in mapping
    if has_y != has_x:
        raise ValueError(f"fields need both dims.y and dims.x; got only {'y' if has_y else 'x'}="
                         f"{mapping.get(schema.Y, mapping.get(schema.X))!r} (source dims {list(src_dims)})")
    if has_y:
        if schema.DIM in mapping:
            raise ValueError(f"dims.dim={mapping[schema.DIM]!r} is the component dim of vector data, but y/x are "
                             "mapped too (a field); map a field's extra dim to 'channel'")
        if stacked and schema.CHANNEL in mapping:
            raise ValueError(f"several variables become the channels, so dims.channel={mapping[schema.CHANNEL]!r} "
                             "cannot be mapped too; give one variable or map no channel dim")
        return mapping, "field"
    if schema.CHANNEL in mapping:
        raise ValueError(f"dims.channel={mapping[schema.CHANNEL]!r} is for fields (with y and x); for vector data "
                         "map the component dim to 'dim'")
    if stacked and schema.DIM in mapping:
        raise ValueError(f"several variables become the components, so dims.dim={mapping[schema.DIM]!r} cannot "
                         "be mapped too; give one variable or map no component dim")
    return mapping, "vector"


def _check_dtypes(dtypes: Mapping[str, Any], what: str) -> None:
    """Every dtype real (integer or floating, not bool), and one dtype for all."""
    for name, dt in dtypes.items():
        dt = np.dtype(dt)
        if dt == bool or not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
            raise ValueError(f"{what} {name!r} has dtype {dt}: sns data are real numbers (integer or floating)")
    kinds = {str(np.dtype(dt)) for dt in dtypes.values()}
    if len(kinds) > 1:
        listed = ", ".join(f"{n}: {np.dtype(d)}" for n, d in dtypes.items())
        raise ValueError(f"the {what}s have mixed dtypes ({listed}); convert them to one floating dtype first")


def _from_xarray(ds: Any, variable: str | Sequence[str] | None, dims: Mapping[str, Any] | None,
                 where: str) -> _Source:
    names = [str(v) for v in ds.data_vars]
    if variable is None:
        if len(names) != 1:
            raise ValueError(f"{where} has {len(names)} data variables {names}: choose one (or a list, "
                             "stacked as channels / components) with variable=...")
        variables = names
    else:
        variables = [variable] if isinstance(variable, str) else list(variable)
        if not variables or any(not isinstance(v, str) for v in variables):
            raise ValueError(f"variable must be a name or a list of names, got {variable!r}")
        for v in variables:
            if v not in ds.data_vars:
                raise ValueError(f"variable {v!r} is not in {where}; valid choices: {names}")
        if len(set(variables)) != len(variables):
            raise ValueError(f"variable lists a name twice: {variables}")
    arrs = [ds[v] for v in variables]
    _check_dtypes({v: a.dtype for v, a in zip(variables, arrs)}, "variable")
    src_dims = tuple(str(d) for d in arrs[0].dims)
    for v, a in zip(variables, arrs):
        if tuple(sorted(map(str, a.dims))) != tuple(sorted(src_dims)):
            raise ValueError(f"variables {variables[0]!r} and {v!r} have different dims ({list(src_dims)} and "
                             f"{list(map(str, a.dims))}); stacked variables need the same dims")
    what = f"variable {variables[0]!r} of {where}" if len(variables) == 1 else f"the variables of {where}"
    mapping, kind = _resolve_dims(dims, src_dims, len(variables) > 1, what)
    roles = [schema.CHANNEL, schema.Y, schema.X] if kind == "field" else [schema.DIM]
    frame_roles = [r for r in roles if r in mapping]
    order = [mapping[schema.TIME], *(mapping[r] for r in frame_roles)]
    tdim = mapping[schema.TRAJECTORY]
    sizes = {str(k): int(v) for k, v in arrs[0].sizes.items()}
    n_traj, n_time = sizes[tdim], sizes[mapping[schema.TIME]]
    frame = tuple(sizes[mapping[r]] for r in frame_roles)
    stacked = len(variables) > 1
    if kind == "field":
        if stacked:
            out_dims, shape = (schema.CHANNEL, schema.Y, schema.X), (len(variables), *frame)
        else:
            out_dims = tuple(frame_roles)
            shape = frame
    else:
        out_dims = (schema.DIM,)
        shape = (len(variables),) if stacked else (frame[0] if frame else 1,)

    def read(i: int, a: int, b: int) -> np.ndarray:
        parts = [np.asarray(arr.isel({tdim: i, order[0]: slice(a, b)}).transpose(*order).values) for arr in arrs]
        x = np.stack(parts, axis=1) if stacked else parts[0]
        return x.reshape(b - a, *shape)

    def locate(i: int, t: int, idx: tuple[int, ...]) -> str:
        pos = {tdim: i, mapping[schema.TIME]: t}
        rest = list(idx)
        if stacked:
            var = variables[rest.pop(0)]
        else:
            var = variables[0]
        for r, k in zip(frame_roles, rest):
            pos[mapping[r]] = k
        return f"variable {var!r} at " + ", ".join(f"{d}={k}" for d, k in pos.items())

    def coord(dim: str) -> tuple[np.ndarray | None, str | None]:
        if dim in ds.coords:
            c = ds.coords[dim]
            return _numeric_1d(c.values), _source_units(c.attrs.get("units"))
        return None, None

    times, time_units = coord(mapping[schema.TIME])
    ids = ds.coords[tdim].values.tolist() if tdim in ds.coords else list(range(n_traj))
    units = {a.attrs.get("units") for a in arrs}
    long_names = [str(a.attrs["long_name"]) for a in arrs if a.attrs.get("long_name")]
    space = {}
    if kind == "field":
        for r in (schema.Y, schema.X):
            space[r] = coord(mapping[r])
    item_names = None
    if stacked:
        item_names = list(variables)
    elif kind == "field" and schema.CHANNEL in mapping and mapping[schema.CHANNEL] in ds.coords:
        item_names = [str(_json_value(v)) for v in ds.coords[mapping[schema.CHANNEL]].values]
    elif kind == "vector" and schema.DIM in mapping and mapping[schema.DIM] in ds.coords:
        item_names = [str(_json_value(v)) for v in ds.coords[mapping[schema.DIM]].values]
    return _Source(where=where, kind=kind, dims=out_dims, shape=shape, n_traj=n_traj, n_time=n_time, read=read,
                   locate=locate, traj_ids=[_json_value(v) for v in ids],
                   times=[times] if times is not None else None, time_name=mapping[schema.TIME],
                   variables=variables, mapping=mapping,
                   units=_source_units(units.pop()) if len(units) == 1 else None,
                   long_name="; ".join(long_names) or None, time_units=time_units, space=space,
                   names=item_names, close=getattr(ds, "close", lambda: None))


def _from_table(df: Any, dims: Mapping[str, Any] | None, columns: Sequence[str] | None, where: str) -> _Source:
    given = {k: v for k, v in dict(dims or {}).items() if v is not None}
    other = sorted(set(given) - {schema.TRAJECTORY, schema.TIME})
    if other:
        raise ValueError(f"{where} is a table of vector states: only dims.trajectory and dims.time (column names) "
                         f"apply, got dims {other}; give the state columns with columns=[...]")
    cols = [str(c) for c in df.columns]
    tcol = given.get(schema.TRAJECTORY, schema.TRAJECTORY)
    if tcol not in cols:
        raise ValueError(f"dims.trajectory={tcol!r} is not a column of {where}; its columns are {cols} "
                         "(one row per frame, a trajectory column, a time column, the state columns)")
    time_col = given.get(schema.TIME)
    if time_col is not None and time_col not in cols:
        raise ValueError(f"dims.time={time_col!r} is not a column of {where}; its columns are {cols}")
    if time_col is None and schema.TIME in cols:
        time_col = schema.TIME
    if time_col == tcol:
        raise ValueError(f"the trajectory and time columns are the same column {tcol!r}")
    if columns is None:
        state = [c for c in cols if c not in (tcol, time_col)]
    else:
        state = [columns] if isinstance(columns, str) else [str(c) for c in columns]
        missing = [c for c in state if c not in cols]
        if missing:
            raise ValueError(f"columns {missing} are not in {where}; its columns are {cols}")
        clash = [c for c in state if c in (tcol, time_col)]
        if clash:
            raise ValueError(f"columns {clash} are the trajectory / time columns, not state components")
        if len(set(state)) != len(state):
            raise ValueError(f"columns lists a name twice: {state}")
    if not state:
        raise ValueError(f"{where} has no state columns besides the trajectory / time columns {cols}")
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    for c in state:
        if not is_numeric_dtype(df[c]) or is_bool_dtype(df[c]):
            bad = next((v for v in df[c] if isinstance(v, (str, bool)) or v is None), None)
            raise ValueError(f"column {c!r} of {where} is not numeric (dtype {df[c].dtype}"
                             + (f", e.g. value {bad!r}" if bad is not None else "") + "); sns data are real numbers")
    _check_dtypes({c: df[c].to_numpy().dtype for c in state}, "column")
    if time_col is not None:
        tvals = _numeric_1d(df[time_col].to_numpy())
        if tvals is None or not np.isfinite(tvals).all():
            raise ValueError(f"time column {time_col!r} of {where} must hold finite numbers "
                             f"(dtype {df[time_col].dtype})")
    if df[tcol].isna().any():
        raise ValueError(f"trajectory column {tcol!r} of {where} has missing values")
    groups = list(df.groupby(tcol, sort=True))
    if time_col is not None:
        groups = [(k, g.sort_values(time_col, kind="stable")) for k, g in groups]
    lengths = {k: len(g) for k, g in groups}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{_json_value(k)!r}: {n}" for k, n in list(lengths.items())[:8])
        raise ValueError(f"the trajectories of {where} have different numbers of frames ({listed}); sns data sets "
                         "need the same number of frames in every trajectory")
    data = [g[state].to_numpy() for _, g in groups]
    n_time = len(groups[0][1]) if groups else 0

    def read(i: int, a: int, b: int) -> np.ndarray:
        return data[i][a:b]

    def locate(i: int, t: int, idx: tuple[int, ...]) -> str:
        return (f"column {state[idx[0]]!r}, trajectory {_json_value(groups[i][0])!r} ({tcol}), frame {t}"
                + (f" ({time_col}={groups[i][1][time_col].iloc[t]!r})" if time_col else ""))

    times = [g[time_col].to_numpy(dtype=np.float64) for _, g in groups] if time_col is not None else None
    return _Source(where=where, kind="vector", dims=(schema.DIM,), shape=(len(state),), n_traj=len(groups),
                   n_time=n_time, read=read, locate=locate, traj_ids=[_json_value(k) for k, _ in groups],
                   times=times, time_name=time_col, variables=state,
                   mapping={schema.TRAJECTORY: tcol, **({schema.TIME: time_col} if time_col else {})},
                   names=list(state))


# ----------------------------------------------------------------------------- choices


def _frame_interval(src: _Source, frame_interval: Any) -> tuple[float, float]:
    """``(dt, t0)``: the frame interval and the first time (module docstring)."""
    if src.n_time < 2:
        raise ValueError(f"{src.where} has {src.n_time} frame(s) per trajectory; sns data sets need at least 2")
    given = _positive_number("frame_interval", frame_interval) if frame_interval is not None else None
    if src.times is None:
        if given is None:
            raise ValueError(f"{src.where} has no numeric time coordinate ({src.time_name!r}): give frame_interval="
                             "<time between frames> (a positive number)")
        return given, 0.0
    step = None
    for k, t in enumerate(src.times):
        d = np.diff(t)
        which = f" (trajectory {src.traj_ids[k]!r})" if len(src.times) > 1 else ""
        if not np.isfinite(t).all():
            raise ValueError(f"time coordinate {src.time_name!r} of {src.where}{which} has non-finite values")
        if (d <= 0).any():
            j = int(np.argmax(d <= 0))
            raise ValueError(f"time coordinate {src.time_name!r} of {src.where}{which} is not strictly increasing: "
                             f"step {d[j]!r} after frame {j} (the frame interval must be positive)")
        mean = float(d.mean())
        tol = 1e-3 * mean + 8 * np.finfo(np.float32).eps * float(np.abs(t).max())
        if float(np.abs(d - mean).max()) > tol:
            j = int(np.argmax(np.abs(d - mean)))
            raise ValueError(f"time coordinate {src.time_name!r} of {src.where}{which} is not uniform: step "
                             f"{d[j]!r} after frame {j}, mean step {mean!r}; sns frames are equally spaced")
        if step is not None and abs(mean - step) > 1e-3 * step:
            raise ValueError(f"the trajectories of {src.where} have different frame intervals ({step!r} and "
                             f"{mean!r}, trajectory {src.traj_ids[k]!r})")
        step = mean if step is None else step
    if given is not None and abs(given - step) > 1e-3 * step:
        raise ValueError(f"frame_interval={frame_interval!r} disagrees with the step {step!r} of the time "
                         f"coordinate {src.time_name!r} of {src.where}")
    return (given if given is not None else step), float(src.times[0][0])


def split_assignment(splits: Mapping[str, Any] | None, n: int, shuffle: bool = False,
                     seed: int = 0) -> dict[str, list[int]]:
    """Source trajectory indices of each split (module docstring: fractions or counts, by
    trajectory; splits of 0 are left out).  Raises ``ValueError`` naming the bad value."""
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    unknown = sorted(set(splits) - set(schema.SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; valid choices: {list(schema.SPLITS)}")
    values = {s: (0 if v is None else v) for s, v in splits.items()}
    for s, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(v)) or v < 0:
            raise ValueError(f"splits.{s} must be a fraction in (0, 1] or a count >= 0, got {v!r}")
    nonzero = {s: v for s, v in values.items() if v > 0}
    requested = [s for s in schema.SPLITS if s in nonzero]
    if "train" not in requested:
        raise ValueError(f"the train split needs at least one trajectory (normalisation comes from it); "
                         f"splits {splits}")
    if n < len(requested):
        raise ValueError(f"the source has {n} trajectories, fewer than the {len(requested)} splits {requested}: "
                         "splits are by trajectory and each needs at least one")
    is_int = [isinstance(v, (int, np.integer)) for v in nonzero.values()]
    if any(is_int) and not all(is_int):
        raise ValueError(f"splits mix counts (integers) and fractions (floats): {splits}; give one kind")
    if all(is_int):
        counts = {s: int(nonzero[s]) for s in requested}
        if sum(counts.values()) > n:
            raise ValueError(f"splits {counts} ask for {sum(counts.values())} trajectories; the source has {n}")
    else:
        total = sum(float(v) for v in nonzero.values())
        if any(float(v) > 1 for v in nonzero.values()) or abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must lie in (0, 1] and sum to 1, got {splits} (sum {total:g})")
        raw = {s: float(nonzero[s]) * n for s in requested}
        counts = {s: math.floor(r) for s, r in raw.items()}
        for s in sorted(requested, key=lambda s: -(raw[s] - counts[s]))[: n - sum(counts.values())]:
            counts[s] += 1  # largest remainders
        for s in requested:  # every requested split gets a trajectory, taken from the largest
            if counts[s] == 0:
                donor = max(requested, key=lambda r: counts[r])
                counts[donor] -= 1
                counts[s] = 1
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng(int(seed)).permutation(n)
    out, start = {}, 0
    for s in requested:
        out[s] = [int(i) for i in order[start:start + counts[s]]]
        start += counts[s]
    return out


def _check_coarsen(src: _Source, factor: Any, method: str) -> tuple[int, str | None]:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"coarsen must be a positive integer factor, got {factor!r}")
    factor = int(factor)
    if method not in COARSEN_METHODS:
        raise ValueError(f"unknown coarsen_method {method!r}; valid choices: {COARSEN_METHODS}")
    if factor == 1:
        return 1, None
    if src.kind != "field":
        raise ValueError(f"coarsen={factor} applies to fields; {src.where} holds vector data (use coarsen=1)")
    h, w = src.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"coarsen={factor} does not divide the grid {h} x {w} (y x x) of {src.where}")
    if method == "spectral" and (h != w or h % 2 or (h // factor) % 2):
        raise ValueError(f"coarsen_method='spectral' (spectral truncation, sns.systems.spectral.resample_spectral) "
                         f"needs a square even grid with an even coarse size; got {h} x {w} -> "
                         f"{h // factor} x {w // factor}; use coarsen_method='mean' (block means) instead")
    return factor, method


def _coarsen(x: np.ndarray, factor: int, method: str | None) -> np.ndarray:
    """Fields ``(..., H, W)`` coarsened by ``factor`` (module docstring), float64."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    if method == "spectral":
        import torch

        from sns.systems.spectral import resample_spectral

        return resample_spectral(torch.from_numpy(np.ascontiguousarray(x, np.float64)), h // factor).numpy()
    return x.reshape(*x.shape[:-2], h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def _positions(values: np.ndarray | None, n: int, factor: int, method: str | None) -> tuple[np.ndarray, str]:
    """Coordinate values of a coarsened grid dim and how they were made."""
    what = "source coordinate" if values is not None else "grid index (the source has no coordinate)"
    pos = values if values is not None else np.arange(n, dtype=np.float64)
    if factor == 1:
        return pos, what
    if method == "spectral":
        return pos[::factor], f"{what}, every {factor}th point (spectral truncation)"
    return pos.reshape(-1, factor).mean(1), f"{what}, centres of {factor}-point blocks (block means)"


# ----------------------------------------------------------------------------- output


def _check_out(out: Path, overwrite: bool, source_path: Path | None) -> None:
    if source_path is not None:
        s, o = source_path.resolve(), out.resolve()
        if s == o or s in o.parents or o in s.parents:
            raise ValueError(f"out={out} and the source {source_path} overlap; write the data set elsewhere")
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"out={out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty ({', '.join(entries[:8])}); "
                              "pass overwrite=true to replace it")
    allowed = {f"{s}.zarr" for s in schema.SPLITS} | {f"{s}.zarr.partial" for s in schema.SPLITS} | {
        "shards", ".generate.lock", ".merge.lock"}
    other = [e for e in entries if e not in allowed]
    if other:
        raise FileExistsError(f"{out} holds files that are not part of an sns data set ({other}); overwrite=true "
                              "replaces only a data set directory: remove them or choose another out")


def _create_store(path: Path, name: str, src: _Source, shape: tuple[int, ...], n_traj: int, coords: dict,
                  var_attrs: dict, attrs: dict) -> Any:
    root = zarr.open_group(str(path), mode="w")
    var = root.create_array(name, shape=(n_traj, src.n_time, *shape), chunks=(1, min(src.n_time, CHUNK_FRAMES), *shape),
                            dtype="float32", dimension_names=(schema.TRAJECTORY, schema.TIME, *src.dims),
                            fill_value=float("nan"))
    var.attrs.update(var_attrs)
    for cname, (values, cattrs) in coords.items():
        arr = root.create_array(cname, shape=values.shape, dtype=values.dtype, dimension_names=(cname,))
        arr[:] = values
        arr.attrs.update(cattrs)
    root.attrs.update(attrs)
    return var


def _open_source(source: Any, fmt: str | None, engine: str | None, variable: Any, dims: Any,
                 columns: Any) -> tuple[_Source, Path | None, str]:
    import pandas as pd
    import xarray as xr

    if isinstance(source, xr.Dataset):
        if fmt is not None:
            raise ValueError(f"format={fmt!r} does not apply to an xarray.Dataset source")
        src = _from_xarray(source, variable, dims, "the xarray.Dataset source")
        src.close = lambda: None  # the caller's data set stays open
        return src, None, "xarray"
    if isinstance(source, pd.DataFrame):
        if variable is not None:
            raise ValueError("variable applies to xarray sources; for a table give the state columns with columns=")
        if fmt is not None:
            raise ValueError(f"format={fmt!r} does not apply to a pandas.DataFrame source")
        return _from_table(source, dims, columns, "the DataFrame source"), None, "dataframe"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(  # noqa: TRY004 - bad input is a ValueError naming the value (the CLIs catch it)
            f"source must be a path, an xarray.Dataset or a pandas.DataFrame, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist")
    kind = _detect_format(path, fmt)
    if kind == "csv":
        if variable is not None:
            raise ValueError("variable applies to xarray sources; for a CSV give the state columns with columns=")
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise ValueError(f"cannot read {path} as CSV: {err}") from err
        return _from_table(df, dims, columns, str(path)), path, kind
    if columns is not None:
        raise ValueError("columns applies to CSV sources; for xarray sources give variable= (a name or a list)")
    ds = _open_xarray(path, kind, engine)
    try:
        return _from_xarray(ds, variable, dims, str(path)), path, kind
    except BaseException:
        ds.close()
        raise


def import_dataset(
    source: str | os.PathLike | Any,
    out: str | os.PathLike,
    *,
    variable: str | Sequence[str] | None = None,
    dims: Mapping[str, str | None] | None = None,
    columns: Sequence[str] | None = None,
    format: str | None = None,
    engine: str | None = None,
    name: str | None = None,
    splits: Mapping[str, float | int] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    frame_interval: float | None = None,
    units: str | None = None,
    time_units: str | None = None,
    space_units: str | None = None,
    long_name: str | None = None,
    coarsen: int = 1,
    coarsen_method: str = "spectral",
    centre: bool = True,
    pooled_stats: bool = False,
    overwrite: bool = False,
    description: str = "",
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Import ``source`` into the ``sns`` data set ``out`` (system ``generic``; module docstring).

    Args:
        source: path of a zarr store, netCDF / HDF5 file or CSV table, or an ``xarray.Dataset``
            or ``pandas.DataFrame``.
        out: output directory; gets ``<split>.zarr`` for every non-empty split.
        variable: the source variable (xarray sources); a list stacks several variables as the
            channels of a field or the components of a vector.  None: the only data variable.
        dims: sns role -> source dim (CSV: trajectory / time column); roles ``trajectory``,
            ``time``, ``y``, ``x``, ``channel``, ``dim``; unmapped roles default to the source
            dim of the same name.
        columns: CSV state columns (default: all but the trajectory / time columns).
        format: ``zarr``, ``netcdf``, ``hdf5`` or ``csv`` (default: from the suffix).
        engine: xarray backend for netCDF / HDF5 (default: xarray's choice; ``h5netcdf`` for HDF5).
        name: name of the stored variable (default: the source variable's, or ``state`` /
            ``field`` for several variables and tables).
        splits: fractions or counts per split (default 0.8 / 0.1 / 0.1).
        shuffle, seed: permute the trajectories with ``seed`` before splitting.
        frame_interval: time between frames (default: the source time coordinate's step).
        units, time_units, space_units: units labels of the variable, the time and the grid
            positions (default: the source's ``units`` attrs; time and space default to ``"1"``).
        long_name: description of the variable (default: the source's ``long_name``).
        coarsen, coarsen_method: integer coarsening factor of fields, ``"spectral"``
            (spectral truncation) or ``"mean"`` (block means).
        centre: subtract the train mean in the normalisation (module docstring).
        pooled_stats: one mean / standard deviation for all channels or components.
        overwrite: replace an existing data set in ``out``.
        description: free text stored in the attrs.
        progress: called with progress lines (None: silent).

    Returns the output directory.  Raises ``ValueError`` (bad input, naming the value),
    ``FileNotFoundError`` (missing source) or ``FileExistsError`` (existing output); on any
    error nothing is left in or next to ``out``.
    """
    out = Path(out)
    for key, flag in (("shuffle", shuffle), ("centre", centre), ("pooled_stats", pooled_stats),
                      ("overwrite", overwrite)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{key} must be true or false, got {flag!r}")  # noqa: TRY004 - as above
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    src, source_path, fmt = _open_source(source, format, engine, variable, dims, columns)
    try:
        dt, t0 = _frame_interval(src, frame_interval)
        assignment = split_assignment(splits, src.n_traj, bool(shuffle), int(seed))
        factor, method = _check_coarsen(src, coarsen, coarsen_method)
        units = check_units("units", units if units is not None else src.units)
        time_units = check_units("time_units", time_units if time_units is not None else (src.time_units or "1"))
        if src.kind == "field":
            default_space = next((u for _, u in src.space.values() if u), None) or "1"
            space_units = check_units("space_units", space_units if space_units is not None else default_space)
        else:
            space_units = check_units("space_units", space_units if space_units is not None else "1")
        if name is None:
            name = src.variables[0] if fmt not in ("csv", "dataframe") and len(src.variables) == 1 else (
                "field" if src.kind == "field" else "state")
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED_NAMES:
            raise ValueError(f"name={name!r} cannot name the stored variable: give an identifier other than the "
                             f"dim names {sorted(_RESERVED_NAMES)} (name=...)")
        if long_name is not None and not isinstance(long_name, str):
            raise ValueError(f"long_name must be a string, got {long_name!r}")
        if not isinstance(description, str):
            raise ValueError(f"description must be a string, got {description!r}")  # noqa: TRY004
        _check_out(out, bool(overwrite), source_path)
        return _write(src, out, assignment, name=name, dt=dt, t0=t0, factor=factor, method=method, units=units,
                      time_units=time_units, space_units=space_units, long_name=long_name, centre=bool(centre),
                      pooled=bool(pooled_stats), seed=int(seed), shuffle=bool(shuffle), fmt=fmt,
                      source=str(source_path) if source_path is not None else f"<{fmt}>", description=description,
                      progress=progress)
    finally:
        src.close()


def _write(src: _Source, out: Path, assignment: dict[str, list[int]], *, name: str, dt: float, t0: float,
           factor: int, method: str | None, units: str, time_units: str, space_units: str,
           long_name: str | None, centre: bool, pooled: bool, seed: int, shuffle: bool, fmt: str, source: str,
           description: str, progress: Callable[[str], None] | None) -> Path:
    """Write the checked import into a temporary directory and rename it to ``out``."""
    import torch
    shape = src.shape if factor == 1 else (*src.shape[:-2], src.shape[-2] // factor, src.shape[-1] // factor)
    lay = {"variable": name, "dims": list(src.dims), "units": units,
           "long_name": long_name or src.long_name or f"{name} (imported from {Path(source).name})",
           "space_units": space_units, "time_units": time_units, "pooled_stats": pooled}
    coords: dict[str, tuple[np.ndarray, dict]] = {
        schema.TIME: (t0 + dt * np.arange(src.n_time, dtype=np.float64),
                      {"units": time_units, "long_name": "time (source time axis; frames every dt)"})}
    for d, n in zip(src.dims, shape):
        if d in (schema.Y, schema.X):
            values, _ = src.space.get(d, (None, None))
            pos, how = _positions(values, src.shape[src.dims.index(d)], factor, method)
            coords[d] = (pos, {"units": space_units, "long_name": f"{d} position ({how})"})
        else:
            cattrs: dict[str, Any] = {"units": "1", "long_name": f"{d} index"}
            if src.names is not None:
                cattrs["names"] = list(src.names)
            coords[d] = (np.arange(n, dtype=np.int64), cattrs)
    base = {
        "sns_schema": schema.SCHEMA_NAME, "sns_schema_version": schema.SCHEMA_VERSION,
        "sns_version": package_version(), "torch_version": torch.__version__, "system": schema.GENERIC,
        "preset": PRESET, "variable": name, "params": {}, "param_units": {}, "dt": float(dt), "save_every": 1,
        "spinup_steps": 0, "seed": seed, "description": description or f"imported from {source}",
        "layout": lay, "source": source, "source_format": fmt, "source_variables": list(src.variables),
        "source_dims": dict(src.mapping), "coarsen": {"factor": factor, "method": method},
        "frame_interval": float(dt), "normalisation_centred": centre, "shuffle": shuffle,
    }
    parent = out.parent
    created = None  # the first directory above out that this import creates
    probe = parent
    while not probe.exists():
        created, probe = probe, probe.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.import-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # the default mode (umask), as the data set directory will have
    old = None
    try:
        for split, indices in assignment.items():
            path = tmp / f"{split}.zarr"
            attrs = {**base, "split": split, "split_trajectories": len(indices),
                     "source_trajectories": [src.traj_ids[i] for i in indices]}
            var = _create_store(path, name, src, shape, len(indices), coords,
                                {"units": units, "long_name": lay["long_name"]}, attrs)
            for k, i in enumerate(indices):
                for a in range(0, src.n_time, CHUNK_FRAMES):
                    b = min(a + CHUNK_FRAMES, src.n_time)
                    x = src.read(i, a, b)
                    bad = ~np.isfinite(x)
                    if bad.any():
                        j = tuple(int(v) for v in np.argwhere(bad)[0])
                        raise ValueError(f"{src.where} has a non-finite value ({float(x[j])}) at "
                                         f"{src.locate(i, a + j[0], j[1:])}: sns data sets must be finite; "
                                         "drop or fill such values first (nothing was written)")
                    x = _coarsen(np.asarray(x, np.float64), factor, method)
                    x32 = x.astype(np.float32)
                    if not np.isfinite(x32).all():
                        j = tuple(int(v) for v in np.argwhere(~np.isfinite(x32))[0])
                        raise ValueError(f"{src.where}: a value at {src.locate(i, a + j[0], j[1:])} overflows "
                                         "float32 (sns stores float32); rescale the data first")
                    var[k, a:b] = x32
                if progress:
                    progress(f"  {split}: {k + 1}/{len(indices)} trajectories")
        mean, std = channel_stats(tmp / "train.zarr")
        offset, scale = normalisation(schema.GENERIC, PRESET, mean, std, centre=centre)
        for split in assignment:
            root = zarr.open_group(str(tmp / f"{split}.zarr"), mode="r+")
            root.attrs.update({"data_mean": mean, "data_std": std, "norm_offset": offset, "norm_scale": scale})
            consolidate(tmp / f"{split}.zarr")
        if out.exists() and any(out.iterdir()):  # overwrite (checked): move the old data set aside first
            old = parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            old.mkdir()
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / out.name, out)  # put the old data set back
            shutil.rmtree(old, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    unused = src.n_traj - sum(len(v) for v in assignment.values())
    if progress:
        counts = ", ".join(f"{s} {len(v)}" for s, v in assignment.items())
        progress(f"imported {src.where} -> {out}: {counts} trajectories x {src.n_time} frames"
                 + (f" ({unused} source trajectories not imported)" if unused else ""))
    return out
