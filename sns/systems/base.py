"""The interface every reference solver implements, and the generation presets.

A *system* is a batched solver for one dynamical system.  Its internal state can
be anything (Kolmogorov and QG keep Fourier coefficients); what leaves the
system is a real tensor of *observed fields* with shape ``(B, C, H, W)`` for
fields or ``(B, D)`` for vector systems, produced by :meth:`System.observe`.

Every system exposes

* ``rhs(u)``: the time derivative of the state ``u`` in the state's own
  representation (real physical-space fields for the PDEs: see each module);
* ``step(u, n)``: advance a batch by ``n`` solver steps of size ``dt``;
* ``divergence(u)``: the analytic phase-space divergence ``tr(d rhs / d u)``
  of the (discretised) vector field, per sample, shape ``(B,)``;
* ``initial_condition(batch, generator)``: random initial states;
* ``observe(u)``: the stored fields (coarse-grained where the preset says so);
* ``params``: the physical parameters (a dict of plain numbers, with units in
  ``PARAM_UNITS`` of each module).

Presets (``paper`` and ``cpu``) describe how a data set is generated: solver
parameters, solver step, spin-up, save interval, number of frames and
trajectories per split.  ``paper`` reproduces DESIGN.md's recipes (GPU-sized),
``cpu`` keeps the same physical regime at a size that generates here in
minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class System(Protocol):
    """A batched reference solver (see module docstring)."""

    name: str
    dt: float
    field_names: tuple[str, ...]  #: variable names of the observed fields
    field_units: tuple[str, ...]  #: units of each observed field

    @property
    def params(self) -> dict[str, Any]: ...

    def rhs(self, u: Tensor) -> Tensor: ...

    def step(self, u: Tensor, n: int = 1) -> Tensor: ...

    def divergence(self, u: Tensor) -> Tensor: ...

    def initial_condition(self, batch: int, generator: torch.Generator | None = None) -> Tensor: ...

    def observe(self, u: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Preset:
    """How to generate one data set of a system.

    ``system`` holds the keyword arguments of the system's constructor;
    the remaining fields are integration and sampling choices.
    """

    system: dict[str, Any]
    spinup_steps: int  #: solver steps discarded before the first saved frame
    save_every: int  #: solver steps between saved frames
    n_frames: int  #: saved frames per trajectory
    trajectories: dict[str, int] = field(
        default_factory=lambda: {"train": 8, "valid": 2, "test": 2}
    )  #: trajectories per split
    description: str = ""

    def __post_init__(self) -> None:
        for key in ("spinup_steps", "save_every", "n_frames"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < (0 if key == "spinup_steps" else 1):
                raise ValueError(f"Preset.{key} must be a positive integer, got {value!r}")
        for split, n in self.trajectories.items():
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"Preset.trajectories[{split!r}] must be >= 0, got {n!r}")


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value > 0``."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
