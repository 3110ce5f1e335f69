"""Names of dims, variables, units and attrs of ``sns`` data sets, declared once.

A data set is a directory with one zarr store per split (``train.zarr``,
``valid.zarr``, ``test.zarr``).  Each store holds one float32 variable named
after the system's field, with dims

* fields:        ``(trajectory, time, y, x)``
* layered fields: ``(trajectory, time, layer, y, x)`` (QG)
* channel fields: ``(trajectory, time, channel, y, x)`` (imported data only)
* vectors:       ``(trajectory, time, dim)``

coordinates ``time`` (physical time of each frame), ``y``/``x`` (positions: grid
nodes ``j L / N`` for Kolmogorov, cell centres ``(j + 1/2) L / N`` for QG; each
coordinate's ``long_name`` states its offset) or ``dim``/``layer`` (indices), each
with ``units`` and ``long_name``, and the attrs listed in :data:`REQUIRED_ATTRS`.
The writers (``sns.data.generate``, ``sns.data.importer``), the readers
(``sns.data.io``) and the plots use only these names.

Data imported from other tools (``sns-import``) belong to the system
:data:`GENERIC`, which has no solver: its variable may have any of the dims in
:data:`GENERIC_DIMS` (a field with any number of channels on any grid, or a vector
of any dimension), and its layout (dims, units, names) is recorded in the store's
``layout`` attr rather than in :data:`SYSTEM_LAYOUT`; :func:`layout` and
:func:`variable_dims` read it from the attrs.

Rollout stores (:mod:`sns.rollout`) use the same names: dims ``(trajectory, time, *state
dims)``, coordinate ``time`` = the physical time of each state (``step * dt``, the data's time
units; the step index itself where a rollout was given no ``dt``) and :data:`STEP` = the step
index.  (Rollout stores written before 2026-12-03 had ``time`` = step index and ``t`` = physical
time; :func:`sns.rollout.open_rollout` presents them in the current layout.)

Finished stores carry consolidated metadata, so a plain ``xr.open_zarr(path)``
opens them without a warning; ``sns``'s own readers ignore it and read each
array's metadata (a store changed after it was written cannot mislead them).
"""

from __future__ import annotations

TRAJECTORY = "trajectory"
TIME = "time"
LAYER = "layer"
Y = "y"
X = "x"
DIM = "dim"
CHANNEL = "channel"  # channel axis of rollout stores (fields kept as (C, H, W))
STEP = "step"  # rollout stores: the step index of each state, a coordinate along ``time``
LEGACY_PHYSICAL_TIME = "t"  # rollout stores before 2026-12-03: physical time (``time`` was the step)
Z = "z"

SPLITS = ("train", "valid", "test")

#: System of data sets imported with ``sns-import``: no solver, layout in the store's attrs.
GENERIC = "generic"
#: Variable dims (after trajectory, time) a generic data set may have: a single-channel field,
#: a field with a channel axis, a vector.
GENERIC_DIMS = ((Y, X), (CHANNEL, Y, X), (DIM,))
SCHEMA_NAME = "sns-dataset"
SCHEMA_VERSION = 1

#: Attribute keys every split store carries.
REQUIRED_ATTRS = (
    "sns_schema",  # SCHEMA_NAME
    "sns_schema_version",  # SCHEMA_VERSION
    "sns_version",  # package version that wrote it
    "system",  # registry name of the system
    "preset",  # preset name
    "split",  # train / valid / test
    "variable",  # name of the data variable
    "params",  # solver constructor arguments (JSON-able dict)
    "param_units",  # units of each parameter
    "dt",  # solver time step
    "save_every",  # solver steps between frames
    "spinup_steps",  # solver steps before the first frame
    "seed",  # base seed of the data set
    "norm_offset",  # per channel: x_norm = (x - offset) / scale
    "norm_scale",
    "data_mean",  # per channel, measured on the train split
    "data_std",
)

#: Per system: variable dims after (trajectory, time), and the coordinate units.
#: ``space_units`` is the unit of the x/y coordinates, ``time_units`` of time.
SYSTEM_LAYOUT: dict[str, dict] = {
    "kolmogorov": {
        "variable": "vorticity",
        "dims": (Y, X),
        "units": "1/s",  # nondimensional units labelled m and s, as in sns.systems.kolmogorov
        "long_name": "relative vorticity (nondimensional, domain [0, 2pi)^2), spectrally truncated",
        "space_units": "m",
        "time_units": "s",
    },
    "qg": {
        "variable": "pv",
        "dims": (LAYER, Y, X),
        "units": "1/s",
        "long_name": "eddy potential vorticity, block-averaged",
        "space_units": "m",
        "time_units": "s",
    },
    "lorenz63": {
        "variable": "state",
        "dims": (DIM,),
        "units": "1",
        "long_name": "Lorenz-63 state (x, y, z)",
        "space_units": "1",
        "time_units": "MTU",
    },
    "lorenz96": {
        "variable": "state",
        "dims": (DIM,),
        "units": "1",
        "long_name": "Lorenz-96 state",
        "space_units": "1",
        "time_units": "MTU",
        "pooled_stats": True,  # statistically homogeneous: one mean/std for all coordinates
    },
    "lorenz96_two_scale": {
        "variable": "state",
        "dims": (DIM,),
        "units": "1",
        "long_name": "two-scale Lorenz-96 slow variables X_k (the fast variables Y are not stored)",
        "space_units": "1",
        "time_units": "MTU",
        "pooled_stats": True,  # cyclic symmetry: one mean/std for all slow coordinates
    },
    "hodgkin_huxley": {
        "variable": "state",
        "dims": (DIM,),
        "units": "mV (V), 1 (m, h, n)",
        "long_name": "Hodgkin-Huxley state (V, m, h, n): membrane potential and gating variables",
        "space_units": "1",
        "time_units": "ms",
    },
    "henon_heiles": {
        "variable": "state",
        "dims": (DIM,),
        "units": "1",
        "long_name": "Henon-Heiles state (x, y, px, py): positions and momenta (unit mass)",
        "space_units": "1",
        "time_units": "1",
    },
}


def layout(system: str, attrs: dict | None = None) -> dict:
    """The storage layout of ``system``; raises ``ValueError`` naming valid systems.

    For :data:`GENERIC` the layout is the ``layout`` attr of a store, so ``attrs`` (the
    store's attrs) must be given; its ``dims`` are returned as a tuple."""
    if system == GENERIC:
        lay = (attrs or {}).get("layout")
        if not isinstance(lay, dict):
            raise ValueError(f"a {GENERIC!r} data set records its layout in the attr 'layout'; "
                             f"got {lay!r} (make generic data sets with sns-import)")
        dims = tuple(lay.get("dims") or ())
        if dims not in GENERIC_DIMS:
            raise ValueError(f"generic layout dims {dims} are not valid; valid choices: {list(GENERIC_DIMS)}")
        return {**lay, "dims": dims}
    if system not in SYSTEM_LAYOUT:
        raise ValueError(f"no data layout for system {system!r}; valid choices: "
                         f"{sorted([*SYSTEM_LAYOUT, GENERIC])}")
    return SYSTEM_LAYOUT[system]


def variable_dims(system: str, attrs: dict | None = None) -> tuple[str, ...]:
    """All dims of the data variable of ``system``, trajectory and time first (``attrs``: the
    store's attrs, needed for :data:`GENERIC`)."""
    return (TRAJECTORY, TIME, *layout(system, attrs)["dims"])
