"""Does SNS earn its name?  Do-no-harm, rescue and the uncertain regime, several seeds, step budgets.

One command per system and seed trains what it needs under ``--out`` and prints markdown tables
(``--report --seeds-only`` prints every seed stored so far; results are saved after every rollout,
so an interrupted run resumes at the next row):

1. data: ``sns-generate``'s cpu preset of ``--system``: Lorenz-63 (16/4/4 trajectories of 4000
   frames every 0.05), Lorenz-96 (D = 40, F = 8) or two-scale Lorenz-96 observed through its 8
   slow variables (the uncertain regime c 10, h 2, F 20; 16/4/4 x 2000 frames);
2. per training seed, through ``sns-train`` (the ``<system>_cpu`` experiment, batch 256, budgets in
   optimizer steps): a *good* residual-MLP surrogate (``--good-steps``), a *weak* one where
   ``--surrogates`` asks for it (``--weak-steps``: on Lorenz-63 the experiment's default budget, which collapses onto a fixed
   point), and two blind MLP pair denoisers with the same budget (``--denoiser-steps``): the
   paper's cosine schedule and a log-spaced sigma schedule (``log_sigma_schedule``, sigma 1e-3..80),
   S = 100;
3. diagnostics on the valid split: each surrogate's one-step RMSE (normalised units) and the
   level heads' readings of clean pairs and of surrogate proposals;
4. rollouts of ``--steps`` steps from ``4 x (test trajectories)`` initial conditions (evenly spaced
   frames of the ``--ic-split`` trajectories: ``valid`` while choosing, ``test`` for the table)
   of every method on each surrogate, through :func:`sns.rollout.rollout` (blow-up guard 10x
   the data RMS; ``--max-wall`` is a safety cap only);
5. metrics in physical units against the train split: per-coordinate W1 of the invariant measure
   (states after ``--burn`` steps, pooled over initial conditions), W1 of the one-frame increments,
   the autocorrelation error (max over lags <= 40 frames), steps before blow-up, network calls per
   step.  The floor is the ``--ic-split`` trajectories themselves (data length, not rollout length).

Methods: the bare surrogate; the paper's recipe (cosine, estimated levels, unit-step path A);
fixed levels on either schedule; and the log-sigma denoiser with estimated levels and strided
path A (``n_moves`` per leg), alone, with calibrated "leave it" (``calibrate_skip_threshold``) and
with proposal noise sized to the surrogate's error (``calibrate_proposal_sigma``);
``--all-methods`` adds the ablations (unit steps, skip at level 0, coupled levels, ...).
``--guard`` adds estimated levels with a floor from ``NearestStateGuard`` (x_{t-1}'s distance to
the nearest train state; threshold and level table calibrated on the valid split), with and
without proposal noise.
``--baselines`` trains, per seed and with the same budget as each denoiser (``--denoiser-steps``),
ACDM (explicit levels, linear schedule, S = 100), the Thermalizer (blind unconditional denoiser of
the invariant measure, cosine S = 100, classifier CE weight 1; start 6 / stop 4, on each
surrogate) and PDE-Refiner (K = 3), and adds their rows and clean conditioning (x_t generated from
pure noise by the cosine pair denoiser, conditioned on x_{t-1}; S = 100 calls per step); the
surrogate-free rows are listed under the good surrogate.  The
100-call rows (ACDM, clean conditioning) are selected with ``--only`` like every row.

Run: ``python benchmarks/sns_regimes.py --seeds 0 1 2`` (``--system lorenz96_two_scale``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lorenz_baselines import compose, cpu_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train_one(args, data_root: Path, name: str, task: str, seed: int, steps: int, extra: list[str]) -> Path:
    """Train ``task`` for ``steps`` optimizer steps of batch 256 (reused when done); return the export."""
    from sns.cli.train import train

    run = args.out / "runs" / f"seed{seed}" / name
    file = run / f"{task}.safetensors"
    if file.exists():
        return file
    overrides = [f"experiment={args.system}_cpu", f"task={task}", f"paths.data_dir={data_root}",
                 f"paths.run_dir={run}", f"paths.output_dir={run}", "torch_threads=1", f"seed={seed}",
                 "trainer.max_epochs=100000", f"trainer.max_steps={steps}", "trainer.limit_train_batches=500",
                 "data.batch_size=256", "trainer.limit_val_batches=2", "logger=csv", *extra]
    if task == "denoiser":
        overrides.append("model.denoiser.module.val_rollout_steps=0")
    t0 = time.perf_counter()
    train(compose("train", overrides))
    print(f"trained seed {seed} {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return file


def methods(sur, den_cos, sch_cos, den_log, sch_log, n_moves: int, k_log: tuple[int, int],
            sigma_p: float, full: bool = False, guard=None, clamp: float | None = None) -> dict[str, object]:
    """Every method on one surrogate (normalised units throughout); ``k_log``: the log-sigma
    denoiser's calibrated leave-it thresholds (its heads' 90% reading of clean valid pairs);
    ``sigma_p``: sqrt(2) x the surrogate's one-step RMSE on the valid split (``calibrate_proposal_sigma``).  ``full`` adds the ablations
    (unit steps on the log-sigma schedule, a fourth fixed level, skip at level 0, coupled levels)."""
    from sns.baselines import GaussianApproximation
    from sns.refine import SNSRefiner

    log = {"denoiser": den_log, "schedule": sch_log, "surrogate": sur, "path": "A"}
    out = {
        "bare surrogate": GaussianApproximation(sur),
        "paper: cosine, estimated, unit steps": SNSRefiner(den_cos, sch_cos, sur, path="A"),
        "cosine, fixed (0,0)": SNSRefiner(den_cos, sch_cos, sur, path="A", fixed_levels=(0, 0)),
    }
    if full:  # the paper's QG recipe adds proposal noise; here sized to the surrogate's measured error
        out["cosine, estimated, unit steps, proposal noise sqrt(2) RMSE"] = SNSRefiner(
            den_cos, sch_cos, sur, path="A", proposal_sigma=sigma_p)
    for i in (0, 20, 40) + ((60,) if full else ()):  # one move per leg: 2 calls (from low levels a
        sigma = float(((1 - sch_log.abar[i]) / sch_log.abar[i]).sqrt())  # stride loses < 0.5%, test_oracle)
        out[f"log-sigma, fixed ({i},{i}) (sigma {sigma:.2g}), 1 move per leg"] = SNSRefiner(
            **log, fixed_levels=(i, i), n_moves=1)
    if full:
        out["log-sigma, estimated, unit steps"] = SNSRefiner(**log)
    out[f"log-sigma, estimated, n_moves {n_moves}"] = SNSRefiner(**log, n_moves=n_moves)
    out[f"log-sigma, estimated, n_moves {n_moves}, calibrated leave-it"] = SNSRefiner(
        **log, n_moves=n_moves, skip_threshold=k_log)
    if full:
        out[f"log-sigma, estimated, n_moves {n_moves}, leave-it at 0"] = SNSRefiner(
            **log, n_moves=n_moves, skip_threshold=0)
        out[f"log-sigma, estimated, n_moves {n_moves}, coupled"] = SNSRefiner(**log, n_moves=n_moves, couple_levels=True)
        out[f"log-sigma, estimated, n_moves {n_moves}, coupled, calibrated leave-it"] = SNSRefiner(
            **log, n_moves=n_moves, couple_levels=True, skip_threshold=k_log)
    # the proposal as a noised sample of the truth: N(F(x), sigma_p^2) with sigma_p^2 = 2 RMSE^2 is the
    # law of x_t + sigma e for sigma ~ RMSE when F's error is ~ RMSE; the heads then read that level
    out[f"log-sigma, estimated, n_moves {n_moves}, proposal noise sqrt(2) RMSE"] = SNSRefiner(
        **log, n_moves=n_moves, proposal_sigma=sigma_p)
    if guard is not None:  # a floor on both levels from x_{t-1}'s distance to the train states
        out[f"log-sigma, estimated, n_moves {n_moves}, state guard"] = SNSRefiner(
            **log, n_moves=n_moves, state_guard=guard)
        out[f"log-sigma, estimated, n_moves {n_moves}, proposal noise sqrt(2) RMSE, state guard"] = SNSRefiner(
            **log, n_moves=n_moves, proposal_sigma=sigma_p, state_guard=guard)
        # the guard can ask for the top of the schedule, where x0_hat amplifies the network's error by
        # sqrt(1 + sigma^2) (up to 80x): the documented bound, 1.5x the largest |state| of the train split
        out[f"log-sigma, estimated, n_moves {n_moves}, state guard, clamp"] = SNSRefiner(
            **log, n_moves=n_moves, state_guard=guard, clamp=clamp)
    return out


def baselines(sur, files: dict[str, Path], surrogate_free: bool, therm_start: int = 6,
              therm_stop: int = 4, clamp: float | None = None) -> dict[str, object]:
    """The paper's baselines, each at its paper setting (see the module docstring): the Thermalizer
    on the surrogate ``sur``, and with ``surrogate_free`` the methods that use no surrogate.
    ``clamp`` bounds ``x0_hat`` of clean conditioning (generation from the top of the cosine
    schedule, where ``x0_hat`` multiplies the network's error by up to ``1/sqrt(abar_S)``; DDPM's
    sampler clips ``x0_hat`` to the data range the same way); unclamped, it blew up at the first
    step on two-scale Lorenz-96."""
    from sns.export import load_model, load_schedule
    from sns.methods import build_stepper

    therm, tx = load_model(files["thermalizer"])
    out: dict[str, object] = {f"Thermalizer {therm_start}/{therm_stop}": build_stepper(
        "thermalizer", therm, tx, sur, {"start": therm_start, "stop": therm_stop, "limit": None})[0]}
    if surrogate_free:
        acdm, ax = load_model(files["acdm"])
        pde, px = load_model(files["pde_refiner"])
        den_cos, xc = load_model(files["cos"])
        out["PDE-Refiner (K = 3)"] = build_stepper("pde_refiner", pde, px)[0]
        out[f"ACDM (S = {load_schedule(ax).n_levels}, no surrogate)"] = build_stepper("acdm", acdm, ax)[0]
        out["clean conditioning (cosine, generation, S = 100)"] = build_stepper("clean_conditioning", den_cos, xc)[0]
        if clamp is not None:
            out["clean conditioning (cosine, generation, S = 100), clamp"] = build_stepper(
                "clean_conditioning", den_cos, xc, settings={"clamp": clamp})[0]
    return out


@torch.no_grad()
def diagnostics(sur, den, sch, pairs: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """One-step RMSE of ``sur`` and the heads' median readings of clean pairs and of its proposals."""
    from sns.refine import estimate_levels

    xp, xn = pairs
    prop = sur(xp)
    rmse = float(((prop - xn) ** 2).mean().sqrt())
    i2c, i1c = estimate_levels(den, xp, xn)
    i2p, i1p = estimate_levels(den, xp, prop)
    q = lambda v: float(v.double().median())
    return {"rmse": rmse, "clean_i2": q(i2c), "clean_i1": q(i1c), "prop_i1": q(i1p), "prop_i2": q(i2p),
            "prop_i1_p90": float(i1p.double().quantile(0.9))}


def stored_results(out: Path, split: str, steps: int) -> tuple[dict, dict, list[int]]:
    """``(results, diag, seeds)`` of every ``results_<split>_<steps>_seed<k>.json`` under ``out``
    (seeds may have run in separate processes): each field's values concatenated over seeds."""
    results: dict[str, dict[str, list]] = {}
    diag: dict[str, list] = {}
    seeds = []
    for f in sorted(out.glob(f"results_{split}_{steps}_seed*.json")):
        seeds.append(int(f.stem.rsplit("seed", 1)[1]))
        d = json.loads(f.read_text())
        for k, r in d["results"].items():
            acc = results.setdefault(k, {})
            for field, v in r.items():
                acc.setdefault(field, []).extend(v)
        for k, v in d["diag"].items():
            diag.setdefault(k, []).extend(v)
    return results, diag, seeds


def mean_spread(v, f: str = "{:.2f}") -> str:
    """``mean ± std`` over seeds (NaN-aware), or the single value."""
    v = np.asarray(v, dtype=np.float64)
    return f.format(np.nanmean(v)) + " ± " + f.format(np.nanstd(v)) if len(v) > 1 else f.format(v[0])


def print_diagnostics(diag: dict[str, list]) -> None:
    """The heads' readings table (means over seeds) of :func:`diagnostics`-like records."""
    print("| surrogate / denoiser | one-step RMSE | clean pair (i2, i1), median | clean pair 90% (k2, k1) "
          "| proposal (i2, i1), median | proposal i1 90% |")
    print("|---|---|---|---|---|---|")
    for k, ds in diag.items():
        g = lambda key, ds=ds: np.mean([d[key] for d in ds])
        print(f"| {k} | {g('rmse'):.4f} | ({g('clean_i2'):.0f}, {g('clean_i1'):.0f}) | ({g('k2'):.0f}, {g('k1'):.0f}) "
              f"| ({g('prop_i2'):.0f}, {g('prop_i1'):.0f}) | {g('prop_i1_p90'):.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="lorenz63", choices=["lorenz63", "lorenz96", "lorenz96_two_scale"])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-sns-regimes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--good-steps", type=int, default=4000)
    p.add_argument("--weak-steps", type=int, default=1000)
    p.add_argument("--denoiser-steps", type=int, default=4000)
    p.add_argument("--sigma-min", type=float, default=1e-3)
    p.add_argument("--n-moves", type=int, default=2)
    p.add_argument("--ic-split", default="test", choices=["valid", "test"])
    p.add_argument("--ics-per-traj", type=int, default=4, help="initial conditions per trajectory (evenly spaced)")
    p.add_argument("--burn", type=int, default=100)
    p.add_argument("--max-lag", type=int, default=40)
    p.add_argument("--max-wall", type=float, default=900.0, help="safety cap per rollout (s); the budget is --steps")
    p.add_argument("--only", nargs="*", help="substrings of the method names to run")
    p.add_argument("--surrogates", nargs="*", default=["good", "weak"])
    p.add_argument("--all-methods", action="store_true", help="add the ablations (see methods())")
    p.add_argument("--guard", action="store_true", help="add the rows with NearestStateGuard (calibrated on the "
                   "train states and the valid split)")
    p.add_argument("--baselines", action="store_true", help="train and add ACDM, Thermalizer, PDE-Refiner and "
                   "clean conditioning (see the module docstring)")
    p.add_argument("--report", action="store_true", help="print the table of every seed stored so far")
    p.add_argument("--seeds-only", action="store_true", help="with --report: run nothing, only report")
    args = p.parse_args()
    args.out = args.out / args.system
    from sns.data.io import open_dataset
    from sns.export import load_model, load_schedule
    from sns.metrics import autocorrelation, wasserstein1_per_coordinate
    from sns.refine import NearestStateGuard, calibrate_proposal_sigma, calibrate_skip_threshold
    from sns.rollout import rollout, state_rms

    data_root, data_dir = cpu_data(args.out, args.system)
    ics_ds, train_ds, valid_ds = (open_dataset(data_dir, s) for s in (args.ic_split, "train", "valid"))
    var = next(iter(train_ds.data_vars))
    offset = np.asarray(train_ds.attrs["norm_offset"], dtype=np.float64)
    scale = np.asarray(train_ds.attrs["norm_scale"], dtype=np.float64)
    tx = ics_ds[var].values
    ref = train_ds[var].values.reshape(-1, tx.shape[-1])
    norm = lambda a: torch.from_numpy(((a - offset) / scale).astype(np.float32))
    x0 = norm(np.concatenate([tx[:, k * tx.shape[1] // args.ics_per_traj] for k in range(args.ics_per_traj)]))
    vx = valid_ds[var].values
    pairs = (norm(vx[:, :-1].reshape(-1, vx.shape[-1])), norm(vx[:, 1:].reshape(-1, vx.shape[-1])))
    data_rms = float(state_rms(norm(ref)).mean())
    dt = float(train_ds.attrs["dt"]) * int(train_ds.attrs.get("save_every", 1))

    def acf(x):
        return np.nanmean(autocorrelation(x, args.max_lag, time_axis=1), axis=-1)

    acf_ref = acf(train_ds[var].values)
    D = tx.shape[-1]
    ref_inc = np.diff(train_ds[var].values, axis=1).reshape(-1)

    def w1_increments(x):  # W1 of the one-frame increments, pooled over coordinates (physical units)
        from scipy.stats import wasserstein_distance

        rng = np.random.default_rng(0)
        inc = np.diff(x, axis=1).reshape(-1)
        return float(wasserstein_distance(rng.choice(inc, min(len(inc), 200_000), replace=False),
                                          rng.choice(ref_inc, min(len(ref_inc), 200_000), replace=False)))

    floor = np.asarray(wasserstein1_per_coordinate(tx[:, args.burn:].reshape(-1, tx.shape[-1]), ref))
    floor_acf = float(np.max(np.abs(acf(tx) - acf_ref)))
    floor_inc = w1_increments(tx[:, args.burn:])

    results: dict[str, dict[str, list]] = {}
    diag: dict[str, list] = {}
    guard = None
    log_kw = f"diffusion.kwargs={{sigma_min:{args.sigma_min},sigma_max:80.0}}"
    for seed in ([] if args.seeds_only else args.seeds):
        files = {
            "good": train_one(args, data_root, "surrogate_good", "surrogate", seed, args.good_steps, []),
            "cos": train_one(args, data_root, "denoiser_cosine", "denoiser", seed, args.denoiser_steps,
                             ["diffusion=cosine"]),
            "log": train_one(args, data_root, f"denoiser_log_sigma{args.sigma_min:g}", "denoiser", seed,
                             args.denoiser_steps, ["diffusion=log_sigma", log_kw]),
        }
        if "weak" in args.surrogates:
            files["weak"] = train_one(args, data_root, "surrogate_weak", "surrogate", seed, args.weak_steps, [])
        if args.baselines:
            for task in ("acdm", "thermalizer", "pde_refiner"):
                files[task] = train_one(args, data_root, task, task, seed, args.denoiser_steps,
                                        ["model.acdm.module.n_levels=100"])
        seed_file = args.out / f"results_{args.ic_split}_{args.steps}_seed{seed}.json"
        seed_results = json.loads(seed_file.read_text())["results"] if seed_file.exists() else {}
        (den_cos, xc), (den_log, xl) = load_model(files["cos"]), load_model(files["log"])
        sch_cos, sch_log = load_schedule(xc), load_schedule(xl)
        k_log = calibrate_skip_threshold(den_log, *pairs, quantile=0.9)
        if args.guard and guard is None:  # the log-sigma schedule is the same for every seed
            t0 = time.perf_counter()
            guard = NearestStateGuard.calibrate(sch_log, norm(ref), norm(vx.reshape(-1, vx.shape[-1])))
            print(f"state guard: threshold {guard.threshold:.4f} (valid 99.9% nearest-train distance), "
                  f"calibrated in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for which in args.surrogates:
            sur, _ = load_model(files[which])
            for name, den, sch in (("cosine", den_cos, sch_cos), ("log-sigma", den_log, sch_log)):
                d = diagnostics(sur, den, sch, pairs)
                d["k2"], d["k1"] = calibrate_skip_threshold(den, *pairs, quantile=0.9)
                diag.setdefault(f"{which} / {name}", []).append(d)
            sigma_p = calibrate_proposal_sigma(sur, *pairs)
            todo = methods(sur, den_cos, sch_cos, den_log, sch_log, args.n_moves, k_log, sigma_p, args.all_methods,
                           guard, clamp=1.5 * float(norm(ref).abs().max()))
            if args.baselines:  # the surrogate-free ones listed under the good surrogate
                todo.update(baselines(sur, files, surrogate_free=which == "good",
                                      clamp=1.5 * float(norm(ref).abs().max())))
            for name, step in todo.items():
                if args.only and not any(s in name for s in args.only):
                    continue
                if f"{which} | {name}" in seed_results:  # done by an earlier (interrupted) run of this seed
                    r = results.setdefault(f"{which} | {name}", {f: [] for f in seed_results[f"{which} | {name}"]})
                    for f, v in seed_results[f"{which} | {name}"].items():
                        r[f].extend(v)
                    continue
                t0 = time.perf_counter()
                res = rollout(step, x0, args.steps, store=None, dt=dt, seed=seed, data_rms=data_rms,
                              blowup_factor=10.0, max_wall_time=args.max_wall, progress=False)
                states = res.states.double().numpy() * scale + offset  # (B, T, D) physical
                stable = res.stop_step - 1 if res.stop_step is not None else res.steps_done
                pooled = states[:, args.burn + 1:].reshape(-1, states.shape[-1])
                pooled = pooled[np.isfinite(pooled).all(-1)]
                ok = res.status == "completed"
                w = np.asarray(wasserstein1_per_coordinate(pooled, ref)) if ok else np.full(D, np.nan)
                aerr = float(np.max(np.abs(acf(states[:, args.burn + 1:]) - acf_ref))) if ok else float("nan")
                inc = w1_increments(states[:, args.burn + 1:]) if ok else float("nan")
                r = results.setdefault(f"{which} | {name}", {"w1": [], "acf": [], "stable": [], "calls": [],
                                                             "status": [], "inc": []})
                r["w1"].append(w.tolist()), r["acf"].append(aerr), r["stable"].append(stable), r["inc"].append(inc)
                r["calls"].append(res.calls_mean), r["status"].append(res.status)
                print(f"seed {seed} {which} | {name}: {res.status} {stable} steps, W1 {np.round(w, 3)}, "
                      f"calls {float(res.calls_mean or 'nan'):.2f}, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                seed_results[f"{which} | {name}"] = {f: v[-1:] for f, v in r.items()}
                seed_file.write_text(json.dumps({"results": seed_results,  # after every rollout
                                                 "diag": {k: v[-1:] for k, v in diag.items()}}))
    if args.report:  # every seed run so far for this split and length (seeds may run in separate processes)
        results, diag, args.seeds = stored_results(args.out, args.ic_split, args.steps)
    ms = mean_spread

    print(f"\n{args.system}, {args.steps} steps from {x0.shape[0]} {args.ic_split} initial conditions, seeds "
          f"{args.seeds}; budgets (optimizer steps, batch 256): good surrogate {args.good_steps}, weak "
          f"{args.weak_steps}, each denoiser {args.denoiser_steps}; log-sigma {args.sigma_min:g}..80, S = 100.")
    fv = (" / ".join(f"{v:.3f}" for v in floor) if D <= 3 else f"mean {floor.mean():.3f}, max {floor.max():.3f}")
    print(f"floor ({args.ic_split} vs train, {tx.shape[1]}-frame trajectories): W1 {fv}, increment W1 "
          f"{floor_inc:.4f}, ACF err {floor_acf:.3f}\n")
    print_diagnostics(diag)
    cols = ["W1 x", "W1 y", "W1 z"] if D == 3 else ["W1 mean over k", "W1 max over k"]
    print("\n| surrogate | method | completed | stable steps (min) | calls/step | " + " | ".join(cols)
          + " | increment W1 | ACF err |")
    print("|---" * (7 + len(cols)) + "|")
    for k, r in results.items():
        which, name = k.split(" | ")
        w = np.asarray(r["w1"], dtype=np.float64)
        done = sum(s == "completed" for s in r["status"])
        ws = [w[:, c] for c in range(D)] if D == 3 else [w.mean(1), w.max(1)]
        print(f"| {which} | {name} | {done}/{len(r['status'])} | {min(r['stable'])} | {ms(r['calls'])} | "
              + " | ".join(ms(v, "{:.3f}") for v in ws) + f" | {ms(r['inc'], '{:.4f}')} | {ms(r['acf'], '{:.3f}')} |")


if __name__ == "__main__":
    main()
