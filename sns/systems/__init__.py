"""Reference solvers and their generation presets.

``make_system(name, **params)`` builds a solver; ``get_preset(name, preset)``
returns a :class:`~sns.systems.base.Preset`.  Valid names are in ``SYSTEMS``; the name
``generic`` (data imported with ``sns-import``) is known but has no solver, and asking for
one raises a ``ValueError`` that says so.
"""

from __future__ import annotations

import importlib
from typing import Any

from sns.systems.base import Preset, System

# name -> (module, class, presets attribute); imported lazily.
SYSTEMS: dict[str, tuple[str, str, str]] = {
    "kolmogorov": ("sns.systems.kolmogorov", "KolmogorovFlow", "PRESETS"),
    "qg": ("sns.systems.qg", "TwoLayerQG", "PRESETS"),
    "lorenz63": ("sns.systems.lorenz", "Lorenz63", "PRESETS_LORENZ63"),
    "lorenz96": ("sns.systems.lorenz", "Lorenz96", "PRESETS_LORENZ96"),
    "lorenz96_two_scale": ("sns.systems.lorenz96_two_scale", "Lorenz96TwoScale", "PRESETS_LORENZ96_TWO_SCALE"),
    "hodgkin_huxley": ("sns.systems.hodgkin_huxley", "HodgkinHuxley", "PRESETS_HODGKIN_HUXLEY"),
    "henon_heiles": ("sns.systems.henon_heiles", "HenonHeiles", "PRESETS_HENON_HEILES"),
}


#: The system of data imported with ``sns-import`` (:data:`sns.data.schema.GENERIC`): it has
#: no solver, so nothing here can build, generate or differentiate it.
GENERIC = "generic"


def _entry(name: str) -> tuple[Any, dict[str, Preset]]:
    if name == GENERIC:
        raise ValueError(f"system {GENERIC!r} has no built-in solver (it is the system of data imported "
                         "with sns-import): it cannot generate data, and nothing that needs a solver "
                         f"(analytic divergence, reference solver) is available for it; systems with a "
                         f"solver: {sorted(SYSTEMS)}")
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; valid choices: {sorted(SYSTEMS)}")
    module, cls, presets = SYSTEMS[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, presets)


def system_class(name: str) -> type:
    """The solver class registered under ``name``."""
    return _entry(name)[0]


def get_preset(name: str, preset: str) -> Preset:
    """The generation preset ``preset`` ("paper" or "cpu") of system ``name``."""
    presets = _entry(name)[1]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for system {name!r}; valid choices: {sorted(presets)}")
    return presets[preset]


def make_system(name: str, **params: Any) -> System:
    """Build the solver ``name`` with constructor keyword arguments ``params``."""
    return system_class(name)(**params)


__all__ = ["GENERIC", "SYSTEMS", "Preset", "System", "get_preset", "make_system", "system_class"]
