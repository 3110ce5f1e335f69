"""Divergence regularization: a plug-in loss term for any learned vector field.

The divergence of a vector field ``f: R^D -> R^D`` is the trace of its Jacobian,
``div f(x) = tr(df/dx) = sum_i d f_i / d x_i``: the local rate of change of phase-space
volume under the flow ``dx/dt = f(x)`` (Liouville: ``d/dt log vol = div f``).  A
dissipative system contracts volume (``div f < 0``; Lorenz-63: ``-(sigma + 1 + beta)``
everywhere), which is what keeps its trajectories on an attractor.  The regularizer
of seed 000 ("Step-by-Step Guide", step 2) penalises the mismatch with a target::

    L_div = lambda(epoch) * mean_n (div f(x_n) - target(x_n))^2

with ``lambda`` zero for the first epochs, then ramped up (:class:`WarmupSchedule`).

Two estimators of ``div f`` (:func:`divergence`):

* ``"exact"``: ``D`` vector-Jacobian products ``e_i^T (df/dx)`` by autograd, summed on
  the diagonal; exact, cost ``D`` backward passes (small ``D``: ODE states);
* ``"hutchinson"``: ``div f(x) ~ (1/K) sum_k v_k^T (df/dx) v_k`` with ``K`` Rademacher
  probes ``v_k in {-1, +1}^D`` (Hutchinson 1990); unbiased, variance
  ``sum_{i<j} (J_ij + J_ji)^2 / K`` (it falls like ``1/K``), cost ``K`` backward passes
  whatever ``D`` (fields).

Which vector field (``DivergenceRegularizer(field=...)``):

* ``"vector_field"``: a continuous-time model's own ``f`` (``model.vector_field(x)``,
  e.g. :class:`sns.surrogates.neural_ode.NeuralODE`);
* ``"increment"``: a discrete surrogate ``F`` (one step of ``dt`` time units) read as the
  Euler field ``f(x) = (F(x) - x) / dt`` (``model.increment(x) / dt`` when the model has
  ``increment``).  Its divergence ``tr(dF/dx - I) / dt`` is only a first-order estimate of
  the flow's: for the exact Lorenz-63 flow map over ``dt = 0.05`` it averages -12.5 over
  the attractor, from -32 to -1.7 point by point (std 6.2), instead of -13.67 everywhere
  (measured on 2000 points), so with a large ``dt`` prefer
* ``"flow_map"``: ``log|det dF/dx| / dt``, the time-averaged divergence along the step
  (Liouville: ``det dPhi_dt/dx = exp(int_0^dt div f(x(s)) ds)``), exact for the true flow
  map (Lorenz-63: -13.667 at ``dt = 0.05``); needs the full Jacobian (``method="exact"``).
* ``"auto"``: ``vector_field`` if the model has one, else ``increment``.

Coordinates and units.  The training data are normalised per channel,
``x_n = (x - offset) / scale``; a diagonal affine change of coordinates leaves the
trace of the Jacobian unchanged (``tr(S^-1 J S) = tr J``), so the divergence in
normalised coordinates equals the physical one at the corresponding point, in units of
1 / (the time unit of ``dt``).  ``dt`` must therefore be in the system's time unit: for
a data set of ``sns-generate`` it is ``attrs["dt"] * attrs["save_every"]`` (solver step
times solver steps per saved frame), which ``data_dir=`` reads.

Targets (``DivergenceRegularizer(target=...)``):

* a number: a constant target;
* ``"system:<name>"``: the analytic divergence of ``sns.systems.make_system(name)``,
  evaluated at the states mapped back to physical units with the data normalisation
  (``norm_offset``/``norm_scale`` or those of ``data_dir``; without them the states are
  taken as physical).  Lorenz-63 / Lorenz-96 have constant divergence;
* ``"data"``: a constant estimated from the training trajectories by
  :func:`estimate_divergence` (local flow-map regression, below);
* a callable ``target(x) -> (N,)`` in the model's (normalised) coordinates.

:func:`resolve_target` turns a spec into a :class:`ResolvedTarget` (the function and the data
facts it used); it is the only code here that reads a data set or builds a solver, and the entry
point (``sns-train``) calls it once per term, so the loss term itself is pure.

References: Hutchinson, Commun. Stat. Simul. Comput. 19 (1990) 433; Grathwohl et al.,
FFJORD (ICLR 2019) for Hutchinson traces of neural vector fields.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sns.diffops import (  # noqa: F401 - the operators live in a neutral module (the metrics use them too)
    METHODS,
    _check_probes,
    divergence,
    flow_map_divergence,
    jacobian,
    rademacher,
)

__all__ = [
    "DivergenceRegularizer",
    "ResolvedTarget",
    "WarmupSchedule",
    "divergence",
    "estimate_divergence",
    "flow_map_divergence",
    "resolve_target",
]

FIELDS = ("auto", "vector_field", "increment", "flow_map")
_BY = ("epoch", "step")


class WarmupSchedule:
    """Weight of a loss term as a function of the epoch (or optimizer step) ``t``::

        w(t) = 0                                            t < start
        w(t) = weight * min(1, (t - start + 1) / ramp)      t >= start, ramp > 0
        w(t) = weight                                       t >= start, ramp = 0

    i.e. 0 for the first ``start`` epochs, then a linear ramp reaching ``weight`` after
    ``ramp`` epochs (seed 000, step 3: "start with lambda = 0 for the first few epochs,
    then gradually increase it").

    Args:
        start: first epoch (step) with a non-zero weight (>= 0).
        ramp: epochs (steps) of the linear ramp (>= 0; 0: full weight at ``start``).
        weight: final weight ``lambda`` (>= 0).
        by: ``"epoch"`` (``module.current_epoch``) or ``"step"`` (``module.global_step``).
    """

    def __init__(self, start: int = 0, ramp: int = 0, weight: float = 1.0, by: str = "epoch") -> None:
        for name, value in (("start", start), ("ramp", ramp)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"warm-up {name} must be a non-negative integer, got {value!r}")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if by not in _BY:
            raise ValueError(f"unknown warm-up unit {by!r}; valid choices: {_BY}")
        self.start, self.ramp, self.weight, self.by = int(start), int(ramp), float(weight), by

    def __call__(self, t: int) -> float:
        if t < self.start:
            return 0.0
        if self.ramp == 0:
            return self.weight
        return self.weight * min(1.0, (t - self.start + 1) / self.ramp)

    def at(self, module: Any) -> float:
        """The weight for a LightningModule's current epoch or global step."""
        return self(int(module.current_epoch if self.by == "epoch" else module.global_step))

    def __repr__(self) -> str:
        return f"WarmupSchedule(start={self.start}, ramp={self.ramp}, weight={self.weight}, by={self.by!r})"


def estimate_divergence(
    trajectories: np.ndarray | Tensor,
    dt: float,
    k: int = 20,
    n_anchors: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Divergence estimated from trajectories alone, by local regression of the flow map.

    For ``n_anchors`` random frames ``x_a`` (not the last of their trajectory), take its
    ``k`` nearest neighbours ``x_j`` among all such frames and fit, by least squares, the
    linear map ``M_a`` with ``x_{j+1} - x_{a+1} ~ M_a (x_j - x_a)`` (``x_{j+1}``: the next
    saved frame, ``dt`` later).  ``M_a`` estimates the flow-map Jacobian ``dPhi_dt/dx`` at
    ``x_a``, so by Liouville ``log|det M_a| / dt`` estimates the divergence averaged along
    ``[t_a, t_a + dt]``.  The estimate is the **median** over anchors (robust to the
    anchors whose neighbourhood is too thin to resolve the contracting direction).

    Honest caveats: data on an attractor are thin in the contracting direction, so an
    anchor's regression is ill-conditioned there; it works when the attractor has
    measurable thickness at the neighbourhood scale (Lorenz-63 saved every 0.05 with
    64,000 frames gives -13.60 vs the exact -13.667, measured) and is biased by the
    curvature of ``Phi`` over the neighbourhood (too few data: large ``k`` radius) and by
    observation noise (inflates ``det``).  Coordinates may be normalised (the trace of a
    diagonally rescaled Jacobian is the same, see the module docstring).

    Args:
        trajectories: ``(N, T, D)`` frames ``dt`` apart (or ``(T, D)``).
        dt: time between frames, in the system's time unit (> 0).
        k: neighbours per anchor (> D).
        n_anchors: anchors (all frames if fewer).
        seed: seed of the anchor choice.

    Returns:
        ``{"divergence": median, "mean": mean, "iqr": (q25, q75), "local": (n_anchors,) array}``.
    """
    from scipy.spatial import cKDTree

    X = np.asarray(trajectories.detach().cpu() if isinstance(trajectories, Tensor) else trajectories, np.float64)
    if X.ndim == 2:
        X = X[None]
    if X.ndim != 3 or X.shape[1] < 2:
        raise ValueError(f"trajectories must have shape (N, T >= 2, D), got {X.shape}")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    D = X.shape[2]
    A, B = X[:, :-1].reshape(-1, D), X[:, 1:].reshape(-1, D)
    if not isinstance(k, int) or k <= D or k >= len(A):
        raise ValueError(f"k must be an integer with D={D} < k < {len(A)} (frames), got {k!r}")
    rng = np.random.default_rng(seed)
    anchors = rng.choice(len(A), size=min(n_anchors, len(A)), replace=False)
    _, nb = cKDTree(A).query(A[anchors], k=k + 1)
    local = np.empty(len(anchors))
    for i, (a, n) in enumerate(zip(anchors, nb)):
        n = n[n != a][:k]
        M, *_ = np.linalg.lstsq(A[n] - A[a], B[n] - B[a], rcond=None)
        local[i] = np.linalg.slogdet(M)[1] / dt
    q25, q75 = np.percentile(local, [25, 75])
    return {"divergence": float(np.median(local)), "mean": float(local.mean()), "iqr": (float(q25), float(q75)),
            "local": local}


def _store_attrs(data_dir: str | Path) -> dict[str, Any]:
    from sns.data.io import check_store

    return dict(check_store(Path(data_dir) / "train.zarr"))


#: Arguments of :func:`resolve_target` besides the target (an entry point pops them from a term's config).
TARGET_KEYS = ("data_dir", "dt", "norm_offset", "norm_scale", "system_params", "data_estimator")


@dataclass(frozen=True)
class ResolvedTarget:
    """A divergence target ready for :class:`DivergenceRegularizer`, with the data facts it was
    resolved with: ``fn(x) -> (N,)`` on normalised states, ``dt`` (time of one discrete step,
    or None), the normalisation, and the estimate of target ``"data"``."""

    fn: Callable[[Tensor], Tensor]
    description: str
    dt: float | None = None
    norm_offset: Tensor | None = None
    norm_scale: Tensor | None = None
    data_estimate: dict[str, Any] | None = field(default=None, compare=False)


def _to_physical(x: Tensor, offset: Tensor | None, scale: Tensor | None) -> Tensor:
    """Normalised ``(N, C, ...)`` / ``(N, D)`` states back to physical units (float64)."""
    x = x.detach().double()
    if scale is None and offset is None:
        return x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    sc = scale.to(x.device).reshape(shape) if scale is not None else 1.0
    off = offset.to(x.device).reshape(shape) if offset is not None else 0.0
    return x * sc + off


def resolve_target(
    target: float | str | Callable[[Tensor], Tensor],
    data_dir: str | Path | None = None,
    dt: float | None = None,
    norm_offset: Sequence[float] | None = None,
    norm_scale: Sequence[float] | None = None,
    system_params: Mapping[str, Any] | None = None,
    data_estimator: Mapping[str, Any] | None = None,
) -> ResolvedTarget:
    """Turn a target spec (module docstring) into a :class:`ResolvedTarget`: everything that
    reads data or builds a solver happens here, once, in the entry point (``sns-train`` calls it
    for every divergence term of its config), not in the loss term.

    ``data_dir`` (an ``sns`` data directory) supplies what is not given: ``dt`` (``dt *
    save_every`` of its train split), the normalisation, the solver parameters of target
    ``"system:<name>"`` when the data set holds that system, and the trajectories of target
    ``"data"`` (:func:`estimate_divergence` with ``data_estimator``).
    """
    if isinstance(target, ResolvedTarget):
        return target
    if dt is not None and not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    attrs = _store_attrs(data_dir) if data_dir is not None else {}
    if dt is None and "dt" in attrs and "save_every" in attrs:
        dt = float(attrs["dt"]) * int(attrs["save_every"])
    offset = norm_offset if norm_offset is not None else attrs.get("norm_offset")
    scale = norm_scale if norm_scale is not None else attrs.get("norm_scale")
    offset = torch.as_tensor(offset, dtype=torch.float64) if offset is not None else None
    scale = torch.as_tensor(scale, dtype=torch.float64) if scale is not None else None
    facts = {"dt": float(dt) if dt is not None else None, "norm_offset": offset, "norm_scale": scale}
    if callable(target):
        return ResolvedTarget(target, getattr(target, "__name__", type(target).__name__), **facts)
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        value = float(target)
        return ResolvedTarget(lambda x: torch.full(x.shape[:1], value, dtype=x.dtype, device=x.device),
                              f"constant {value}", **facts)
    if isinstance(target, str) and target.startswith("system:"):
        from sns.systems import make_system

        name = target.split(":", 1)[1]
        if name == "generic":
            raise ValueError("divergence target 'system:generic' is not available: data imported with "
                             "sns-import (system generic) have no solver, hence no analytic divergence; "
                             "valid choices: target='data' (estimated from the training trajectories), "
                             "a number, or 'system:<name>' of a built-in system")
        params = dict(system_params) if system_params is not None else (
            dict(attrs.get("params", {})) if attrs.get("system") == name else {})
        system = make_system(name, **params)

        def system_target(x: Tensor) -> Tensor:
            return system.divergence(_to_physical(x, offset, scale).to(getattr(system, "dtype", torch.float64))).to(x)

        return ResolvedTarget(system_target, f"analytic divergence of {name}", **facts)
    if target == "data":
        if data_dir is None:
            raise ValueError("target='data' estimates the divergence from the training trajectories: "
                             "give data_dir (an sns data directory)")
        if dt is None:
            raise ValueError(f"{data_dir} has no dt/save_every attrs; give dt")
        from sns.data.io import open_split

        ds = open_split(Path(data_dir) / "train.zarr")
        arr = np.asarray(ds[attrs["variable"]].values, np.float64)
        off = np.asarray(attrs.get("norm_offset", 0.0)); sc = np.asarray(attrs.get("norm_scale", 1.0))
        est = estimate_divergence((arr - off) / sc, float(dt), **dict(data_estimator or {}))
        value = est["divergence"]
        return ResolvedTarget(lambda x: torch.full(x.shape[:1], value, dtype=x.dtype, device=x.device),
                              f"estimated from data: {value:.4g}", data_estimate=est, **facts)
    raise ValueError(f"unknown divergence target {target!r}; valid choices: a number, 'system:<name>', "
                     "'data' or a callable x -> (N,)")


class DivergenceRegularizer:
    """Loss term ``lambda(t) * mean((div f(x) - target(x))^2)`` (:mod:`sns.training.terms`).

    Called as ``term(module, batch, outputs)``: the points are ``outputs["inputs"]``
    (the states the module fed to its network, ``(N, *state)``; detached, at most
    ``max_points`` of them, drawn at random), the field comes from ``module.model``
    (``field``, module docstring).  Logs (under ``train/<name>_...``): ``err`` = mean
    absolute deviation ``mean |div f - target|`` (the seed's "divergence error"),
    ``mean`` (mean ``div f``), ``target`` (mean target), ``weight`` (current lambda).
    While the weight is 0 the divergence is still computed (for the log) but without a
    graph, and the term adds an exact zero.

    The target is resolved once (:func:`resolve_target`): ``sns-train`` does it in the entry
    point and passes a :class:`ResolvedTarget`; a number, a callable or ``"system:<name>"``
    given here is resolved by the constructor (no data read).  ``data_dir=`` here (the
    constructor reading a store) is deprecated: resolve the target first,
    ``DivergenceRegularizer(resolve_target(target, data_dir=...), ...)``.

    Args:
        target: :class:`ResolvedTarget`, number, ``"system:<name>"``, ``"data"`` or callable
            (module docstring).
        weight: final weight lambda (>= 0).
        start, ramp, by: :class:`WarmupSchedule`.
        method: ``"exact"`` or ``"hutchinson"``.
        n_probes: Hutchinson probes (>= 1).
        field: ``"auto"``, ``"vector_field"``, ``"increment"`` or ``"flow_map"``.
        dt: time of one step of a discrete surrogate, in the system's time unit (needed for
            ``increment`` / ``flow_map``; default: ``dt * save_every`` of ``data_dir``).
        data_dir: an ``sns`` data directory: its ``train.zarr`` attrs give ``dt``, the
            normalisation, and (target ``"data"``) the trajectories.
        norm_offset, norm_scale: per-channel normalisation ``x_n = (x - offset) / scale``
            (override those of ``data_dir``).
        system_params: constructor arguments of the target system (default: the data set's
            ``params`` when ``data_dir`` holds that system, else the system's defaults).
        max_points: use at most this many points per call (None: all).
        data_estimator: keyword arguments of :func:`estimate_divergence` (target ``"data"``).
        name: log prefix.
    """

    def __init__(
        self,
        target: float | str | Callable[[Tensor], Tensor],
        weight: float = 1.0,
        start: int = 0,
        ramp: int = 0,
        by: str = "epoch",
        method: str = "exact",
        n_probes: int = 1,
        field: str = "auto",
        dt: float | None = None,
        data_dir: str | Path | None = None,
        norm_offset: Sequence[float] | None = None,
        norm_scale: Sequence[float] | None = None,
        system_params: Mapping[str, Any] | None = None,
        max_points: int | None = 1024,
        data_estimator: Mapping[str, Any] | None = None,
        name: str = "div",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown divergence method {method!r}; valid choices: {METHODS}")
        if field not in FIELDS:
            raise ValueError(f"unknown field {field!r}; valid choices: {FIELDS}")
        if field == "flow_map" and method != "exact":
            raise ValueError("field='flow_map' needs the full Jacobian: use method='exact' (valid choices for "
                             "method='hutchinson': field 'auto', 'vector_field' or 'increment')")
        if dt is not None and not dt > 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        if max_points is not None and (not isinstance(max_points, int) or max_points < 1):
            raise ValueError(f"max_points must be a positive integer or None, got {max_points!r}")
        self.schedule = WarmupSchedule(start, ramp, weight, by)
        self.method, self.n_probes, self.field = method, _check_probes(n_probes), field
        self.max_points = max_points
        self.name = name
        if data_dir is not None:
            warnings.warn("DivergenceRegularizer(data_dir=...) reads the data set in the constructor and is "
                          "deprecated: pass resolve_target(target, data_dir=...) as the target (sns-train does)",
                          DeprecationWarning, stacklevel=2)
        if isinstance(target, ResolvedTarget) and any(v is not None for v in (data_dir, norm_offset, norm_scale,
                                                                              system_params, data_estimator)):
            raise ValueError("a ResolvedTarget carries its data facts: give data_dir / norm_* / system_params / "
                             "data_estimator to resolve_target, not here")
        resolved = resolve_target(target, data_dir=data_dir, dt=dt, norm_offset=norm_offset, norm_scale=norm_scale,
                                  system_params=system_params, data_estimator=data_estimator)
        self.dt = float(dt) if dt is not None else resolved.dt
        self.norm_offset, self.norm_scale = resolved.norm_offset, resolved.norm_scale
        self._target_fn, self.target_description = resolved.fn, resolved.description
        self.data_estimate = resolved.data_estimate

    def _field(self, model: Any) -> tuple[str, Callable[[Tensor], Tensor]]:
        kind = self.field
        if kind == "auto":
            kind = "vector_field" if hasattr(model, "vector_field") else "increment"
        if kind == "vector_field":
            if not hasattr(model, "vector_field"):
                raise ValueError(f"field='vector_field' but {type(model).__name__} has no vector_field(x); "
                                 "valid choices for a discrete surrogate: 'increment', 'flow_map'")
            return kind, model.vector_field
        if self.dt is None:
            raise ValueError(f"field={kind!r} reads a discrete surrogate as a vector field and needs its time "
                             "step: give dt (time between saved frames) or data_dir")
        dt = self.dt
        if kind == "flow_map":
            return kind, model
        if hasattr(model, "increment"):
            return kind, lambda x: model.increment(x) / dt
        return kind, lambda x: (model(x) - x) / dt

    # ----- the term
    def divergence(self, model: Any, x: Tensor, create_graph: bool = True) -> Tensor:
        """``div f`` of ``model``'s field (``field``) at ``x``, ``(N,)``."""
        kind, f = self._field(model)
        if kind == "flow_map":
            if x.ndim != 2:
                raise ValueError(f"field='flow_map' needs vector states (N, D), got {tuple(x.shape)}")
            return flow_map_divergence(f, x, self.dt, create_graph=create_graph)
        return divergence(f, x, self.method, self.n_probes, create_graph=create_graph)

    def target(self, x: Tensor) -> Tensor:
        """Target divergence at ``x`` (model coordinates), ``(N,)``."""
        t = self._target_fn(x)
        if not isinstance(t, Tensor) or t.shape != x.shape[:1]:
            raise ValueError(f"the divergence target must return a tensor of shape ({x.shape[0]},), got {t!r}")
        return t.to(dtype=x.dtype, device=x.device)

    def __call__(self, module: Any, batch: Any, outputs: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        if "inputs" not in outputs:
            raise ValueError(f"the divergence term needs outputs['inputs']; the module gave {sorted(outputs)}")
        x = outputs["inputs"].detach()
        if self.max_points is not None and x.shape[0] > self.max_points:
            x = x[torch.randperm(x.shape[0], device=x.device)[: self.max_points]]
        w = self.schedule.at(module)
        active = w > 0 and torch.is_grad_enabled()
        div = self.divergence(module.model, x, create_graph=active)
        tgt = self.target(x)
        err = div - tgt
        logs = {"err": err.detach().abs().mean(), "mean": div.detach().mean(), "target": tgt.mean(), "weight": w}
        value = w * (err**2).mean() if active else err.new_zeros(())
        return value, logs

    def __repr__(self) -> str:
        return (f"DivergenceRegularizer(target={self.target_description!r}, {self.schedule}, method={self.method!r}, "
                f"n_probes={self.n_probes}, field={self.field!r}, dt={self.dt})")
