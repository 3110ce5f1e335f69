"""Resolution study for Kolmogorov flow at Re = 1e4 (what bounds the cpu preset).

The paper simulates at 512^2 and truncates spectrally to 64^2.  This script
starts the same initial condition (drawn on 64^2, band-limited, spectrally
up-sampled) on 64^2, 256^2 and 512^2 grids, spins up, then records the
vorticity of the 64^2 observed field every ``--save-every`` steps and prints

* the standard deviation of the observed vorticity over the window (averaged
  over trajectories) and its ratio to the 512^2 -> 64^2 value,
* the wall-clock cost of one solver step per trajectory at each grid.

    python benchmarks/kolmogorov_resolution.py                       # t = 10 spin-up, window 4
    python benchmarks/kolmogorov_resolution.py --spinup 2000 --window 2000   # quicker, shorter spin-up

Everything runs on the CPU unless ``--device cuda``.
"""

from __future__ import annotations

import argparse
import time

import torch

from sns.systems.kolmogorov import KolmogorovFlow
from sns.systems.spectral import resample_spectral


def run(n: int, w0: torch.Tensor, args: argparse.Namespace) -> dict:
    sys = KolmogorovFlow(n=n, reynolds=1e4, dt=args.dt, coarse_n=64, dealias="jaxcfd",
                         dtype=torch.float32, device=args.device)
    u = resample_spectral(w0.to(torch.float64), n).to(args.device, torch.float32)
    t0 = time.perf_counter()
    u = sys.step(u, args.spinup)
    samples = []
    for _ in range(args.window // args.save_every):
        u = sys.step(u, args.save_every)
        samples.append(sys.observe(u).float().cpu())
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    obs = torch.stack(samples, 1)  # (B, T, 1, 64, 64)
    std = obs.std(dim=(1, 2, 3, 4)).mean().item()
    steps = args.spinup + args.window
    return {"n": n, "std": std, "ms_per_traj_step": 1e3 * wall / steps / w0.shape[0], "wall_s": wall,
            "finite": bool(torch.isfinite(obs).all())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[64, 256, 512])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dt", type=float, default=1e-3)
    p.add_argument("--spinup", type=int, default=10_000, help="solver steps before the window")
    p.add_argument("--window", type=int, default=4000, help="solver steps averaged over")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ic_sys = KolmogorovFlow(n=64, reynolds=1e4, dt=args.dt, dtype=torch.float64)
    w0 = ic_sys.initial_condition(args.batch, torch.Generator().manual_seed(args.seed))
    rows = []
    for n in args.grids:
        rows.append(run(n, w0, args))
        print(f"  {n}^2 done: std {rows[-1]['std']:.3f}, {rows[-1]['ms_per_traj_step']:.2f} ms per traj-step",
              flush=True)
    ref = next((r["std"] for r in rows if r["n"] == max(args.grids)), rows[-1]["std"])
    print(f"\nKolmogorov Re=1e4, dt={args.dt}, spin-up {args.spinup} steps (t={args.spinup * args.dt:g}), "
          f"window {args.window} steps, batch {args.batch}, {args.threads} threads, {args.device}\n")
    print(f"| simulated grid | observed | vorticity std | ratio to {max(args.grids)}^2 | ms per traj-step | wall s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']}^2 | 64^2 | {r['std']:.3f} | {r['std'] / ref:.3f} | {r['ms_per_traj_step']:.2f} | "
              f"{r['wall_s']:.0f} |" + ("" if r["finite"] else " (non-finite!)"))


if __name__ == "__main__":
    main()
