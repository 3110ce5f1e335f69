"""Synthetic traces from a user's own series (seed 000 end to end; the library behind ``sns-traces``).

*I have a few real traces, maybe one scalar sensor series: give me many synthetic traces that
keep the dynamics, and tell me how faithful they are.*  :func:`make_traces` does the seed's steps:

1. **Input** (:func:`load_series`): a CSV file (columns by name), an xarray-readable file
   (netCDF, zarr) with one variable of dims ``(time,)``, ``(time, coordinate)`` or
   ``(trajectory, time, coordinate)``, or an sns data set directory (its train split).  Every
   value must be numeric and finite, no column constant, at least ``min_samples`` per trajectory:
   anything else is a ``ValueError`` naming the column or value.
2. **Noise reduction** (optional, ``denoise="bayes"`` or ``"universal"``): wavelet shrinkage of
   every column (:func:`sns.generators.wavelet_denoise`).
3. **State**: several columns are the full state.  One column is a partial observation and is
   delay-embedded (:func:`sns.metrics.chaos.embed`): delay at the first minimum of the mutual
   information, dimension by false nearest neighbours (or given).  The correlation dimension D2
   of the states is measured and the seed's rule ``d_E >= 2 D2 + 1`` reported (``rule_ok``);
   ``dim="rule"`` uses ``max(FNN, ceil(2 D2 + 1))``.  An embedding that spans more than a
   quarter of the series is refused.
4. **Generator** (``generator``): ``"node"`` (Neural ODE, optionally with the divergence
   regularizer towards the data's own local volume expansion rate), ``"gan"``
   (:class:`sns.generators.WindowGAN`; its divergence discriminator is ``gan={"divergence_features": True}``,
   off by default: ~8x the cost per step, and it collapsed in its one untuned try), ``"hmc"``
   (:class:`sns.generators.HMCGenerator`: states ``(q, p)``, positions first), or ``"auto"``: the
   seed's decision framework, in its order -- conservative (``conservative=True``): HMC; a partial
   observation (embedded scalar): GAN; full state: Neural ODE.  The reason is recorded.
5. **Training** for ``steps`` optimizer steps on the first ``1 - holdout`` of every trajectory
   (the rest is held out for the forecast score), in standardised units.
6. **Traces**: ``n_traces`` of ``length`` frames from initial states drawn from the training
   data, written as a self-describing zarr store (``traces``: ``(trace, time, coordinate)`` in
   the data's units, coordinate names, ``time`` in the data's time unit, attrs: source, columns,
   embedding, generator and reason, the configuration), atomically.
7. **Validation** (:func:`validate`): synthetic against real, in the data's units -- W1 of the
   marginals (over the real std), D2, the largest Lyapunov exponent (Rosenstein, on the first
   coordinate), the PSD distance (mean |log10| ratio of Welch spectra, first coordinate), the
   divergence error (the local volume expansion rate estimated the same way on real and
   synthetic windows, :func:`sns.generators.window_divergence`: |median difference| and the W1 of
   the two distributions), and a downstream forecast score: a k-nearest-neighbour one-step
   forecaster trained on synthetic traces and tested on the held-out real data, over the same
   forecaster trained on the real training data (train-synthetic-test-real / train-real-test-real
   RMSE: 1 is as good as real data).  Figures: marginals, PSD, example traces.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["GENERATORS", "Series", "choose_generator", "load_series", "make_traces", "validate"]

GENERATORS = ("auto", "node", "gan", "hmc")
SCHEMA = "sns-traces/1"


@dataclass
class Series:
    """Real data as ``values`` ``(N, T, D)`` (N trajectories), frame interval ``dt``, column names."""

    values: np.ndarray
    dt: float
    columns: list[str]
    source: str
    time_unit: str = "1"
    meta: dict[str, Any] = field(default_factory=dict)


def _check_values(values: np.ndarray, columns: Sequence[str], min_samples: int) -> None:
    N, T, _ = values.shape
    for j, name in enumerate(columns):
        col = values[:, :, j]
        bad = ~np.isfinite(col)
        if bad.any():
            n, t = (int(v[0]) for v in np.nonzero(bad))
            where = f"row {t}" if N == 1 else f"trajectory {n}, time index {t}"
            raise ValueError(f"column {name!r} has a non-finite value ({col[n, t]}) at {where}; remove or fill it first")
        if float(col.max() - col.min()) <= 1e-12 * max(1.0, float(np.abs(col).max())):
            raise ValueError(f"column {name!r} is constant ({float(col.flat[0]):g}): there are no dynamics to learn")
    if T < min_samples:
        raise ValueError(f"the series has {T} samples per trajectory; sns-traces needs at least {min_samples} "
                         "(the delay, D2 and the held-out forecast need a few hundred)")


def load_series(path: str | os.PathLike[str], columns: Sequence[str] | None = None, variable: str | None = None,
                dt: float | None = None, time_column: str | None = None, min_samples: int = 500) -> Series:
    """Read a user's series (module docstring, step 1).

    Args:
        path: a ``.csv`` file, a netCDF / zarr file, or an sns data set directory.
        columns: CSV columns (default: every column but ``time_column``).
        variable: the variable of a netCDF / zarr file or data set (default: its only one).
        dt: the sampling interval; default from ``time_column`` (CSV: uniform spacing required), the
            file's ``time`` coordinate, or the data set's ``dt * save_every``.
        time_column: CSV column holding the time stamps.
        min_samples: the fewest samples per trajectory accepted.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    times = None
    unit = "1"
    meta: dict[str, Any] = {}
    if p.is_file() and p.suffix.lower() in (".csv", ".txt"):
        import pandas as pd

        try:
            df = pd.read_csv(p)
        except Exception as err:  # noqa: BLE001 - pandas raises several types for a bad file
            raise ValueError(f"cannot read {p} as CSV: {err}") from None
        if time_column is not None and time_column not in df.columns:
            raise ValueError(f"time column {time_column!r} is not in {p} (columns: {list(df.columns)})")
        names = list(columns) if columns else [c for c in df.columns if c != time_column]
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise ValueError(f"column(s) {missing} not in {p} (columns: {list(df.columns)})")
        if not names:
            raise ValueError(f"{p} has no data column")
        for c in names + ([time_column] if time_column else []):
            num = pd.to_numeric(df[c], errors="coerce")
            bad = num.isna() & df[c].notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(f"column {c!r} is not numeric: value {df[c].iloc[row]!r} at row {row}")
        values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)[None]
        if time_column:
            times = pd.to_numeric(df[time_column]).to_numpy(np.float64)
    else:
        import xarray as xr

        if p.is_dir() and (p / "train.zarr").exists():  # an sns data set: its train split
            from sns.data.io import open_dataset

            ds = open_dataset(p, "train")
            if dt is None and "dt" in ds.attrs:
                dt = float(ds.attrs["dt"]) * int(ds.attrs.get("save_every", 1))
            meta["split"] = "train"
        else:
            try:
                ds = xr.open_zarr(p, consolidated=None) if p.is_dir() else xr.open_dataset(p)
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"cannot read {p} (CSV, netCDF, zarr or an sns data set): {err}") from None
        names_v = list(ds.data_vars)
        var = variable if variable is not None else (names_v[0] if len(names_v) == 1 else None)
        if var is None or var not in ds:
            raise ValueError(f"choose the variable of {p} (variable=...), one of {names_v}")
        arr = ds[var]
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"variable {var!r} of {p} is not numeric (dtype {arr.dtype})")
        x = np.asarray(arr.values, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :, None]
        elif x.ndim == 2:
            x = x[None]
        elif x.ndim != 3:
            raise ValueError(f"variable {var!r} has dims {arr.dims}; expected (time,), (time, coordinate) or "
                             "(trajectory, time, coordinate) (fields: use sns-import and the SNS pipeline)")
        values = x
        tdim = arr.dims[0] if arr.ndim <= 2 else arr.dims[1]
        if tdim in arr.coords and dt is None and arr.sizes[tdim] > 1:
            times = np.asarray(arr[tdim].values, dtype=np.float64)
        cdim = arr.dims[-1] if arr.ndim >= 2 else None
        names = ([str(v) for v in arr[cdim].values] if cdim is not None and cdim in arr.coords
                 else [var] if arr.ndim == 1 else [f"{var}[{j}]" for j in range(values.shape[-1])])
        unit = str(ds.attrs.get("time_unit", "1"))
    if times is not None and dt is None:
        steps = np.diff(times)
        if len(steps) == 0 or not (steps > 0).all() or np.ptp(steps) > 1e-6 * abs(steps.mean()):
            raise ValueError("the time stamps are not uniformly spaced and increasing; resample the series or give dt")
        dt = float(steps.mean())
    if dt is None:
        raise ValueError("give the sampling interval dt (the input has no time stamps)")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    values = np.array(values, dtype=np.float64)  # a writable copy (denoising works in place)
    _check_values(values, names, min_samples)
    return Series(values=values, dt=float(dt), columns=[str(c) for c in names], source=str(p), time_unit=unit,
                  meta=meta)


def choose_generator(full_state: bool, conservative: bool, requested: str = "auto") -> tuple[str, str]:
    """``(generator, reason)``: the requested one, or the seed's decision framework for ``"auto"``."""
    if requested not in GENERATORS:
        raise ValueError(f"generator must be one of {list(GENERATORS)}, got {requested!r}")
    if requested == "hmc" and not full_state:
        raise ValueError("generator hmc needs the full state (positions and momenta), not a delay embedding")
    if requested != "auto":
        return requested, "chosen by the user"
    if conservative:
        if not full_state:
            raise ValueError("conservative=true needs the full state (q, p) for HMC; a scalar series has no "
                             "momenta: use generator=gan or node")
        return "hmc", "conservative system: HMC with a learned potential (volume-preserving by construction)"
    if not full_state:
        return "gan", "partial observation (delay-embedded scalar): GAN, which needs no explicit ODE fit"
    return "node", "full-state dissipative system: Neural ODE, the most direct path to divergence control"


def _embed(series: Series, delay: int | None, dim: int | str | None, max_lag: int) -> dict[str, Any]:
    """States ``(N, T', d)`` and the embedding record (module docstring, step 3)."""
    from sns.metrics.chaos import delay_embed, embed

    x = series.values
    N, T, D = x.shape
    if D > 1:
        d2, why = _d2(x.reshape(-1, D))
        return {"states": x, "full_state": True, "delay": None, "dim": D, "fnn_dim": None, "D2": d2,
                "rule_ok": bool(D >= 2 * d2 + 1), **({"D2_note": why} if why else {})}
    if isinstance(dim, str) and dim != "rule":
        raise ValueError(f"dim must be a positive integer, 'rule' or null, got {dim!r}")
    e = embed(x[0, :, 0], delay=delay, dim=None if dim in (None, "rule") else int(dim), max_lag=max_lag)
    span = (e.dim - 1) * e.delay
    d2, why = _d2(e.points)
    d = e.dim
    if dim == "rule":
        if not math.isfinite(d2):
            raise ValueError(f"dim=rule needs D2, which could not be measured ({why}); give dim")
        d = max(d, math.ceil(2 * d2 + 1))
        span = (d - 1) * e.delay
    if span >= T / 4:
        raise ValueError(f"the embedding (delay {e.delay}, dimension {d}) spans {span} samples, more than a quarter "
                         f"of the {T}-sample series: the series is too short for it (give a smaller delay or dim)")
    states = np.stack([delay_embed(x[n, :, 0], d, e.delay) for n in range(N)])
    return {"states": states, "full_state": False, "delay": int(e.delay), "dim": int(d), "fnn_dim": int(e.dim),
            "D2": d2, "rule_ok": bool(d >= 2 * d2 + 1), **({"D2_note": why} if why else {})}


def _d2(points: np.ndarray) -> tuple[float, str | None]:
    """D2 of ``points`` (Grassberger-Procaccia), or NaN and the reason when its scaling range is
    not reached (too few or duplicated points)."""
    from sns.metrics.chaos import correlation_dimension

    try:
        return float(correlation_dimension(points, max_points=4000)), None
    except ValueError as err:
        return float("nan"), f"D2 not computed: {err}"


def _fit_node(train: np.ndarray, dt: float, steps: int, seed: int, window: int, divergence_weight: float,
              hidden: int, progress: Callable[[int, int], None] | None) -> tuple[Any, dict[str, Any]]:
    """A Neural ODE fitted by trajectory MSE over ``window`` frames (standardised units), Adam."""
    from sns.generators.gan import window_divergence
    from sns.losses.divergence import divergence
    from sns.surrogates.neural_ode import NeuralODE

    torch.manual_seed(seed)
    x = torch.as_tensor(train, dtype=torch.float32)
    D = x.shape[-1]
    w = x.unfold(1, window + 1, 1).permute(0, 1, 3, 2).reshape(-1, window + 1, D)
    model = NeuralODE(D, hidden=hidden, depth=3, activation="tanh", dt=dt, rtol=1e-4, atol=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    target = None
    if divergence_weight > 0:  # the data's own local volume expansion rate (same estimator as validation)
        idx = torch.randperm(len(w), generator=g)[:256]
        target = float(window_divergence(w[idx].double(), dt).median())
    losses = []
    for k in range(steps):
        b = w[torch.randint(len(w), (min(128, len(w)),), generator=g)]
        pred = model.trajectory(b[:, 0], window)
        loss = (pred - b).pow(2).mean()
        if target is not None:
            loss = loss + divergence_weight * (divergence(model.vector_field, b[:, 0]) - target).pow(2).mean() * dt**2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if progress is not None:
            progress(k + 1, steps)
    return model.eval(), {"final_loss": float(np.mean(losses[-20:])), "divergence_target": target}


class _Standard:
    def __init__(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, x.shape[-1])
        self.mean, self.std = flat.mean(0), flat.std(0)

    def fwd(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inv(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean


def _knn_forecast_rmse(train: np.ndarray, test: np.ndarray, k: int = 5, max_train: int = 20000, seed: int = 0) -> float:
    """RMSE of a k-nearest-neighbour one-step forecaster (mean of the neighbours' next states)
    fitted on the pairs of ``train`` ``(N, T, d)`` and applied to the pairs of ``test``."""
    from scipy.spatial import cKDTree

    xa, ya = train[:, :-1].reshape(-1, train.shape[-1]), train[:, 1:].reshape(-1, train.shape[-1])
    ok = np.isfinite(xa).all(1) & np.isfinite(ya).all(1)
    xa, ya = xa[ok], ya[ok]
    if len(xa) > max_train:
        idx = np.random.default_rng(seed).choice(len(xa), max_train, replace=False)
        xa, ya = xa[idx], ya[idx]
    xb, yb = test[:, :-1].reshape(-1, test.shape[-1]), test[:, 1:].reshape(-1, test.shape[-1])
    _, nn = cKDTree(xa).query(xb, k=min(k, len(xa)))
    pred = ya[nn].mean(axis=1) if nn.ndim == 2 else ya[nn]
    return float(np.sqrt(np.mean((pred - yb) ** 2)))


def validate(real: np.ndarray, synthetic: np.ndarray, dt: float, held_out: np.ndarray | None = None,
             figures: Path | None = None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Synthetic ``(M, L, d)`` against real ``(N, T, d)`` states (module docstring, step 7); traces
    with non-finite values are left out and counted.  ``held_out`` ``(N, T2, d)``: real states the
    generator did not see, for the forecast score."""
    from scipy.stats import wasserstein_distance

    from sns.generators.gan import window_divergence
    from sns.metrics.chaos import lyapunov_rosenstein, power_spectral_density

    finite = np.isfinite(synthetic).all(axis=(1, 2))
    out: dict[str, Any] = {"traces": int(len(synthetic)), "nonfinite_traces": int((~finite).sum())}
    syn = synthetic[finite]
    if len(syn) == 0:
        out["note"] = "every synthetic trace left the finite numbers: nothing to validate"
        return out
    d = real.shape[-1]
    rs, ss = real.reshape(-1, d), syn.reshape(-1, d)
    std = rs.std(0)
    w1 = [wasserstein_distance(ss[:, j], rs[:, j]) / std[j] for j in range(d)]
    out["w1_over_std"] = [float(v) for v in w1]
    out["w1_over_std_mean"] = float(np.mean(w1))
    for name, pts in (("real", rs), ("synthetic", ss)):
        out[f"D2_{name}"], why = _d2(pts)
        if why:
            out[f"D2_{name}_warning"] = why[:300]
    lam = {}
    import warnings

    for name, arr in (("real", real), ("synthetic", syn)):
        series = arr[int(np.argmax([a.shape[0] for a in arr]))][:, 0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                lam[name] = float(lyapunov_rosenstein(series, dt))
            except ValueError as err:  # too short a trace for the estimator's horizon: say so
                lam[name] = float("nan")
                out[f"lambda1_{name}_warning"] = f"not computed: {err}"[:300]
        if caught:
            out[f"lambda1_{name}_warning"] = str(caught[-1].message)[:300]
    out["lambda1_real"], out["lambda1_synthetic"] = lam["real"], lam["synthetic"]
    nper = int(min(256, real.shape[1], syn.shape[1]))
    f, p_real = power_spectral_density(real[:, :, 0], dt, nperseg=nper, axis=1)
    _, p_syn = power_spectral_density(syn[:, :, 0], dt, nperseg=nper, axis=1)
    pr, ps = p_real.mean(0), p_syn.mean(0)
    keep = (pr > 0) & (ps > 0) & (f > 0)
    out["psd_log10_distance"] = float(np.mean(np.abs(np.log10(ps[keep] / pr[keep]))))
    L = int(min(16, real.shape[1], syn.shape[1]))

    def rates(arr: np.ndarray) -> np.ndarray:
        g = np.random.default_rng(0)
        starts = [(i, t) for i in range(len(arr)) for t in range(0, arr.shape[1] - L + 1, L)]
        pick = g.choice(len(starts), min(128, len(starts)), replace=False)
        wins = np.stack([arr[starts[k][0], starts[k][1]:starts[k][1] + L] for k in pick])
        return window_divergence(torch.as_tensor(wins), dt).reshape(-1).numpy()

    dr, dsyn = rates(real), rates(syn)
    out["divergence_real_median"], out["divergence_synthetic_median"] = float(np.median(dr)), float(np.median(dsyn))
    out["divergence_error"] = float(abs(np.median(dsyn) - np.median(dr)))
    out["divergence_w1"] = float(wasserstein_distance(dsyn, dr))
    if held_out is not None and held_out.shape[1] > 1:
        tstr = _knn_forecast_rmse(syn, held_out)
        trtr = _knn_forecast_rmse(real, held_out)
        out["forecast_rmse_synthetic_trained"], out["forecast_rmse_real_trained"] = tstr, trtr
        out["forecast_score"] = float(tstr / trtr) if trtr > 0 else float("nan")
    if figures is not None:
        from sns.plots import plot_lines, plot_marginals

        figures.mkdir(parents=True, exist_ok=True)
        plot_marginals({"real": rs, "synthetic": ss}, path=figures / "marginals.png")
        plot_lines(f[keep], {"real": pr[keep], "synthetic": ps[keep]}, "frequency", "PSD (first coordinate)",
                   "power spectral density", logy=True, path=figures / "psd.png")
        n = int(min(real.shape[1], syn.shape[1], 500))
        plot_lines(np.arange(n) * dt, {"real": real[0, :n, 0], "synthetic 0": syn[0, :n, 0],
                                       **({"synthetic 1": syn[1, :n, 0]} if len(syn) > 1 else {})},
                   "time", "first coordinate", "example traces", path=figures / "traces.png")
        out["figures"] = [str(figures / n) for n in ("marginals.png", "psd.png", "traces.png")]
    return out


def _write(out: Path, traces: np.ndarray, dt: float, coords: Sequence[str], attrs: dict[str, Any]) -> Path:
    """The traces as a zarr store, written beside ``out`` and renamed into place."""
    import xarray as xr

    ds = xr.Dataset({"traces": (("trace", "time", "coordinate"), traces.astype(np.float32))},
                    coords={"time": np.arange(traces.shape[1]) * dt},
                    attrs={**{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in attrs.items()},
                           "coordinate_names": json.dumps(list(coords))})
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    ds.to_zarr(tmp, mode="w", consolidated=False)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def make_traces(
    input: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    variable: str | None = None,
    dt: float | None = None,
    time_column: str | None = None,
    denoise: str | None = None,
    delay: int | None = None,
    dim: int | str | None = None,
    max_lag: int = 100,
    generator: str = "auto",
    conservative: bool = False,
    steps: int = 1000,
    n_traces: int = 32,
    length: int = 1000,
    holdout: float = 0.2,
    seed: int = 0,
    min_samples: int = 500,
    node: dict[str, Any] | None = None,
    gan: dict[str, Any] | None = None,
    hmc: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole job (module docstring); writes ``out_dir/traces.zarr``, ``out_dir/report.json``,
    ``out_dir/report.md`` and ``out_dir/figures/``; returns the report."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    for name, v, lo in (("steps", steps, 1), ("n_traces", n_traces, 1), ("length", length, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not 0.05 <= holdout <= 0.5:
        raise ValueError(f"holdout must be in [0.05, 0.5] (the held-out fraction of each trajectory), got {holdout!r}")
    if denoise not in (None, "bayes", "universal"):
        raise ValueError(f"denoise must be null, 'bayes' or 'universal', got {denoise!r}")
    series = load_series(input, columns, variable, dt, time_column, min_samples)
    choose_generator(series.values.shape[-1] > 1, conservative, generator)  # refuse early, before any work
    out = Path(out_dir)
    report: dict[str, Any] = {"schema": SCHEMA, "source": series.source, "columns": series.columns, "dt": series.dt,
                              "real_shape": list(series.values.shape)}
    if denoise is not None:
        from sns.generators.preprocess import wavelet_denoise

        sigmas = []
        for n in range(series.values.shape[0]):
            for j in range(series.values.shape[2]):
                y, info = wavelet_denoise(series.values[n, :, j], rule=denoise, return_info=True)
                series.values[n, :, j] = y
                sigmas.append(info["sigma"])
        report["denoise"] = {"rule": denoise, "noise_sigma": [float(s) for s in sigmas]}
    emb = _embed(series, delay, dim, max_lag)
    states = emb.pop("states")
    report["embedding"] = emb
    gen_name, reason = choose_generator(emb["full_state"], conservative, generator)
    report["generator"], report["reason"] = gen_name, reason
    T = states.shape[1]
    cut = int(round(T * (1 - holdout)))
    train, held = states[:, :cut], states[:, cut:]
    std = _Standard(train)
    bar = tqdm(total=steps, desc=f"training {gen_name}", disable=not progress, unit="step")

    def tick(k: int, n: int) -> None:
        bar.update(k - bar.n)

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    flat = train.reshape(-1, train.shape[-1])
    x0 = flat[rng.choice(len(flat), n_traces, replace=len(flat) < n_traces)]
    info: dict[str, Any] = {}
    if gen_name == "node":
        kw = {"window": 8, "divergence_weight": 0.0, "hidden": 64, **(node or {})}
        model, info = _fit_node(std.fwd(train), series.dt, steps, seed, kw["window"], kw["divergence_weight"],
                                kw["hidden"], tick)
        bar.close()
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            traces = []
            for a in tqdm(range(0, n_traces, 16), desc="generating", disable=not progress, unit="batch"):
                xs = torch.as_tensor(std.fwd(x0[a:a + 16]), dtype=torch.float32)
                try:
                    traces.append(model.generate(xs, length - 1, chunk=100).double().numpy())
                except (AssertionError, RuntimeError):  # the adaptive solver gave up: a diverged field
                    traces.append(np.full((len(xs), length, xs.shape[1]), np.nan))
        traces = std.inv(np.concatenate(traces))
    elif gen_name == "gan":
        from sns.generators import WindowGAN

        kw = {"window": 16, "divergence_features": False, **(gan or {})}
        model, _ = WindowGAN.fit(train, series.dt, steps=steps, seed=seed, progress=tick, **kw)
        bar.close()
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        traces = np.concatenate([model.generate(x0[a:a + 64], length, seed=seed + a).double().numpy()
                                 for a in tqdm(range(0, n_traces, 64), desc="generating", disable=not progress,
                                               unit="batch")])
        info = {"divergence_features": bool(kw["divergence_features"])}
    else:
        from sns.generators import HMCGenerator

        kw = dict(hmc or {})
        fit_kwargs = {"accel_steps": steps, **kw.pop("fit_kwargs", {})}
        model = HMCGenerator.fit(train, series.dt, seed=seed, fit_kwargs=fit_kwargs, **kw)
        bar.update(steps)
        bar.close()
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        tr, info = model.generate(n_traces, length, seed=seed)
        traces = tr.double().numpy()
        info = {k: v for k, v in info.items() if isinstance(v, (int, float))}
    t_gen = time.perf_counter() - t0
    report["training"] = {"steps": steps, "seconds": t_train, **{k: v for k, v in info.items() if v is not None}}
    report["generation"] = {"traces": n_traces, "length": length, "seconds": t_gen,
                            "traces_per_second": n_traces / t_gen if t_gen > 0 else float("inf")}
    coords = series.columns if emb["full_state"] else [f"{series.columns[0]}(t-{k}*{emb['delay']})"
                                                        for k in range(emb["dim"])]
    out.mkdir(parents=True, exist_ok=True)
    report["validation"] = validate(train, traces, series.dt, held_out=held, figures=out / "figures", names=coords)
    attrs = {"sns_schema": SCHEMA, "source": series.source, "columns": series.columns, "dt": series.dt,
             "time_unit": series.time_unit, "generator": gen_name, "reason": reason, "seed": seed,
             "embedding": emb, "training_steps": steps}
    report["traces_path"] = str(_write(out / "traces.zarr", traces, series.dt, coords, attrs))
    report["seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(_markdown(report))
    return report


def _markdown(r: dict[str, Any]) -> str:
    e, v = r["embedding"], r["validation"]
    lines = [f"# Synthetic traces: {r['source']}", "",
             f"- columns {r['columns']}, dt {r['dt']:g}, real data {r['real_shape']} (trajectories, samples, columns)",
             (f"- state: full ({e['dim']} columns)" if e["full_state"] else
              f"- state: delay embedding of {r['columns'][0]}, delay {e['delay']}, dimension {e['dim']} "
              f"(false nearest neighbours: {e['fnn_dim']})"),
             f"- D2 {e['D2']:.2f}; rule d_E >= 2 D2 + 1: {'holds' if e['rule_ok'] else 'does NOT hold'}",
             f"- generator: {r['generator']} ({r['reason']}); {r['training']['steps']} training steps, "
             f"{r['training']['seconds']:.0f} s; {r['generation']['traces']} traces x {r['generation']['length']} frames "
             f"in {r['generation']['seconds']:.1f} s", "", "| metric | real | synthetic |", "|---|---|---|"]
    if "w1_over_std_mean" in v:
        lines += [f"| W1 of the marginals / std (mean over coordinates) | 0 | {v['w1_over_std_mean']:.3f} |",
                  f"| D2 | {v['D2_real']:.2f} | {v['D2_synthetic']:.2f} |",
                  f"| largest Lyapunov exponent (Rosenstein) | {v['lambda1_real']:.3f} | {v['lambda1_synthetic']:.3f} |",
                  f"| local divergence, median | {v['divergence_real_median']:.2f} | "
                  f"{v['divergence_synthetic_median']:.2f} |",
                  f"| PSD distance (mean abs log10 ratio) | 0 | {v['psd_log10_distance']:.3f} |"]
        if "forecast_score" in v:
            lines.append(f"| one-step forecast RMSE on held-out real data (kNN trained on it) | "
                         f"{v['forecast_rmse_real_trained']:.4g} | {v['forecast_rmse_synthetic_trained']:.4g} |")
    lines += ["", f"Non-finite synthetic traces: {v['nonfinite_traces']} of {v['traces']}."]
    lines += [f"Warning ({k}): {w}" for k, w in v.items() if k.endswith("_warning")]
    return "\n".join(lines) + "\n"
