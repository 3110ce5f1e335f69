"""Do the level heads see a slowly collapsing rollout?  (Issue 14, Lorenz-63.)

Uses the models that ``benchmarks/sns_regimes.py`` trained (``--out``, default as there): for each
training seed and surrogate (good / weak), rolls out the bare surrogate ``--steps`` steps from 16
*valid* initial conditions (4 evenly spaced frames per valid trajectory) and prints, at a few
steps, the median (and max) of the log-sigma denoiser's estimated levels ``(i2, i1)`` on the pair
``(x_{t-1}, x_t)``, the median distance of ``x_t`` to the nearest *train* state (normalised units),
and the level floor :class:`sns.refine.NearestStateGuard` gives it.  The first line per seed is
the heads' reading of clean valid pairs.

Run: ``python benchmarks/sns_heads_drift.py --seeds 0 1 2`` after ``sns_regimes.py`` (lorenz63).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-sns-regimes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--sigma-min", type=float, default=1e-3)
    args = p.parse_args()
    from sns.baselines import GaussianApproximation
    from sns.data.io import open_dataset
    from sns.export import load_model, load_schedule
    from sns.refine import NearestStateGuard, estimate_levels
    from sns.rollout import rollout

    torch.set_num_threads(1)
    root = args.out / "lorenz63"
    data_dir = root / "data" / "lorenz63-cpu"
    if not (data_dir / "test.zarr").exists():
        sys.exit(f"no data under {data_dir}: run benchmarks/sns_regimes.py --out {args.out} first")

    def split(name):
        ds = open_dataset(data_dir, name)
        var = next(iter(ds.data_vars))
        off, sc = np.asarray(ds.attrs["norm_offset"]), np.asarray(ds.attrs["norm_scale"])
        return torch.from_numpy(((ds[var].values - off) / sc).astype(np.float32))

    train, valid = split("train"), split("valid")
    x0 = torch.cat([valid[:, k * valid.shape[1] // 4] for k in range(4)])
    times = [t for t in (100, 1000, 2000, 3000, args.steps - 1) if t < args.steps]
    guard = None
    print("| seed | states | " + " | ".join(f"step {t}: i2 / i1 (max i2), distance, guard" for t in times) + " |")
    print("|---" * (2 + len(times)) + "|")
    for seed in args.seeds:
        den, dx = load_model(root / "runs" / f"seed{seed}" / f"denoiser_log_sigma{args.sigma_min:g}" / "denoiser.safetensors")
        sch = load_schedule(dx)
        if guard is None:
            guard = NearestStateGuard.calibrate(sch, train.reshape(-1, 3), valid.reshape(-1, 3))
        i2, i1 = estimate_levels(den, valid[:, :-1].reshape(-1, 3), valid[:, 1:].reshape(-1, 3))
        d = guard.distance(valid.reshape(-1, 3))
        print(f"| {seed} | clean valid pairs | median i2 / i1 {i2.double().median():.0f} / {i1.double().median():.0f}"
              f" (90%: {i2.double().quantile(0.9):.0f} / {i1.double().quantile(0.9):.0f}), distance median "
              f"{d.median():.4f}, 99.9% {guard.threshold:.4f}" + " |" * len(times))
        for which in ("good", "weak"):
            sur, _ = load_model(root / "runs" / f"seed{seed}" / f"surrogate_{which}" / "surrogate.safetensors")
            st = rollout(GaussianApproximation(sur), x0, args.steps, store=None, seed=seed, progress=False).states
            cells = []
            for t in times:
                a, b = st[:, t - 1].float(), st[:, t].float()
                j2, j1 = estimate_levels(den, a, b)
                cells.append(f"{j2.double().median():.0f} / {j1.double().median():.0f} ({int(j2.max())}), "
                             f"{guard.distance(b).median():.3f}, {guard(b).double().median():.0f}")
            print(f"| {seed} | bare {which} rollout | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
