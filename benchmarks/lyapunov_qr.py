"""Wall time of :func:`sns.metrics.chaos.lyapunov_qr` before and after issue 17 on Lorenz-63.

The issue: "lyapunov_qr takes 214 s for 5e4 Lorenz-63 steps".  Two implementations of the same
algorithm (RK4 step, its exact derivative on the tangents, QR every step; the same numbers to
rounding, tests/test_chaos.py):

* ``tangent`` (before): the ``k`` tangent vectors go through every RK4 step as forward-mode-AD
  dual numbers, so each step pays the dual-number overhead of every operation of ``rhs``;
* ``jacobian`` (now the default for ``D <= 64``): the state alone is integrated by plain RK4 over
  a chunk of steps, the Jacobians at every stage state of the chunk come from one batched
  evaluation of ``rhs`` and ``D`` reverse-mode passes, and the step derivatives from batched
  matrix products; only the state's RK4 and a ``(B, D, k)`` product + QR per step remain
  sequential.

Not in the per-step times: the first forward-mode-AD call of a process makes torch compile its
decompositions (5-10 s here), which the old implementation always paid and the new one does not
(reverse mode); the "first call" column shows it (each implementation's first call in a fresh
process, 5 steps, measured before the timed runs; the new one runs first).

Case: one Lorenz-63 trajectory (sigma 10, rho 28, beta 8/3) from a point on the attractor,
dt = 0.01, all three exponents, ``transient = n_steps // 10`` (the default), float64, one thread.
The new implementation runs the full ``--steps`` (default 5e4); the old one, which takes minutes
for that, runs ``--old-steps`` (default 2000) and its time is also extrapolated linearly (the
cost per step is constant: no state grows).  The ratio compares seconds per step measured in the
same run.  The exponents of both on the ``--old-steps`` case are printed with their largest
relative difference.

Run: ``OMP_NUM_THREADS=1 python benchmarks/lyapunov_qr.py`` (about 1-2 minutes on two cores);
``--json out.json`` writes the table's numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from sns.metrics import chaos
from sns.metrics.chaos import LORENZ63_LAMBDA1
from sns.systems.lorenz import Lorenz63


def timed(method: str, rhs, x0: torch.Tensor, n_steps: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    spec = chaos._lyapunov_qr(rhs, x0, 0.01, n_steps, method=method)
    return time.perf_counter() - t0, spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50_000, help="recorded steps of the new implementation")
    ap.add_argument("--old-steps", type=int, default=2000, help="recorded steps of the old implementation")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys = Lorenz63(dt=0.01)
    x0 = sys.step(sys.initial_condition(1, torch.Generator().manual_seed(0)), 2000)  # on the attractor
    # first calls (warm-up): the new one first, in a process that has not used forward AD yet
    first = {m: timed(m, sys.rhs, x0, 5)[0] for m in ("jacobian", "tangent")}

    rows = []
    t_old, s_old = timed("tangent", sys.rhs, x0, args.old_steps)
    t_new_short, s_new_short = timed("jacobian", sys.rhs, x0, args.old_steps)
    t_new, s_new = timed("jacobian", sys.rhs, x0, args.steps)
    total = lambda n: n + n // 10  # recorded + transient steps
    per_old, per_new = t_old / total(args.old_steps), t_new / total(args.steps)
    rows.append({"implementation": "tangent (before)", "steps": args.old_steps, "seconds": t_old,
                 "ms_per_step": 1e3 * per_old, "first_call_s": first["tangent"], "lambda": s_old.tolist()})
    rows.append({"implementation": "jacobian (now)", "steps": args.old_steps, "seconds": t_new_short,
                 "ms_per_step": 1e3 * t_new_short / total(args.old_steps), "first_call_s": first["jacobian"],
                 "lambda": s_new_short.tolist()})
    rows.append({"implementation": "jacobian (now)", "steps": args.steps, "seconds": t_new,
                 "ms_per_step": 1e3 * per_new, "first_call_s": first["jacobian"], "lambda": s_new.tolist()})
    extrapolated = per_old * total(args.steps)
    diff = float(np.max(np.abs(s_new_short - s_old) / np.abs(s_old)))

    print(f"Lorenz-63, dt 0.01, B = 1, k = 3, transient = steps // 10, float64, {torch.get_num_threads()} thread")
    print("| implementation | recorded steps | wall s | ms / step | first call s | lambda_1, lambda_2, lambda_3 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lam = ", ".join(f"{v:.4f}" for v in r["lambda"])
        print(f"| {r['implementation']} | {r['steps']} | {r['seconds']:.2f} | {r['ms_per_step']:.3f} | "
              f"{r['first_call_s']:.2f} | {lam} |")
    print(f"| tangent (before), extrapolated | {args.steps} | {extrapolated:.0f} | {1e3 * per_old:.3f} | - | - |")
    print(f"\nspeed-up per step (same run): {per_old / per_new:.1f}x; on the {args.old_steps}-step case "
          f"{t_old / t_new_short:.1f}x; max relative difference of the exponents there: {diff:.1e}; "
          f"lambda_1 over {args.steps} steps: {s_new[0]:.4f} (reference {LORENZ63_LAMBDA1})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "old_extrapolated_s": extrapolated, "speedup_per_step": per_old / per_new,
                       "max_rel_diff": diff}, f, indent=1)


if __name__ == "__main__":
    main()
