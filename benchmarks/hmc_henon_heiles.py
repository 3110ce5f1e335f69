"""HMC with a learned potential on Henon-Heiles: how well is the potential learned, and what do
the generated traces look like?  (issue 18; the measured numbers are quoted in README.md.)

    OMP_NUM_THREADS=1 python benchmarks/hmc_henon_heiles.py --energy 1/8
    OMP_NUM_THREADS=1 python benchmarks/hmc_henon_heiles.py --energy 1/6 --shoot-steps 200

Data: ``--trajectories`` Henon-Heiles orbits at energy ``--energy`` (Yoshida-4, dt 0.02, frames
every 0.1 after 10 time units of spin-up).  Fit: :meth:`sns.generators.HMCGenerator.fit`.
Reported: the potential's error against the true one up to a constant over the data positions
(RMS and max, relative to the std and the range of the true U there), the HMC acceptance rate,
the learned-energy drift of the traces, the fraction of traces that leave the data's position
box, the spread of the TRUE energy along the traces, and W1 per coordinate between the HMC
initial conditions / the pooled trace states and the data (and the floor: as many random data
states as traces against the data).  ``--stride 5`` keeps frames every 0.5 (coarse frames, where
the finite-difference accelerations of stage 1 are biased and stage 2 helps).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from fractions import Fraction

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from sns.generators.hmc import HMCGenerator, potential_error
from sns.systems.henon_heiles import HenonHeiles
from sns.systems.henon_heiles import potential as true_potential


def henon_heiles_data(energy: float, n_traj: int, n_frames: int, seed: int = 0) -> torch.Tensor:
    s = HenonHeiles(energy=energy, dt=0.02)
    u = s.step(s.initial_condition(n_traj, torch.Generator().manual_seed(seed)), 500)
    frames = [u]
    for _ in range(n_frames - 1):
        u = s.step(u, 5)
        frames.append(u)
    return torch.stack(frames, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--energy", default="1/8", help="energy of the data (fraction or float, <= 1/6)")
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--accel-steps", type=int, default=1500)
    ap.add_argument("--shoot-steps", type=int, default=0)
    ap.add_argument("--traces", type=int, default=64)
    ap.add_argument("--trace-frames", type=int, default=500)
    ap.add_argument("--stride", type=int, default=1, help="keep every stride-th frame (frame interval 0.1 * stride)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the summary as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    energy = float(Fraction(args.energy))
    t0 = time.perf_counter()
    x = henon_heiles_data(energy, args.trajectories, args.frames * args.stride, args.seed)[:, ::args.stride]
    t_data = time.perf_counter() - t0
    gen = HMCGenerator.fit(x, 0.1 * args.stride, seed=args.seed,
                           fit_kwargs={"accel_steps": args.accel_steps, "shoot_steps": args.shoot_steps,
                                       "log_every": 500})
    q = x[..., :2].reshape(-1, 2)
    err = potential_error(gen.potential, true_potential, q)
    traces, info = gen.generate(args.traces, args.trace_frames, seed=args.seed + 1)
    h_true = HenonHeiles.energy(traces)
    data = x.reshape(-1, 4).numpy()
    ics = traces[:, 0].numpy()
    pooled = traces.reshape(-1, 4).numpy()
    scale = data.std(0)
    # sampling floor of W1 at this sample size: as many random data states as traces
    rng = np.random.default_rng(args.seed)
    floor = data[rng.choice(data.shape[0], size=args.traces, replace=False)]
    summary = {
        "energy": energy, "trajectories": args.trajectories, "frames": args.frames,
        "stride": args.stride, "accel_steps": args.accel_steps, "shoot_steps": args.shoot_steps,
        "data_seconds": t_data, "fit": gen.fit_info, "potential_error": err,
        "temperature": gen.temperature, "energy_range": gen.energy_range,
        "generate": info,
        "true_energy_of_traces": {"mean": float(h_true.mean()), "std": float(h_true.std()),
                                  "min": float(h_true.min()), "max": float(h_true.max())},
        "w1_ic_over_std": [float(wasserstein_distance(ics[:, i], data[:, i]) / scale[i]) for i in range(4)],
        "w1_floor_over_std": [float(wasserstein_distance(floor[:, i], data[:, i]) / scale[i]) for i in range(4)],
        "w1_traces_over_std": [float(wasserstein_distance(pooled[:, i], data[:, i]) / scale[i]) for i in range(4)],
    }
    finite = np.isfinite(pooled).all()
    summary["traces_finite"] = bool(finite)
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
