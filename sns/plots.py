"""Figures of rollouts against a reference (matplotlib, Agg backend; used by ``sns-evaluate``).

Every function takes plain numpy arrays, returns the :class:`matplotlib.figure.Figure`, and
saves it to ``path`` (PNG) when one is given.  Methods are passed as ``{name: values}``
mappings; the reference, if present, is drawn in black.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_corr_r_tau", "plot_ensemble", "plot_lines", "plot_marginals", "plot_snapshots", "plot_spectra"]

REFERENCE = "reference"


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return fig


def _style(name: str) -> dict:
    return {"color": "k", "lw": 2.0, "zorder": 10} if name == REFERENCE else {"lw": 1.3}


def plot_snapshots(fields: Mapping[str, np.ndarray], times: Sequence[int], title: str = "vorticity",
                   path: str | Path | None = None) -> Figure:
    """Rows = methods, columns = times; ``fields[name]`` is ``(len(times), H, W)`` (NaN where a
    method has no state at that time).  One symmetric diverging colour scale for all panels
    (``vmax`` = the reference's max |value|, else the largest), colour map ``RdBu_r``."""
    names = list(fields)
    ref = fields.get(REFERENCE)
    source = ref if ref is not None and not np.isnan(ref).all() else np.concatenate(
        [np.ravel(v) for v in fields.values()])
    vmax = float(np.nanmax(np.abs(source))) or 1.0
    fig, axes = plt.subplots(len(names), len(times), figsize=(1.9 * len(times) + 1, 1.9 * len(names)),
                             squeeze=False)
    im = None
    for r, name in enumerate(names):
        for c, t in enumerate(times):
            ax = axes[r, c]
            im = ax.imshow(fields[name][c], cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower")
            if np.isnan(fields[name][c]).all():
                ax.text(0.5, 0.5, "no state", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {t}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title} snapshots (shared colour scale +-{vmax:.3g})")
    fig.colorbar(im, ax=axes, shrink=0.8)
    return _save(fig, path)


def plot_spectra(k: np.ndarray, spectra: Mapping[str, np.ndarray], title: str = "time-mean energy spectrum",
                 path: str | Path | None = None) -> Figure:
    """Log-log plot of ``E(k)`` per method (shells ``k >= 1``); ``spectra[name]`` is ``(K,)``."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, e in spectra.items():
        e = np.asarray(e, dtype=float)
        sel = (k >= 1) & (e > 0)
        ax.loglog(k[sel], e[sel], label=name, **_style(name))
    ax.set_xlabel("wavenumber k")
    ax.set_ylabel("E(k) (energy per shell)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_lines(x: Mapping[str, np.ndarray] | np.ndarray, series: Mapping[str, np.ndarray], xlabel: str,
               ylabel: str, title: str, logy: bool = False, hlines: Sequence[float] = (),
               path: str | Path | None = None) -> Figure:
    """One line per method: ``series[name]`` against ``x`` (one array for all, or per method)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, y in series.items():
        xs = x[name] if isinstance(x, Mapping) else x
        y = np.asarray(y, dtype=float)
        ax.plot(np.asarray(xs)[: len(y)], y, label=name, **_style(name))
    for h in hlines:
        ax.axhline(h, color="grey", ls=":", lw=0.8)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_marginals(samples: Mapping[str, np.ndarray], title: str = "invariant measure (marginals)",
                   bins: int = 60, max_coords: int = 3, path: str | Path | None = None,
                   xlabel: str = "coordinate {j}") -> Figure:
    """Histograms per coordinate (first ``max_coords``); ``samples[name]`` is ``(n, d)``;
    ``xlabel`` is formatted with the coordinate index ``j``."""
    d = min(max_coords, next(iter(samples.values())).shape[-1])
    fig, axes = plt.subplots(1, d, figsize=(4 * d, 3.2), squeeze=False)
    for j in range(d):
        ax = axes[0, j]
        allv = np.concatenate([s[:, j] for s in samples.values() if len(s)])
        edges = np.linspace(np.nanpercentile(allv, 0.5), np.nanpercentile(allv, 99.5), bins + 1)
        for name, s in samples.items():
            if len(s):
                ax.hist(s[:, j], bins=edges, density=True, histtype="step", label=name, **_style(name))
        ax.set_xlabel(xlabel.format(j=j))
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, y=1.03)
    return _save(fig, path)


def plot_corr_r_tau(r: np.ndarray, profiles: Mapping[str, np.ndarray], lags: Sequence[int], dt: float = 1.0,
                    title: str = "space-time correlation C(|r|, tau)", path: str | Path | None = None) -> Figure:
    """One panel per lag in ``lags``: ``C(|r|, tau)`` against ``|r|``, one line per method.

    ``profiles[name]`` is ``(n_lags, len(r))`` (:func:`sns.metrics.radial_correlation`);
    ``dt`` converts the lag index to time units in the panel titles."""
    fig, axes = plt.subplots(1, len(lags), figsize=(3.6 * len(lags), 3.2), squeeze=False, sharey=True)
    for ax, lag in zip(axes[0], lags):
        for name, prof in profiles.items():
            if lag < len(prof):
                ax.plot(r, prof[lag], label=name, **_style(name))
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(f"tau = {lag * dt:.3g} (lag {lag})")
        ax.set_xlabel("|r| (grid cells)")
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("C(|r|, tau)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, y=1.03)
    return _save(fig, path)


def plot_ensemble(lead: Mapping[str, np.ndarray], scores: Mapping[str, Mapping[str, np.ndarray]],
                  title: str = "ensemble scores vs lead time", path: str | Path | None = None) -> Figure:
    """Three panels against lead time (``lead[name]``, time units): RMSE of the ensemble mean
    (solid) and spread (dashed, same colour), the spread-skill ratio (1: reliable), and the fair
    CRPS; ``scores[name]`` holds ``rmse``, ``spread``, ``spread_skill``, ``crps``
    (:mod:`sns.metrics.ensemble`)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, (name, sc) in enumerate(scores.items()):
        t = np.asarray(lead[name], dtype=float)
        color = f"C{i % 10}"
        axes[0].plot(t, sc["rmse"], color=color, lw=1.3, label=f"{name}: RMSE of mean")
        axes[0].plot(t, sc["spread"], color=color, lw=1.3, ls="--", label=f"{name}: spread")
        axes[1].plot(t, sc["spread_skill"], color=color, lw=1.3, label=name)
        axes[2].plot(t, sc["crps"], color=color, lw=1.3, label=name)
    axes[1].axhline(1.0, color="grey", ls=":", lw=0.8)
    for ax, ylabel, sub in zip(axes, ("RMSE / spread", "spread-skill ratio", "CRPS (fair)"),
                               ("RMSE of the ensemble mean and spread", "sqrt((M+1)/M) spread / RMSE",
                                "CRPS (fair estimator)")):
        ax.set_xlabel("lead time (time units)")
        ax.set_ylabel(ylabel)
        ax.set_title(sub, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, y=1.02)
    return _save(fig, path)
