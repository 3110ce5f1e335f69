"""Neural ODE on Lorenz-63 with and without divergence regularization (seed 000's claims).

One command::

    python benchmarks/divergence_lorenz63.py                 # 3 seeds x 2 variants, ~10-15 min on 2 cores
    python benchmarks/divergence_lorenz63.py --seeds 0 --steps 300   # smoke run

What it does (everything in memory, no files):

* data: Lorenz-63 (sigma 10, rho 28, beta 8/3), RK4 dt 0.01, frames every 0.05 MTU after a
  20 MTU spin-up; train 16 trajectories x 1000 frames, test 8 x 2000 frames (other seeds);
  normalised per coordinate with the train mean / std (the trace of the Jacobian is invariant
  under that diagonal rescaling, so divergences are in 1/MTU either way);
* model: :class:`sns.surrogates.neural_ode.NeuralODE` (3 hidden layers of 128, tanh,
  autonomous, dopri5 rtol 1e-4 atol 1e-5), :class:`sns.training.neural_ode.NeuralODEModule`,
  trajectory MSE over windows of 8 intervals (0.4 MTU), Adam lr 1e-3, batch 128;
* the two variants differ only in the loss term: ``div`` adds
  :class:`sns.losses.DivergenceRegularizer` (target -(sigma + 1 + beta) = -13.667, exact trace,
  weight ``--weight``, 0 in epoch 0, ramped over epochs 1-2; an epoch is 124 steps).  Same
  seed -> same initial weights and the same batches in both variants; equal budget = the same
  number of optimizer steps (training wall time is reported, not equalised);
* generation (seed 000 step 3): ``--traces`` initial conditions drawn from the test frames,
  integrated ``--trace-len`` intervals (100 MTU by default) with dopri5 in chunks of 100.

Metrics (``sns.metrics.chaos``; "truth" = the same computation on test trajectories):

* div err: mean |div f_theta(x) + 13.667| over 2000 test frames (the seed's "mean absolute
  deviation of local divergence"), 1/MTU;
* D2: Grassberger-Procaccia correlation dimension of the generated points (first 10 MTU of
  every trace dropped), physical units;
* lambda_1: largest Lyapunov exponent of the learned field by QR (Benettin), 1/MTU;
* PSD dist: mean |log10 PSD_model - log10 PSD_truth| of the x coordinate over 0 < f <= 2
  (cycles per MTU), Welch estimate averaged over traces;
* escaped: fraction of traces that *leave the attractor*: a non-finite state, a solver
  failure, or a state outside the test data's bounding box enlarged by 25% of its range on
  each side in any coordinate, at any time;
* MSE@8: trajectory MSE over held-out 8-interval windows (normalised units);
* train s: wall time of training (same number of steps), NFE/step: mean vector-field
  evaluations per training step (forward solve).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _divergence_common as dc

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
DIV_TRUE = -(SIGMA + 1.0 + BETA)
DT_SOLVER, SAVE_EVERY = 0.01, 5
DT = DT_SOLVER * SAVE_EVERY
WINDOW = 8


def make_data(n_traj: int, n_frames: int, seed: int) -> np.ndarray:
    """``(n_traj, n_frames, 3)`` float64 frames every ``DT`` after a 20 MTU spin-up."""
    from sns.systems.lorenz import Lorenz63

    s = Lorenz63(SIGMA, RHO, BETA, dt=DT_SOLVER)
    x = s.step(s.initial_condition(n_traj, torch.Generator().manual_seed(seed)), 2000)
    return dc.sample_frames(s, x, n_frames, SAVE_EVERY)


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one variant for one seed; return the state dict and timings."""
    from sns.losses import DivergenceRegularizer

    terms = []
    if job["variant"] == "div":
        terms = [DivergenceRegularizer(DIV_TRUE, weight=job["weight"], start=1, ramp=2, by="epoch",
                                       method="exact", field="vector_field", max_points=512)]
    net = {"dim": 3, "hidden": 128, "depth": 3, "activation": "tanh", "dt": DT, "rtol": 1e-4, "atol": 1e-5}
    result, trainer = dc.fit_neural_ode(job, net, terms, WINDOW)
    return {**result, "steps": trainer.global_step}


def cache_key(j: dict[str, Any]) -> str:
    return f"lorenz63-{j['variant']}-seed{j['seed']}-steps{j['steps']}-w{j['weight']:g}.pt"


def build_model(state: dict[str, torch.Tensor]) -> Any:
    from sns.surrogates.neural_ode import NeuralODE

    m = NeuralODE(3, hidden=128, depth=3, activation="tanh", dt=DT, rtol=1e-4, atol=1e-5)
    m.load_state_dict(state)
    return m.eval()


def psd_distance(traces: np.ndarray, ref: np.ndarray, f_max: float = 2.0) -> float:
    from sns.metrics.chaos import power_spectral_density

    f, p = power_spectral_density(traces[..., 0], DT, axis=-1)  # (traces, time): spectrum over time
    _, pr = power_spectral_density(ref[..., 0], DT, axis=-1)
    p, pr = np.asarray(p), np.asarray(pr)
    p = p.mean(0) if p.ndim > 1 else p
    pr = pr.mean(0) if pr.ndim > 1 else pr
    sel = (np.asarray(f) > 0) & (np.asarray(f) <= f_max)
    return float(np.mean(np.abs(np.log10(p[sel]) - np.log10(pr[sel]))))


def evaluate(model: Any, rhs_norm: Any, test_n: np.ndarray, mu: np.ndarray, sd: np.ndarray, args: Any,
             ref: dict[str, Any]) -> dict[str, float]:
    from sns.losses import divergence
    from sns.metrics.chaos import correlation_dimension, largest_lyapunov_qr

    rng = np.random.default_rng(1234)
    pts = torch.from_numpy(test_n.reshape(-1, 3)[rng.choice(test_n.shape[0] * test_n.shape[1], 2000, replace=False)])
    div = divergence(model.vector_field, pts.float(), create_graph=False).detach().numpy()
    out = {"div_err": float(np.mean(np.abs(div - DIV_TRUE))), "div_mean": float(div.mean())}
    # held-out 8-interval trajectory MSE
    w = torch.from_numpy(ref["test_windows"]).float()
    with torch.no_grad():
        pred = model.trajectory(w[:, 0], WINDOW)[:, 1:]
    out["mse8"] = float(((pred - w[:, 1:]) ** 2).mean())
    # synthetic traces from initial conditions drawn from the test frames
    idx = rng.choice(test_n.shape[0] * test_n.shape[1], args.traces, replace=False)
    x0 = torch.from_numpy(test_n.reshape(-1, 3)[idx]).float()
    t0 = time.perf_counter()
    tr_n, failed = dc.generate(model, x0, args.trace_len)
    out["gen_s"] = time.perf_counter() - t0
    tr = tr_n * sd + mu
    esc = dc.escaped(tr, ref["lo"], ref["hi"]) | failed
    out["escaped"] = float(esc.mean())
    keep = tr[~esc, int(10 / DT):]
    if len(keep):
        out["d2"] = float(correlation_dimension(keep.reshape(-1, 3)[:: args.d2_thin]))
        out["psd"] = psd_distance(keep, ref["traces"])
    else:
        out["d2"], out["psd"] = float("nan"), float("nan")
    out["lyap"] = float(largest_lyapunov_qr(rhs_norm, test_n[0, 100], DT, args.lyap_steps))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per model (equal budget)")
    p.add_argument("--weight", type=float, default=1e-3, help="final weight lambda of the divergence term")
    p.add_argument("--traces", type=int, default=32)
    p.add_argument("--trace-len", type=int, default=2000, help="intervals of dt = 0.05 MTU per generated trace")
    p.add_argument("--lyap-steps", type=int, default=4000, help="QR steps of dt = 0.05 for lambda_1")
    p.add_argument("--d2-thin", type=int, default=8, help="keep every n-th generated point for D2")
    p.add_argument("--jobs", type=int, default=2, help="training processes (1 torch thread each)")
    p.add_argument("--cache", default=None, help="directory: save trained models there, reuse them if present")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    train = make_data(16, 1000, seed=0)
    test = make_data(8, 2000, seed=1)
    mu, sd, train_n, test_n = dc.standardise(train, test)
    train_w = dc.windows(train_n, WINDOW + 1, dtype=np.float32)
    ref = {"lo": test.reshape(-1, 3).min(0), "hi": test.reshape(-1, 3).max(0),
           "test_windows": dc.windows(test_n, WINDOW + 1, stride=20),
           "traces": test[:, int(10 / DT):]}
    jobs = [{"seed": s, "variant": v, "steps": args.steps, "weight": args.weight, "windows": train_w}
            for s in args.seeds for v in ("plain", "div")]
    results = dc.train_all(jobs, args, train_one, cache_key)
    from sns.metrics.chaos import correlation_dimension, largest_lyapunov_qr
    from sns.systems.lorenz import Lorenz63

    # truth row: the same metrics on the true system
    sysm = Lorenz63(SIGMA, RHO, BETA, dt=DT_SOLVER)
    truth = {
        "div_err": 0.0, "div_mean": DIV_TRUE, "mse8": 0.0, "escaped": 0.0,
        "d2": float(correlation_dimension(ref["traces"].reshape(-1, 3)[:: args.d2_thin])),
        "psd": psd_distance(make_data(8, 2000, seed=2)[:, int(10 / DT):], ref["traces"]),
        "lyap": float(largest_lyapunov_qr(sysm.rhs, test[0, 100], DT, args.lyap_steps)),
    }
    rows = []
    for r in results:
        model = build_model(r["state"])

        def rhs_norm(x: torch.Tensor, model: Any = model) -> torch.Tensor:
            """The learned field in normalised coordinates (Lyapunov exponents do not depend on
            the diagonal rescaling; time stays in MTU)."""
            return model.vector_field(x.float()).to(x.dtype)

        m = evaluate(model, rhs_norm, test_n, mu, sd, args, ref)
        rows.append({**r, **m})
    print_tables(rows, truth, args, time.perf_counter() - t_start, len(train_w))


def print_tables(rows: list[dict], truth: dict, args: Any, total_s: float, n_windows: int) -> None:
    cols = [("div err", "div_err"), ("div mean", "div_mean"), ("D2", "d2"), ("lambda_1", "lyap"),
            ("PSD dist", "psd"), ("escaped", "escaped"), ("MSE@8", "mse8"), ("train s", "train_s"),
            ("NFE/step", "nfe_per_step")]
    print(f"Lorenz-63 Neural ODE, seeds {args.seeds}, {args.steps} steps of batch 128 each "
          f"({n_windows} train windows), weight {args.weight:g}, {args.traces} traces x {args.trace_len * DT:g} MTU; "
          f"mean ± std over seeds; total {total_s / 60:.1f} min\n")
    print("| variant | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    print("| truth | " + " | ".join(f"{truth[k]:.3g}" if k in truth else "" for _, k in cols) + " |")
    for variant in ("plain", "div"):
        sel = [r for r in rows if r["variant"] == variant]
        print(f"| {variant} | " + " | ".join(dc.fmt([r[k] for r in sel]) for _, k in cols) + " |")
    print("\nPer seed:\n")
    print("| seed | variant | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for r in sorted(rows, key=lambda r: (r["seed"], r["variant"] != "plain")):
        print(f"| {r['seed']} | {r['variant']} | " + " | ".join(f"{r[k]:.3g}" for _, k in cols) + " |")


if __name__ == "__main__":
    main()
