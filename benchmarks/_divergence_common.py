"""Plumbing shared by ``divergence_lorenz63.py`` and ``divergence_hh.py``.

Frames from a system, normalisation and training windows, one Neural ODE training run
(Lightning, CPU, one thread), training every job with an optional model cache, generation
that survives solver failures, the escape test and the table number format.  What differs
between the two benchmarks (the system, the divergence target, the metrics, the cache file
names) stays in the scripts.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARGIN = 0.25


def sample_frames(system: Any, x: torch.Tensor, n_frames: int, save_every: int) -> np.ndarray:
    """``(n_traj, n_frames, D)`` frames: ``x`` and then every ``save_every`` solver steps."""
    frames = [x]
    for _ in range(n_frames - 1):
        frames.append(system.step(frames[-1], save_every))
    return torch.stack(frames, 1).numpy()


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mu, sd, train_n, test_n)``: per-variable mean and std of ``train``, both sets normalised."""
    d = train.shape[-1]
    mu, sd = train.reshape(-1, d).mean(0), train.reshape(-1, d).std(0)
    return mu, sd, (train - mu) / sd, (test - mu) / sd


def windows(x: np.ndarray, length: int, stride: int = 1, dtype: Any = None) -> np.ndarray:
    """All windows of ``length`` frames of the trajectories ``x`` ``(N, F, D)`` (every
    ``stride``-th start), as a contiguous ``(n_windows, length, D)`` array."""
    w = np.lib.stride_tricks.sliding_window_view(x, length, axis=1)  # (N, F - length + 1, D, length)
    if stride != 1:
        w = w[:, ::stride]
    return np.ascontiguousarray(w.transpose(0, 1, 3, 2).reshape(-1, length, x.shape[-1]), dtype)


def fit_neural_ode(job: dict[str, Any], net_kwargs: dict[str, Any], terms: list, window: int) -> tuple[dict, Any]:
    """Train a Neural ODE on ``job["windows"]`` for ``job["steps"]`` optimizer steps.

    Adam lr 1e-3, batch 128, trajectory MSE over ``window`` intervals, gradient clipping 1,
    extra loss ``terms``; seeded by ``job["seed"]`` (initial weights and batches).  Returns
    the result (seed, variant, state dict, training wall time, NFE per step) and the trainer.
    """
    import lightning.pytorch as pl

    from sns.training.neural_ode import NeuralODEModule

    torch.set_num_threads(1)
    seed = job["seed"]
    pl.seed_everything(seed, workers=True, verbose=False)
    module = NeuralODEModule({"kind": "neural_ode", "kwargs": net_kwargs},
                             optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), unroll_start=window,
                             unroll_max=window, loss_terms=terms)
    loader = torch.utils.data.DataLoader(torch.from_numpy(job["windows"]), batch_size=128, shuffle=True,
                                         drop_last=True, generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_steps=job["steps"], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - t0
    return {"seed": seed, "variant": job["variant"], "state": module.model.state_dict(), "train_s": wall,
            "nfe_per_step": module.model.nfe / max(trainer.global_step, 1)}, trainer


def train_all(jobs: list[dict[str, Any]], args: Any, train_one: Callable[[dict[str, Any]], dict[str, Any]],
              key: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """``train_one`` for every job (in ``args.jobs`` spawned processes: ``train_one`` must be a
    module-level function); with ``args.cache``, results are saved there as ``key(job)`` and
    reused when present."""
    cache = Path(args.cache) if args.cache else None
    done = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        done = {key(j): torch.load(cache / key(j), weights_only=True) for j in jobs if (cache / key(j)).exists()}
    todo = [j for j in jobs if key(j) not in done]
    if args.jobs > 1 and len(todo) > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            new = pool.map(train_one, todo)
    else:
        new = [train_one(j) for j in todo]
    for j, r in zip(todo, new):
        done[key(j)] = r
        if cache is not None:
            torch.save(r, cache / key(j))
    return [done[key(j)] for j in jobs]


def generate(model: Any, x0: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Traces ``(B, n + 1, D)`` from ``x0`` ``(B, D)`` and a per-trace solver-failure flag.

    If the batch fails, traces are generated one by one; a failed one is all NaN.
    """
    try:
        return model.generate(x0, n, chunk=100).numpy(), np.zeros(len(x0), bool)
    except (AssertionError, RuntimeError):  # torchdiffeq: step size underflow / too many steps
        out, failed = [], []
        for i in range(len(x0)):
            try:
                out.append(model.generate(x0[i:i + 1], n, chunk=100).numpy()[0])
                failed.append(False)
            except (AssertionError, RuntimeError):
                out.append(np.full((n + 1, x0.shape[1]), np.nan))
                failed.append(True)
        return np.stack(out), np.array(failed)


def escaped(traces: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per trace: non-finite, or outside [lo - m (hi - lo), hi + m (hi - lo)] in any coordinate
    (``m = MARGIN``)."""
    span = hi - lo
    out = (traces < lo - MARGIN * span) | (traces > hi + MARGIN * span)
    return (~np.isfinite(traces)).any((1, 2)) | out.any((1, 2))


def fmt(values: list[float], digits: int = 3) -> str:
    """One value as it is, several as ``mean ± std`` (NaN ignored)."""
    v = np.asarray(values, float)
    if len(v) == 1:
        return f"{v[0]:.{digits}g}"
    return f"{np.nanmean(v):.{digits}g} ± {np.nanstd(v):.{digits - 1}g}"
