"""Open and validate ``sns`` data sets (layout in :mod:`sns.data.schema`).

Opening is lazy: :func:`open_split` reads metadata only, so it is safe to call
before DataLoader workers start; arrays are read when indexed.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr
import zarr

from sns.data import schema


class DatasetError(ValueError):
    """A store that is missing, corrupt or not an ``sns`` data set."""


def check_store(path: str | os.PathLike) -> dict:
    """Validate the store at ``path`` and return its attrs; raise :class:`DatasetError` otherwise."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = f" (an unfinished {partial.name} exists: rerun generation to resume)" if partial.exists() else ""
        raise DatasetError(f"no data set store at {path}{hint}")
    try:
        # never the consolidated copy of the metadata: a store changed after it was written
        # (e.g. an array resized) must be read as it is
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
        attrs = dict(root.attrs)
    except Exception as err:  # zarr raises several types for unreadable stores
        raise DatasetError(f"{path} is not a readable zarr store: {err}") from err
    if attrs.get("sns_schema") != schema.SCHEMA_NAME:
        raise DatasetError(
            f"{path} is not an sns data set (attr sns_schema={attrs.get('sns_schema')!r}, "
            f"expected {schema.SCHEMA_NAME!r})"
        )
    if attrs.get("sns_schema_version") != schema.SCHEMA_VERSION:
        raise DatasetError(
            f"{path} has schema version {attrs.get('sns_schema_version')!r}; "
            f"this sns reads version {schema.SCHEMA_VERSION}"
        )
    missing = [k for k in schema.REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise DatasetError(f"{path} lacks required attrs {missing}")
    name = attrs["variable"]
    try:
        var = root[name]
    except KeyError as err:
        raise DatasetError(f"{path} lacks its data variable {name!r}") from err
    try:
        want = schema.variable_dims(attrs["system"], attrs)
    except ValueError as err:
        raise DatasetError(f"{path}: {err}") from err
    dims = tuple(var.metadata.dimension_names or ())
    if dims != want:
        raise DatasetError(f"{path}: variable {name!r} has dims {dims}, expected {want}")
    return attrs


def open_split(path: str | os.PathLike) -> xr.Dataset:
    """Open one split store lazily as an ``xarray.Dataset`` after validating it."""
    check_store(path)
    return xr.open_zarr(str(path), consolidated=False)


def open_dataset(directory: str | os.PathLike, split: str = "train") -> xr.Dataset:
    """Open ``directory/<split>.zarr`` (see :func:`open_split`)."""
    if split not in schema.SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {list(schema.SPLITS)}")
    return open_split(Path(directory) / f"{split}.zarr")


def summary(directory: str | os.PathLike) -> str:
    """A human-readable summary of every split in ``directory``."""
    lines = []
    for split in schema.SPLITS:
        path = Path(directory) / f"{split}.zarr"
        if not path.exists():
            continue
        ds = open_split(path)
        attrs = ds.attrs
        var = ds[attrs["variable"]]
        shape = " x ".join(f"{d} {n}" for d, n in zip(var.dims, var.shape))
        t = ds[schema.TIME].values
        lines.append(
            f"{split:5s}  {attrs['variable']} [{var.attrs.get('units', '?')}]  {shape}  "
            f"time {t[0]:.4g}..{t[-1]:.4g} {ds[schema.TIME].attrs.get('units', '')}"
        )
    if not lines:
        raise DatasetError(f"no split stores in {directory}")
    ds = open_dataset(directory, "train")
    a = ds.attrs
    def fmt(v: list) -> str:
        text = ", ".join(f"{x:.4g}" for x in v[:4])
        return text + (f", ... ({len(v)} channels)" if len(v) > 4 else "")

    if a["system"] == schema.GENERIC:  # imported: no solver, dt is the frame interval
        origin = [f"  imported from {a.get('source')} (no solver); frame interval {a['dt']:.4g}"]
    else:
        origin = [f"  solver params: {a['params']}",
                  f"  dt {a['dt']:.4g}, saved every {a['save_every']} steps, spin-up {a['spinup_steps']} steps"]
    head = [
        f"data set {directory}: system {a['system']}, preset {a['preset']}, seed {a['seed']}, "
        f"sns {a['sns_version']}",
        *origin,
        f"  train mean [{fmt(a['data_mean'])}], std [{fmt(a['data_std'])}]; "
        f"normalisation (x - [{fmt(a['norm_offset'])}]) / [{fmt(a['norm_scale'])}]",
    ]
    return "\n".join(head + ["  " + line for line in lines])
