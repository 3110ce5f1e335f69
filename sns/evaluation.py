"""Evaluation as a library: compare rollouts of any number of methods with a reference, streamed
(:func:`evaluate`; the ``sns-evaluate`` entry point, :mod:`sns.cli.evaluate`, is a thin Hydra
wrapper of it, config conf/evaluate.yaml).

    from sns.evaluation import evaluate
    report = evaluate("data/kolmogorov-cpu/test.zarr", {"sns": "r/sns.zarr", "surrogate": "r/sur.zarr"},
                      "outputs/report")          # report["rows"], ["table"], ["figures"], ["notes"]

Inputs: the reference is a data-set split store (:mod:`sns.data.io`, physical units) or a
rollout store; rollouts are :mod:`sns.rollout` stores.  Rollout states are in the normalised
units of their training data, ``x_norm = (x - norm_offset) / norm_scale``: a store whose attrs
carry ``norm_offset``/``norm_scale`` (``sns-rollout`` writes them) is converted back to physical
units; a store without them is taken to be in the reference's units.

Everything is streamed in time chunks of ``chunk`` steps, so a 10^5-step rollout is never
loaded whole; only the first ``corr_steps`` states (for C(tau) and C(r, tau)) and the snapshot frames are.

Metrics (one row per method; the reference's own row where meaningful), all in physical units:

* ``status``, ``steps`` (states written after the initial one), ``stop_step`` (blow-up or
  non-finite step, from the rollout attrs), ``calls_mean`` / ``calls_max`` (network calls per
  sample and step, from the store's ``calls``), ``steps_per_s`` (steps / recorded wall time);
* fields: ``spec_max_rel`` (max over shells 1..N/2-1 of |E - E_ref| / E_ref of the time-mean
  spectra), ``spec_log_l2`` (:func:`sns.metrics.spectrum_distance` over the same shells: the
  corner shells beyond N/2 hold almost no energy in truncated data), ``corr_err`` (max over
  tau <= ``max_lag`` of |C(tau) - C_ref(tau)|, paper's C(tau)), ``corr_r_err`` (max over
  tau <= ``max_lag`` and |r| <= N/2 of the error of the isotropic space-time correlation
  C(|r|, tau), :class:`sns.metrics.RunningSpaceTimeCorrelation`, layers averaged), ``enstrophy_ratio`` (time-mean
  ``<w^2>/2`` over the reference's), and ``t_corr_<c>``: steps until the Pearson correlation
  with the reference trajectory from the same initial condition falls below ``c`` (only when the
  rollout records its source: attrs ``split`` = the reference split's name and ``start_frame``);
  the spectra and ``C(|r|, tau)`` need a square grid of even size: on other grids (data imported
  with ``sns-import``, system ``generic``) they are left out and the report says so (``notes``);
  for ``generic`` fields the spectra read each channel as a vorticity, which leaves the per-shell
  relative errors those of the field's own power spectrum;
* vector states: ``w1_mean`` / ``w1_max`` (per-coordinate Wasserstein-1 of the invariant measures,
  mean / max over coordinates), ``std_ratio`` (mean over coordinates), ``incr_w1`` (W1 of the
  one-frame increments pooled over coordinates: the short-time dynamics, which a deterministic
  surrogate of an uncertain system gets too smooth), ``incr_rms_ratio`` (their RMS over the
  reference's), ``acf_err`` (max |autocorrelation error| over lags <= ``max_lag``, the
  autocorrelation of the first ``acf_steps`` states after ``burn``).

Ensembles (rollouts whose attrs record ``ensemble = M >= 2`` members per initial condition, as
``sns-rollout ensemble=M`` writes them, and their source ``split`` / ``start_frame``): per lead
time, against the reference trajectories from the same initial frames and averaged over initial
conditions and state elements, the RMSE of the ensemble mean, the spread (unbiased ensemble
variance), the spread-skill ratio ``sqrt((M + 1) / M) spread / RMSE`` and the CRPS (fair
estimator; the empirical one as ``crps_biased``), conventions in :mod:`sns.metrics.ensemble`;
written to ``ensemble.csv`` / ``ensemble.json`` and ``ensemble.png``.  The table gets
``members``, ``ens_rmse``, ``ens_spread``, ``ens_crps`` (means over lead times 1..n, lead 0
being the shared initial state) and ``ens_spread_skill`` (from the lead-mean variance and
squared error).  The other metrics pool all members as samples.

Retired trajectories (``sns-rollout on_failure=retire``: a trajectory or ensemble member that blew
up is NaN from its step ``rollout_retired[b]`` on while the others ran to the end): every
statistic reads the surviving trajectories only, the table gets ``retired`` (how many) and the
report a note naming them and their steps; ensemble scores use the initial conditions whose
members all survived, and ``calls_mean`` the steps each trajectory was alive.  Survivors of a
method that loses trajectories look better than the method is: read ``retired`` with them.

Statistics of the invariant measure (spectra, enstrophy, W1) use the states after ``burn``
steps.  Figures (PNG): snapshots side by side (fields), time-mean spectra, spectra at chosen
steps, C(tau), C(|r|, tau) at three lags, R(t), Pearson correlation vs time, enstrophy vs time; vector systems:
marginal histograms, the histogram of one-frame increments, autocorrelation, R(t).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["REFERENCE", "Source", "evaluate", "spectral_grid"]

log = logging.getLogger(__name__)

REFERENCE = "reference"
GENERIC = "generic"  # sns.data.schema.GENERIC: imported data (any grid, fields of unknown meaning)


class Source:
    """A store seen as physical-unit arrays ``(B, T, *state)`` read lazily in time chunks."""

    def __init__(self, path: str | Path, reference_units: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        import xarray as xr

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"store {self.path} does not exist")
        try:
            ds = xr.open_zarr(str(self.path), consolidated=False)
        except Exception as err:  # noqa: BLE001 - zarr / xarray raise many types for a foreign store
            raise ValueError(f"{self.path} is not a data-set split or rollout store ({type(err).__name__}: "
                             f"{err})") from None
        self.attrs = dict(ds.attrs)
        self.is_rollout = "rollout_status" in self.attrs
        if self.is_rollout:
            from sns.rollout import open_rollout

            ds = open_rollout(self.path)
            var = ds.attrs.get("rollout_config", {}).get("variable", "state")
        else:
            names = [v for v in ds.data_vars]
            if len(names) != 1:
                raise ValueError(f"{self.path}: expected one data variable, found {names}")
            var = names[0]
        arr = ds[var]
        if arr.ndim < 3 or 0 in arr.shape[:2]:
            raise ValueError(f"{self.path}: variable {var!r} of shape {tuple(arr.shape)} holds no states (expected "
                             "(trajectory, time, ...) with at least one of each)")
        if arr.ndim == 4 and not self.is_rollout:  # (traj, time, y, x) -> add the channel axis
            arr = arr.expand_dims("channel", axis=2)
        self.array = arr
        self.ds = ds
        self.field = arr.ndim == 5
        C = arr.shape[2]
        if "norm_offset" in self.attrs and self.is_rollout:
            off = np.asarray(self.attrs["norm_offset"], dtype=np.float64)
            sc = np.asarray(self.attrs["norm_scale"], dtype=np.float64)
        else:
            off, sc = np.zeros(C), np.ones(C)
        if off.size not in (1, C) or sc.size not in (1, C):
            raise ValueError(f"{self.path}: norm_offset / norm_scale have {off.size} / {sc.size} entries, expected "
                             f"1 or {C} (one per channel or coordinate)")
        off, sc = np.broadcast_to(off.reshape(-1), (C,)), np.broadcast_to(sc.reshape(-1), (C,))  # one for all
        shape = (1, 1, C, 1, 1) if self.field else (1, 1, C)
        self.offset, self.scale = off.reshape(shape), sc.reshape(shape)
        # trajectories retired by rollout(..., on_failure="retire"): NaN from their step on; the
        # statistics read the survivors (``rows``), the report says who retired and when
        self.retired = {int(k): int(v) for k, v in (self.attrs.get("rollout_retired") or {}).items()} \
            if self.is_rollout else {}
        B = int(arr.shape[0])
        if self.retired and len(self.retired) >= B:
            raise ValueError(f"{self.path}: every trajectory was retired ({self.retired}); nothing to evaluate")
        self.rows = np.array([b for b in range(B) if b not in self.retired]) if self.retired else None
        self.dt = None
        if self.is_rollout and ds["time"].attrs.get("dt") is not None:  # physical time (open_rollout)
            self.dt = float(ds["time"].attrs["dt"])
        elif "dt" in self.attrs:
            self.dt = float(self.attrs["dt"]) * int(self.attrs.get("save_every", 1))

    @property
    def n_time(self) -> int:
        return int(self.array.shape[1])

    @property
    def n_traj(self) -> int:
        """Trajectories the statistics read (the survivors of a rollout with retired ones)."""
        return int(self.array.shape[0]) if self.rows is None else len(self.rows)

    def read(self, start: int, stop: int, traj: slice | np.ndarray | None = None) -> np.ndarray:
        """States ``[traj, start:stop]`` in physical units; ``traj=None``: every surviving row."""
        if traj is None:
            traj = slice(None) if self.rows is None else self.rows
        x = np.asarray(self.array[traj, start:stop].values, dtype=np.float64)
        return x * self.scale + self.offset

    def chunks(self, start: int = 0, chunk: int = 500) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(start, self.n_time, chunk):
            yield a, self.read(a, min(a + chunk, self.n_time))


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(*x.shape[:2], -1)


def spectral_grid(shape: Sequence[int]) -> bool:
    """Whether fields of trailing shape ``(..., H, W)`` have the square, even grid that the
    isotropic spectra and ``C(|r|, tau)`` need (imported data may have any grid)."""
    h, w = int(shape[-2]), int(shape[-1])
    return h == w and h >= 2 and h % 2 == 0


def _field_stats(src: Source, burn: int, chunk: int, corr_steps: int, max_lag: int,
                 spectrum_steps: Sequence[int], spectral: bool = True) -> dict[str, Any]:
    from sns.metrics import (
        RunningSpectrum,
        energy_spectrum,
        radial_correlation,
        rate_of_change,
        space_time_correlation,
        spatiotemporal_correlation,
    )

    C = src.array.shape[2]
    spec = RunningSpectrum(frame_ndim=2 if C == 1 else 3) if spectral else None
    ens, rate, prev = [], [], None
    start = burn if src.n_time > burn + 1 else 0
    for a, x in src.chunks(0, chunk):
        ens.append((0.5 * x**2).mean(axis=(0, 2, 3, 4)))  # mean over trajectories: (t,)
        frames = x if prev is None else np.concatenate([prev, x], axis=1)
        if src.dt and frames.shape[1] > 1:
            rate.append(rate_of_change(_flat(frames), src.dt, time_axis=1).mean(0))
        prev = x[:, -1:]
        lo = max(start - a, 0)
        if spec is not None and lo < x.shape[1]:
            spec.update(x[:, lo:, 0] if C == 1 else x[:, lo:])
    head = src.read(0, min(corr_steps + 1, src.n_time))
    lag = min(max_lag, head.shape[1] - 1)
    corr = spatiotemporal_correlation(_flat(head), lag, time_axis=1) if lag >= 1 else np.ones(1)
    if spec is None:  # no isotropic spectra / C(|r|, tau) on this grid
        return {"k": None, "spectrum": None, "enstrophy": np.concatenate(ens),
                "rate": np.concatenate(rate) if rate else np.zeros(0), "corr": corr, "spectra_at": {},
                "r": None, "corr_r": None}
    k, stats = spec.result()
    # C(|r|, tau), averaged over layers: (lag + 1, N/2 + 1)
    r, prof = radial_correlation(space_time_correlation(head[:, :, 0] if C == 1 else head, max(lag, 0)))
    prof = prof if C == 1 else prof.mean(axis=1)
    at = {}
    for t in spectrum_steps:
        if t < src.n_time:
            frame = src.read(t, t + 1)[:, 0]
            at[t] = energy_spectrum(frame[:, 0] if C == 1 else frame)[1].mean(0)
    return {"k": k, "spectrum": stats["mean"], "enstrophy": np.concatenate(ens),
            "rate": np.concatenate(rate) if rate else np.zeros(0), "corr": corr, "spectra_at": at,
            "r": r, "corr_r": prof}


def _vector_stats(src: Source, burn: int, chunk: int, max_lag: int, max_samples: int,
                  acf_steps: int) -> dict[str, Any]:
    from sns.metrics import autocorrelation, rate_of_change

    start = burn if src.n_time > burn + 1 else 0
    B = src.n_traj
    stride = max(1, (B * (src.n_time - start)) // max_samples)
    samples, incs, rate, prev = [], [], [], None
    for a, x in src.chunks(0, chunk):
        frames = x if prev is None else np.concatenate([prev, x], axis=1)
        if src.dt and frames.shape[1] > 1:
            rate.append(rate_of_change(frames, src.dt, time_axis=1).mean(0))
        idx = np.arange(x.shape[1]) + a
        sel = (idx >= start) & ((idx - start) % stride == 0)
        samples.append(x[:, sel].reshape(-1, x.shape[-1]))
        if frames.shape[1] > 1:  # one-frame increments ending at the selected steps
            d = np.diff(frames, axis=1)
            ends = idx[-d.shape[1]:]
            keep = (ends > start) & ((ends - start) % stride == 0)
            incs.append(d[:, keep].reshape(-1))
        prev = x[:, -1:]
    n_acf = min(acf_steps, src.n_time - start)
    head = src.read(start, start + n_acf) if n_acf > 1 else src.read(0, min(2, src.n_time))
    lag = min(max_lag, head.shape[1] - 1)
    acf = autocorrelation(head, lag, time_axis=1) if lag >= 1 else np.ones((1, head.shape[-1]))
    return {"samples": np.concatenate(samples), "rate": np.concatenate(rate) if rate else np.zeros(0),
            "increments": np.concatenate(incs) if incs else np.zeros(0), "acf": acf, "stride": stride}


def _members(src: Source) -> int:
    """Ensemble members per initial condition of a rollout store (attr ``ensemble``; 1 if absent):
    rows ``k * M .. k * M + M - 1`` of its trajectory axis start from initial condition ``k``."""
    m = int(src.attrs.get("ensemble", 1) or 1) if src.is_rollout else 1
    if m < 1 or src.array.shape[0] % m:
        raise ValueError(f"{src.path}: attr ensemble={m} does not divide its {src.array.shape[0]} trajectories")
    return m


def _source(src: Source, ref: Source) -> tuple[int, int, int] | None:
    """``(start_frame, initial conditions, members)`` when the rollout records that it starts
    from frame ``start_frame`` of the first trajectories of the reference's split (attrs ``split``,
    ``start_frame``), else None."""
    a = src.attrs
    if not src.is_rollout or "start_frame" not in a or a.get("split") != ref.path.stem.split(".")[0]:
        return None
    m = _members(src)
    s0, n_ic = int(a["start_frame"]), src.array.shape[0] // m
    if n_ic > ref.array.shape[0] or s0 >= ref.n_time:
        return None
    return s0, n_ic, m


def _pearson(src: Source, ref: Source, chunk: int) -> np.ndarray | None:
    """Pearson correlation per step against the reference trajectory from the same initial
    condition (mean over trajectories and ensemble members), or None if the rollout does not
    record its source."""
    from sns.metrics import pearson_series

    match = _source(src, ref)
    if match is None:
        return None
    s0, n_ic, m = match
    rows = np.arange(n_ic * m) if src.rows is None else src.rows
    n = min(src.n_time, ref.n_time - s0)
    out = []
    for t in range(0, n, chunk):
        u = min(t + chunk, n)
        r = ref.read(s0 + t, s0 + u, slice(0, n_ic))[rows // m]  # row k * m + j: trajectory k
        out.append(pearson_series(_flat(src.read(t, u)), _flat(r), 1).mean(0))
    return np.concatenate(out)


ENSEMBLE_SCORES = ("rmse", "spread", "spread_skill", "crps", "crps_biased")


def _ensemble(src: Source, ref: Source, chunk: int, max_leads: int | None) -> dict[str, Any] | None:
    """Ensemble scores per lead time (:func:`sns.metrics.ensemble_scores`, physical units) of a
    rollout with ``ensemble >= 2`` members per initial condition against the reference
    trajectories from the same initial frames, averaged over initial conditions and state
    elements (coordinates or grid points and channels); None for other stores.

    Returns ``{"members", "lead" (steps), "rmse", "spread", "spread_skill", "crps",
    "crps_biased", "mse", "var"}`` (arrays over lead times ``0 .. n - 1``)."""
    from sns.metrics import ensemble_scores

    match = _source(src, ref)
    if match is None or match[2] < 2:
        return None
    s0, n_ic, m = match
    # initial conditions all of whose members survived (a retired member would bias the spread)
    whole = [k for k in range(n_ic) if not any(k * m + j in src.retired for j in range(m))]
    if not whole:
        return None
    rows = np.array([k * m + j for k in whole for j in range(m)])
    n = min(src.n_time, ref.n_time - s0)
    if max_leads is not None:
        n = min(n, int(max_leads) + 1)
    parts: dict[str, list[np.ndarray]] = {}
    step = max(1, chunk // m)  # time chunks of about chunk x (initial conditions) states, as elsewhere
    for t in range(0, n, step):
        u = min(t + step, n)
        x = src.read(t, u, rows)
        x = x.reshape(len(whole), m, *x.shape[1:])  # (initial condition, member, time, *state)
        y = ref.read(s0 + t, s0 + u, slice(0, n_ic))[whole]
        sc = ensemble_scores(x, y, member_axis=1, axis=(0, *range(2, y.ndim)))
        for k, v in sc.items():
            parts.setdefault(k, []).append(v)
    out: dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items()}
    out.update(members=m, initial_conditions=len(whole), lead=np.arange(n))
    return out


def _ensemble_summary(ens: dict[str, Any]) -> dict[str, Any]:
    """Table entries of :func:`_ensemble`: means over lead times ``1 .. n - 1`` (lead 0 is the
    shared initial state); the spread-skill ratio from the lead-mean variance and squared error."""
    from sns.metrics import spread_skill_from_moments

    sel = slice(1, None) if len(ens["lead"]) > 1 else slice(None)
    return {"members": ens["members"], "ens_rmse": float(np.mean(ens["rmse"][sel])),
            "ens_spread": float(np.mean(ens["spread"][sel])),
            "ens_spread_skill": float(spread_skill_from_moments(np.mean(ens["var"][sel]), np.mean(ens["mse"][sel]),
                                                                ens["members"])),
            "ens_crps": float(np.mean(ens["crps"][sel]))}


def _write_ensemble(curves: Mapping[str, dict[str, Any]], out: Path, dt: float) -> list[Path]:
    """``ensemble.csv`` (one row per method and lead time), ``ensemble.json`` and ``ensemble.png``."""
    from sns.plots import plot_ensemble

    keys = ("lead", "time", *ENSEMBLE_SCORES)
    with open(out / "ensemble.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("method", "members", *keys))
        for name, e in curves.items():
            for i, lead in enumerate(e["lead"]):
                w.writerow((name, e["members"], int(lead), float(lead * dt), *(float(e[k][i]) for k in ENSEMBLE_SCORES)))
    (out / "ensemble.json").write_text(json.dumps(
        {name: {"members": int(e["members"]), "initial_conditions": int(e["initial_conditions"]), "dt": dt,
                **{k: np.asarray(e[k]).tolist() for k in ("lead", *ENSEMBLE_SCORES)}}
         for name, e in curves.items()}, indent=1, default=float))
    path = out / "ensemble.png"
    plot_ensemble({name: e["lead"] * dt for name, e in curves.items()},
                  {name: {k: e[k] for k in ENSEMBLE_SCORES} for name, e in curves.items()}, path=path)
    return [path]


def _rollout_info(src: Source) -> dict[str, Any]:
    a = src.attrs
    info: dict[str, Any] = {"status": a.get("rollout_status", "-"), "steps": src.n_time - 1,
                            "stop_step": a.get("rollout_stop_step")}
    if src.retired:
        info["retired"] = len(src.retired)
    if "calls" in src.ds and src.n_time > 1:
        calls = np.asarray(src.ds["calls"][:, 1:].values)
        live = np.ones(calls.shape, dtype=bool)  # a retired trajectory's zeros are not calls
        for b, k in src.retired.items():
            live[b, k - 1:] = False
        calls = calls[(calls >= 0) & live]
        if calls.size:
            info["calls_mean"], info["calls_max"] = float(calls.mean()), int(calls.max())
    wall = (a.get("rollout_checkpoint") or {}).get("wall_time_s")
    if wall:
        info["steps_per_s"] = (src.n_time - 1) / float(wall)
    return info


def evaluate(
    reference: str | Path,
    rollouts: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    chunk: int = 500,
    burn: int = 0,
    max_lag: int = 20,
    corr_steps: int = 200,
    snapshot_steps: Sequence[int] | None = None,
    spectrum_steps: Sequence[int] | None = None,
    thresholds: Sequence[float] = (0.8, 0.9, 0.95),
    max_samples: int = 200_000,
    acf_steps: int = 5000,
    ensemble_leads: int | None = None,
) -> dict[str, Any]:
    """Write the report of ``rollouts`` (``{method: store}``) against ``reference`` to ``out_dir``.

    Returns ``{"rows": [{metric: value}], "figures": [paths], "table": markdown}`` (module
    docstring for the metrics).  ``snapshot_steps`` / ``spectrum_steps``: steps shown in the
    snapshot figure and in the spectra-at-times figure (default: 5 / 3 steps spread over the
    longest rollout).  ``ensemble_leads``: lead times (steps) of the ensemble scores (default:
    all the rollout and the reference share).
    """
    from sns.metrics import spectrum_distance, wasserstein1_per_coordinate
    from sns.plots import plot_corr_r_tau, plot_lines, plot_marginals, plot_snapshots, plot_spectra

    if not rollouts:
        raise ValueError("no rollouts to evaluate: give at least one {method: store}")
    for name, v in (("chunk", chunk), ("max_lag", max_lag), ("corr_steps", corr_steps), ("acf_steps", acf_steps),
                    ("max_samples", max_samples)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(burn, int) or isinstance(burn, bool) or burn < 0:
        raise ValueError(f"burn must be a non-negative integer, got {burn!r}")
    if ensemble_leads is not None and (not isinstance(ensemble_leads, int) or ensemble_leads < 1):
        raise ValueError(f"ensemble_leads must be a positive integer or null, got {ensemble_leads!r}")
    out = Path(out_dir)
    ref = Source(reference)
    srcs = {name: Source(p) for name, p in rollouts.items()}
    for name, s in srcs.items():
        if s.array.shape[2:] != ref.array.shape[2:]:
            raise ValueError(f"rollout {name!r} has states of shape {tuple(s.array.shape[2:])} but the reference "
                             f"{tuple(ref.array.shape[2:])}")
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good: a refused call writes nothing
    longest = max(s.n_time for s in srcs.values())
    span = max(longest, ref.n_time)  # x axis of the time-series figures
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    dt = ref.dt or next((s.dt for s in srcs.values() if s.dt), None) or 1.0
    notes: list[str] = []  # what the report leaves out or reads differently, and why
    generic = any(s.attrs.get("system") == GENERIC for s in (ref, *srcs.values()))
    if ref.field:
        snap = list(snapshot_steps) if snapshot_steps is not None else sorted(
            {int(v) for v in np.linspace(0, longest - 1, 5)})
        spec_t = list(spectrum_steps) if spectrum_steps is not None else sorted(
            {int(v) for v in np.linspace(0, longest - 1, 3)})
        spectral = spectral_grid(ref.array.shape)
        if not spectral:
            notes.append(f"grid {ref.array.shape[-2]} x {ref.array.shape[-1]} (y x x) is not square with an even "
                         "size: the isotropic spectra (spec_max_rel, spec_log_l2, spectra figures) and C(|r|, tau) "
                         "(corr_r_err, corr_r_tau.png) are not computed")
        elif generic:
            notes.append("system generic: the spectra read each channel as a vorticity (E(k) of the velocity whose "
                         "vorticity it is); their per-shell relative errors (spec_max_rel, spec_log_l2) equal those "
                         "of the field's own power spectrum")
        if generic:
            notes.append("system generic: enstrophy_ratio is the ratio of the time-mean <x^2>/2 (mean square of "
                         "the field), whatever the field is")
        stats = {REFERENCE: _field_stats(ref, 0, chunk, corr_steps, max_lag, spec_t, spectral)}
        for name, s in srcs.items():
            stats[name] = _field_stats(s, burn, chunk, corr_steps, max_lag, spec_t, spectral)
        rs = stats[REFERENCE]
        N = ref.array.shape[-1]
        shells = slice(1, N // 2)
        pear = {name: _pearson(s, ref, chunk) for name, s in srcs.items()}
        for name in [REFERENCE, *srcs]:
            st = stats[name]
            row: dict[str, Any] = {"method": name}
            row.update(_rollout_info(srcs[name]) if name != REFERENCE else
                       {"status": "-", "steps": ref.n_time - 1})
            if spectral:
                rel, log_l2 = spectrum_distance(st["spectrum"][..., shells], rs["spectrum"][..., shells])
                row["spec_max_rel"] = float(np.nanmax(rel))
                row["spec_log_l2"] = float(np.mean(log_l2))
            lag = min(len(st["corr"]), len(rs["corr"]))
            row["corr_err"] = float(np.max(np.abs(st["corr"][:lag] - rs["corr"][:lag])))
            if spectral:
                lag = min(len(st["corr_r"]), len(rs["corr_r"]))
                row["corr_r_err"] = float(np.max(np.abs(st["corr_r"][:lag] - rs["corr_r"][:lag])))
            b = burn if name != REFERENCE and len(st["enstrophy"]) > burn + 1 else 0
            row["enstrophy_ratio"] = float(st["enstrophy"][b:].mean() / rs["enstrophy"].mean())
            if name != REFERENCE:
                from sns.metrics import correlation_time

                p = pear[name]
                for c in thresholds:
                    row[f"t_corr_{c:g}"] = (None if p is None else correlation_time(p, [c])[c])
            rows.append(row)
        # figures
        frames = {}
        for name, s in [(REFERENCE, ref), *srcs.items()]:
            panel = np.full((len(snap), *ref.array.shape[-2:]), np.nan)
            for i, t in enumerate(snap):
                if t < s.n_time:
                    panel[i] = s.read(t, t + 1)[0, 0, 0]  # the first surviving trajectory
            frames[name] = panel
        figures.append(out / "snapshots.png")
        plot_snapshots(frames, snap, title="channel 0 (trajectory 0)", path=figures[-1])
        if spectral:
            figures.append(out / "spectra_time_mean.png")
            kk = rs["k"][: N // 2]
            plot_spectra(kk, {n: (st["spectrum"] if st["spectrum"].ndim == 1 else st["spectrum"].sum(0))[: N // 2]
                              for n, st in stats.items()}, path=figures[-1])
            for t in spec_t:
                sp = {n: st["spectra_at"][t] for n, st in stats.items() if t in st["spectra_at"]}
                sp = {n: (e if e.ndim == 1 else e.sum(0))[: N // 2] for n, e in sp.items()}
                figures.append(out / f"spectra_step_{t}.png")
                plot_spectra(kk, sp, title=f"energy spectrum at step {t}", path=figures[-1])
        figures.append(out / "corr_tau.png")
        plot_lines(np.arange(max_lag + 1) * dt, {n: st["corr"] for n, st in stats.items()}, "lag tau (time units)",
                   "C(tau)", "spatio-temporal correlation C(tau)", path=figures[-1])
        if spectral:
            figures.append(out / "corr_r_tau.png")
            n_lag = min(len(st["corr_r"]) for st in stats.values())
            plot_corr_r_tau(rs["r"], {n: st["corr_r"] for n, st in stats.items()},
                            sorted({0, (n_lag - 1) // 2, n_lag - 1}), dt, path=figures[-1])
        figures.append(out / "rate_of_change.png")
        plot_lines(np.arange(1, span + 1) * dt, {n: st["rate"] for n, st in stats.items() if len(st["rate"])},
                   "time", "R(t) = mean |dx/dt|", "rate of change R(t)", path=figures[-1])
        figures.append(out / "enstrophy.png")
        plot_lines(np.arange(span) * dt, {n: st["enstrophy"] for n, st in stats.items()}, "time",
                   "<w^2>/2", "enstrophy vs time", path=figures[-1])
        if any(p is not None for p in pear.values()):
            figures.append(out / "correlation_vs_time.png")
            plot_lines(np.arange(span) * dt, {n: p for n, p in pear.items() if p is not None}, "time",
                       "Pearson correlation", "correlation with the reference trajectory", hlines=thresholds,
                       path=figures[-1])
    else:
        stats = {REFERENCE: _vector_stats(ref, 0, chunk, max_lag, max_samples, acf_steps)}
        for name, s in srcs.items():
            stats[name] = _vector_stats(s, burn, chunk, max_lag, max_samples, acf_steps)
        rs = stats[REFERENCE]
        for name in [REFERENCE, *srcs]:
            st = stats[name]
            row = {"method": name}
            row.update(_rollout_info(srcs[name]) if name != REFERENCE else {"status": "-", "steps": ref.n_time - 1})
            if name != REFERENCE and len(st["samples"]):
                w1 = np.asarray(wasserstein1_per_coordinate(st["samples"], rs["samples"]))
                row["w1_mean"], row["w1_max"] = float(np.mean(w1)), float(np.max(w1))
                if len(st["increments"]) and len(rs["increments"]):
                    from scipy.stats import wasserstein_distance

                    row["incr_w1"] = float(wasserstein_distance(st["increments"], rs["increments"]))
                    row["incr_rms_ratio"] = float(np.sqrt(np.mean(st["increments"] ** 2)
                                                          / np.mean(rs["increments"] ** 2)))
                row["std_ratio"] = float(np.mean(st["samples"].std(0) / rs["samples"].std(0)))
                lag = min(len(st["acf"]), len(rs["acf"]))
                row["acf_err"] = float(np.nanmax(np.abs(st["acf"][:lag] - rs["acf"][:lag])))
            rows.append(row)
        figures.append(out / "marginals.png")
        plot_marginals({n: st["samples"] for n, st in stats.items()}, path=figures[-1])
        if any(len(st["increments"]) for st in stats.values()):
            figures.append(out / "increments.png")
            plot_marginals({n: st["increments"][:, None] for n, st in stats.items() if len(st["increments"])},
                           title="one-frame increments (pooled over coordinates)", path=figures[-1],
                           xlabel="x(t + 1) - x(t)")
        figures.append(out / "autocorrelation.png")
        plot_lines(np.arange(max_lag + 1) * dt, {n: st["acf"].mean(-1) for n, st in stats.items()},
                   "lag (time units)", "autocorrelation (mean over coordinates)", "autocorrelation",
                   path=figures[-1])
        figures.append(out / "rate_of_change.png")
        # per-step R(t) of a chaotic vector system is noise around its level: block means over
        # ~1/200 of the span show whether (and when) that level drifts
        block = max(1, span // 200)
        blocked = {n: st["rate"][:len(st["rate"]) // block * block].reshape(-1, block).mean(1)
                   for n, st in stats.items() if len(st["rate"]) >= block}
        plot_lines((np.arange(span // block + 1) + 0.5) * block * dt, blocked, "time",
                   "R(t) = mean |dx/dt|" + (f", mean over blocks of {block} steps" if block > 1 else ""),
                   "rate of change R(t)", path=figures[-1])
    for name, s in srcs.items():
        if s.retired:
            notes.append(f"{name}: {len(s.retired)} of {s.array.shape[0]} trajectories retired (trajectory: step "
                         f"{dict(sorted(s.retired.items()))}); its statistics are those of the survivors"
                         + ("; its ensemble scores use the initial conditions whose members all survived"
                            if _members(s) > 1 else ""))
    curves = {name: e for name, s in srcs.items() if (e := _ensemble(s, ref, chunk, ensemble_leads)) is not None}
    for row in rows:
        if row["method"] in curves:
            row.update(_ensemble_summary(curves[row["method"]]))
    if curves:
        figures += _write_ensemble(curves, out, dt)
    for note in notes:
        log.warning("sns-evaluate: %s", note)
    table = _markdown(rows)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (out / "metrics.json").write_text(json.dumps(rows, indent=1, default=float))
    text = "".join(f"Note: {n}.\n" for n in notes)
    (out / "metrics.md").write_text(f"Reference: {ref.path}\n\n{table}\n" + (f"\n{text}" if text else ""))
    print(table)
    for note in notes:
        print(f"Note: {note}.")
    return {"rows": rows, "figures": figures, "table": table, "out_dir": out, "ensemble": curves, "notes": notes}


def _markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
