"""How uncertain is the next coarse Kolmogorov state given the current one?  (issue 14)

A conditional diffusion model of ``p(x_t | x_{t-1})`` is the right tool where that law is wide:
where the unobserved (sub-grid) modes change the next observed state.  This measures it.

Library and queries: ``--library`` trajectories of the fine solver (the ``cpu`` preset by default:
64^2 simulated, 32^2 observed, Re 1000, frames every 0.1), spun up like the data sets,
``--frames`` frames each; ``--queries`` query states from ``--query-traj`` other trajectories.
For each query fine state ``u`` (observed field ``c = observe(u)``), an ensemble of ``--members``
fine states that share ``c`` exactly -- the observed modes of ``u``, the unobserved modes of
another fine state -- is run one frame with the fine solver and observed.  Where the unobserved
modes come from decides what the spread measures:

* ``random``: random library frames.  Unobserved modes independent of ``c``: an upper bound.
* ``knn``: the library frames nearest to ``c`` (L2 in the observed field): conditioned on ``c``
  as far as a finite library allows (the table prints how near the neighbours are).
* ``history tau``: random library frames at time ``t - tau``, then run with the fine solver while
  their observed modes are replaced by the query trajectory's at every solver step until ``t``
  (continuous data insertion, as in Azouani, Olson & Titi 2014): the unobserved modes conditioned
  on the observed *history* over ``tau``.  Where 2-D Navier-Stokes has finitely many determining
  modes this converges to the truth as ``tau`` grows; how fast says how much of the next observed
  state the current observed state alone leaves open (a one-frame surrogate conditions on
  ``x_{t-1}`` only, i.e. between ``random``/``knn`` and ``history`` over a short ``tau``).
* ``self``: the query's own unobserved modes (sanity: spread 0 to round-off).

Spread: RMS over members and grid of the observed next state around the ensemble mean (unbiased),
relative to the RMS of the true observed one-frame increment ``c_{t+1} - c_t``; also the error of
the ensemble mean against the truth over the same increment (what the best deterministic predictor
given that conditioning could do).  Float64 throughout.

Run: ``python benchmarks/kolmogorov_uncertainty.py`` (cpu preset); ``--n 128 --coarse-n 32
--reynolds 4000 --dt 5e-3 --save-every 20 --spinup 4000`` for a stronger truncation at a higher
Reynolds number (frames still 0.1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sns.systems.kolmogorov import PRESETS, KolmogorovFlow


def observed_mask(n: int, m: int) -> torch.Tensor:
    """Boolean mask of the rfft2 modes of an ``n^2`` field that ``observe`` keeps (|kx|, |ky| < m/2)."""
    ky = torch.fft.fftfreq(n, 1.0 / n).abs()
    kx = torch.fft.rfftfreq(n, 1.0 / n)
    return (ky[:, None] < m / 2) & (kx[None, :] < m / 2)


def trajectories(flow: KolmogorovFlow, batch: int, frames: int, spinup: int, save_every: int, seed: int) -> torch.Tensor:
    """Fine states ``(batch * frames, n, n)`` after the spin-up, one every ``save_every`` steps."""
    u = flow.initial_condition(batch, torch.Generator().manual_seed(seed))
    u = flow.step(u, spinup)
    out = []
    for _ in range(frames):
        u = flow.step(u, save_every)
        out.append(u.clone())
    return torch.stack(out, 1).reshape(-1, flow.n, flow.n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cpu = PRESETS["cpu"]
    p.add_argument("--n", type=int, default=cpu.system["n"])
    p.add_argument("--coarse-n", type=int, default=cpu.system["coarse_n"])
    p.add_argument("--reynolds", type=float, default=cpu.system["reynolds"])
    p.add_argument("--dt", type=float, default=cpu.system["dt"])
    p.add_argument("--save-every", type=int, default=cpu.save_every)
    p.add_argument("--spinup", type=int, default=cpu.spinup_steps)
    p.add_argument("--library", type=int, default=16, help="library trajectories")
    p.add_argument("--frames", type=int, default=200, help="frames per library trajectory")
    p.add_argument("--query-traj", type=int, default=4)
    p.add_argument("--queries", type=int, default=8, help="query states per query trajectory (frames 10 apart)")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--tau", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0, 4.0],
                   help="history windows (time units, multiples of the frame interval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    params = {**cpu.system, "n": args.n, "coarse_n": args.coarse_n, "reynolds": args.reynolds, "dt": args.dt}
    flow = KolmogorovFlow(**params, dtype=torch.float64)
    n, m, K, frame = args.n, args.coarse_n, args.members, args.save_every
    t0 = time.perf_counter()
    lib = trajectories(flow, args.library, args.frames, args.spinup, frame, args.seed + 1)
    q = trajectories(flow, args.query_traj, 10 * args.queries, args.spinup, frame, args.seed + 2)
    q = q.reshape(args.query_traj, 10 * args.queries, n, n)[:, ::10].reshape(-1, n, n)
    Q = len(q)
    t_lib = time.perf_counter() - t0
    mask = observed_mask(n, m)
    lib_hat = torch.fft.rfft2(lib)
    lib_obs = flow.observe(lib)[:, 0].reshape(len(lib), -1)
    obs_rms = float(lib_obs.pow(2).mean().sqrt())
    gen = torch.Generator().manual_seed(args.seed + 3)

    def measure(u: torch.Tensor, members: torch.Tensor) -> dict[str, object]:
        """Spread of the observed next state of ``members`` ``(Q, K', n, n)`` that share ``u``'s observed modes."""
        c = flow.observe(u)[:, 0]
        truth = flow.observe(flow.step(u, frame))[:, 0]
        incr = (truth - c).pow(2).mean(dim=(1, 2)).sqrt()
        k = members.shape[1]
        same = float((flow.observe(members.reshape(-1, n, n))[:, 0].reshape(Q, k, m, m) - c[:, None]).abs().max())
        nxt = flow.observe(flow.step(members.reshape(-1, n, n), frame))[:, 0].reshape(Q, k, m, m)
        mean = nxt.mean(1)
        spread = (nxt - mean[:, None]).pow(2).mean(dim=(1, 2, 3)).sqrt() * (k / max(k - 1, 1)) ** 0.5
        err = (mean - truth).pow(2).mean(dim=(1, 2)).sqrt()
        return {"spread": (spread / incr).numpy(), "mean_err": (err / incr).numpy(), "obs_diff": same,
                "incr": float(incr.mean())}

    def share(u_hat: torch.Tensor, v_hat: torch.Tensor) -> torch.Tensor:
        """Fine states with the observed modes of ``u_hat`` (Q, ...) and the rest of ``v_hat`` (Q, K, ...)."""
        return torch.fft.irfft2(torch.where(mask, u_hat[:, None], v_hat), s=(n, n))

    rows: dict[str, dict[str, object]] = {}
    q_hat = torch.fft.rfft2(q)
    rows["self"] = measure(q, q[:, None].expand(-1, 2, -1, -1))
    q_obs = flow.observe(q)[:, 0].reshape(Q, -1)
    d = torch.cdist(q_obs, lib_obs)
    knn = d.topk(K, largest=False).indices
    nn_dist = d.gather(1, knn).mean(1) / (obs_rms * m)  # RMS distance over the field's RMS
    rows["knn"] = measure(q, share(q_hat, lib_hat[knn]))
    rnd = torch.randint(len(lib), (Q, K), generator=gen)
    rows["random"] = measure(q, share(q_hat, lib_hat[rnd]))
    # history: start at the query states (now "t - tau"), insert their observed modes every step
    u = q.clone()
    members = share(q_hat, lib_hat[torch.randint(len(lib), (Q, K), generator=gen)]).reshape(-1, n, n)
    done = 0
    for tau in sorted(args.tau):
        steps = int(round(tau / (args.dt * frame))) * frame
        for _ in range(steps - done):
            u = flow.step(u, 1)
            v_hat = torch.fft.rfft2(flow.step(members, 1)).reshape(Q, K, n, -1)
            members = torch.fft.irfft2(torch.where(mask, torch.fft.rfft2(u)[:, None], v_hat), s=(n, n)).reshape(-1, n, n)
        done = steps
        rows[f"history tau = {steps * args.dt:g}"] = measure(u, members.reshape(Q, K, n, n))
    wall = time.perf_counter() - t0
    print(f"Kolmogorov {n}^2 -> {m}^2, Re {args.reynolds:g}, dt {args.dt:g}, frames every {args.dt * frame:g}; "
          f"library {args.library} x {args.frames} frames, {Q} queries from {args.query_traj} other trajectories, "
          f"{K} members; float64, {wall:.0f} s ({t_lib:.0f} s for the trajectories)")
    print(f"observed field RMS {obs_rms:.3f}, one-frame observed increment RMS {rows['random']['incr']:.3f}; knn "
          f"neighbours' observed RMS distance / field RMS {float(nn_dist.mean()):.2f}\n")
    print("| unobserved modes from | spread / increment, mean (10%-90% over queries) | ensemble-mean error / "
          "increment | max abs(observed member - query) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        sp, e = r["spread"], r["mean_err"]
        print(f"| {name} | {sp.mean():.3f} ({np.quantile(sp, 0.1):.3f}-{np.quantile(sp, 0.9):.3f}) | "
              f"{e.mean():.3f} | {r['obs_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
