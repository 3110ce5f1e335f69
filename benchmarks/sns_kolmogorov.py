"""Does SNS earn its name on a field system?  The Kolmogorov cpu preset, several seeds, step budgets.

Issue 14's regime / do-no-harm table for Kolmogorov flow, with the recipe that was fixed on the
Lorenz systems *before* this benchmark existed (no choice below is made on Kolmogorov data, let
alone its test split): a blind pair denoiser on the log-spaced sigma schedule (1e-3..80, S = 100),
estimated levels on strided path A with ``n_moves = 2`` and proposal noise sqrt(2) x the
surrogate's one-step RMSE on the valid split (``calibrate_proposal_sigma``); against the bare
surrogate and fixed levels of the same denoiser (one move per leg).

1. data: ``sns-generate``'s cpu preset (64^2 solver truncated to 32^2, Re 1000, frames every 0.1,
   16 / 4 / 4 trajectories x 600 frames);
2. per training seed, through ``sns-train`` (``experiment=kolmogorov_cpu``, batch 32, budgets in
   optimizer steps): the residual U-Net surrogate of the preset (``conserve_mean``,
   ``--surrogate-steps``) and the log-sigma pair denoiser (``--denoiser-steps``; the small pair
   U-Net of ``benchmarks/quality.py``, 0.21M parameters, so that the steps fit this machine);
3. diagnostics on the valid split: the surrogate's one-step RMSE and the heads' readings;
4. rollouts of ``--steps`` steps from frame 0 of the 4 test trajectories (``--ic-split``);
5. metrics in physical units against the train split (16 x 600 frames): the relative error of the
   time-mean kinetic-energy spectrum per shell (shells 1..N/2-1, states after ``--burn`` steps;
   also over the last fifth of the rollout, which shows drift), the enstrophy ratio, and calls
   per step.  The floor is the ``--ic-split`` trajectories themselves against the train split.

Variance-corrected rows (issue 14, calibrated on the valid split before any test rollout): a
strided posterior move puts the denoiser's posterior mean where ``x0`` should be, which lacks the
small-scale spread of ``x_t`` given ``x_{t-1}``.  ``fixed (0, i*), 1 move, variance-corrected``
adds it back per Fourier mode from the denoiser's own per-level x0 error table
(``ModeVariance.from_denoiser`` on 256 valid pairs); ``i*`` is the level whose sigma is nearest
the surrogate's valid one-step RMSE (a rule, not a search).  Its control is the bare surrogate
plus Gaussian noise coloured like its valid residuals (``GaussianApproximation(noise=...)``).
Those refined rows are wrapped in ``ConserveMean`` (the flow conserves the spatial mean; the
denoiser does not).  ``one_step_spectrum`` (diagnostic, valid pairs) shows one step's
small-scale energy for the first four steppers.  Run them with
``--only "=bare surrogate" "residual noise" "ConserveMean"``.

Results are saved after every rollout (``results_<split>_<steps>_seed<k>.json`` under
``--out/kolmogorov/surrogate<S>_denoiser<D>``, one folder per pair of training budgets), so
an interrupted run resumes at the next row; ``--report --seeds-only`` prints every seed stored.

Run: ``python benchmarks/sns_kolmogorov.py --seeds 0 1 2`` (on two cores, train the two models of
each seed beside each other first: ``--train-only surrogate`` and ``--train-only denoiser`` in two
processes, then the plain command, which reuses them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lorenz_baselines import compose, cpu_data
from quality import SMALL_PAIR
from sns_regimes import mean_spread, print_diagnostics, stored_results

REPO = Path(__file__).resolve().parents[1]
FIXED = (40, 20, 0)


def train_one(args, data_root: Path, name: str, task: str, seed: int, steps: int, extra: list[str]) -> Path:
    """Train ``task`` for ``steps`` optimizer steps of batch 32 (reused when done); return the export."""
    from sns.cli.train import train

    run = args.out / "runs" / f"seed{seed}" / f"{name}_{steps}steps"  # a budget is part of a model's name
    file = run / f"{task}.safetensors"
    if file.exists():
        return file
    overrides = ["experiment=kolmogorov_cpu", f"task={task}", f"paths.data_dir={data_root}",
                 f"paths.run_dir={run}", f"paths.output_dir={run}", "torch_threads=1", f"seed={seed}",
                 "trainer.max_epochs=100000", f"trainer.max_steps={steps}", "trainer.max_time=null",
                 "trainer.limit_train_batches=100", "data.batch_size=32", "trainer.limit_val_batches=2",
                 "logger=csv", *extra]
    t0 = time.perf_counter()
    train(compose("train", overrides))
    print(f"trained seed {seed} {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return file


def level_near(sch, sigma: float) -> int:
    """The table level whose noise std ``sqrt((1 - abar) / abar)`` (normalised units) is nearest
    ``sigma`` (the calibrated fixed level: sigma ~ the surrogate's valid one-step RMSE)."""
    sig = ((1 - sch.abar) / sch.abar).sqrt()
    return int((sig - sigma).abs().argmin())


def methods(sur, den, sch, n_moves: int, sigma_p: float, cal: dict | None = None) -> dict[str, object]:
    """The bare surrogate, the fixed recipe, and fixed levels of the log-sigma denoiser (the order
    in which they run: the rows that matter most first).

    ``cal`` (calibrated on the valid split, see :func:`calibrations`) adds the rows of the
    variance-corrected refiner and of its control: ``residual`` (the surrogate's residual
    spectrum), ``table`` (the denoiser's per-level x0 error spectrum), ``level`` (the fixed level
    whose sigma is nearest the surrogate's valid one-step RMSE).  Every refined row of that group
    is wrapped in :class:`~sns.constraints.ConserveMean`: the denoiser does not conserve the
    spatial mean (exactly conserved by the flow), and its mean random-walks over a rollout."""
    from sns.baselines import GaussianApproximation
    from sns.constraints import ConserveMean
    from sns.refine import SNSRefiner

    kw = {"denoiser": den, "schedule": sch, "surrogate": sur, "path": "A"}
    out: dict[str, object] = {"bare surrogate": GaussianApproximation(sur)}
    if cal is not None:
        i = cal["level"]
        out["bare surrogate + residual noise (valid spectrum)"] = GaussianApproximation(sur, noise=cal["residual"])
        out["log-sigma, fixed (0, i*), 1 move, variance-corrected (valid table), + ConserveMean"] = ConserveMean(
            SNSRefiner(**kw, fixed_levels=(0, i), n_moves=1, x0_var=cal["table"]))
        out["log-sigma, fixed (0, i*), 1 move, + ConserveMean"] = ConserveMean(
            SNSRefiner(**kw, fixed_levels=(0, i), n_moves=1))
        out[f"log-sigma, estimated, n_moves {n_moves}, proposal noise sqrt(2) RMSE, variance-corrected (valid "
            "table), + ConserveMean"] = ConserveMean(
            SNSRefiner(**kw, n_moves=n_moves, proposal_sigma=sigma_p, x0_var=cal["table"]))
        out[f"log-sigma, estimated, n_moves {n_moves}, proposal noise sqrt(2) RMSE, + ConserveMean"] = ConserveMean(
            SNSRefiner(**kw, n_moves=n_moves, proposal_sigma=sigma_p))
        out["log-sigma, fixed (40,40), 1 move per leg, + ConserveMean"] = ConserveMean(
            SNSRefiner(**kw, fixed_levels=(40, 40), n_moves=1))
    out[f"log-sigma, estimated, n_moves {n_moves}, proposal noise sqrt(2) RMSE"] = SNSRefiner(
        **kw, n_moves=n_moves, proposal_sigma=sigma_p)
    # without proposal noise: the heads read a valid proposal at (i2, i1) ~ (41, 0) (the smooth
    # proposal looks clean to i1, its mismatch is blamed on x_{t-1}): path A then cleans x_{t-1}
    out[f"log-sigma, estimated, n_moves {n_moves}"] = SNSRefiner(**kw, n_moves=n_moves)
    for i in FIXED:  # highest first: on two-scale Lorenz-96 the best fixed level was (40, 40)
        sigma = float(((1 - sch.abar[i]) / sch.abar[i]).sqrt())
        out[f"log-sigma, fixed ({i},{i}) (sigma {sigma:.2g}), 1 move per leg"] = SNSRefiner(
            **kw, fixed_levels=(i, i), n_moves=1)
    return out


def calibrations(sur, den, sch, pairs, sigma_p: float, seed: int, cache: Path, n_table: int = 256) -> dict:
    """What the variance-corrected rows need, from the valid split only: the surrogate's residual
    spectrum (:func:`sns.refine.calibrate_x0_variance`), the denoiser's per-level x0 error spectrum
    on ``n_table`` evenly spaced valid pairs (:meth:`ModeVariance.from_denoiser`, S calls per pair;
    cached in ``cache``), and the level whose sigma is nearest the valid one-step RMSE."""
    from sns.diffusion import ModeVariance
    from sns.refine import calibrate_x0_variance

    residual = calibrate_x0_variance(sur, *pairs, spatial_dims=2, batch=256)
    if cache.exists():
        table = ModeVariance(torch.load(cache, weights_only=True), spatial_dims=2, per_level=True)
    else:
        t0 = time.perf_counter()
        idx = torch.linspace(0, len(pairs[0]) - 1, n_table).round().long()
        table = ModeVariance.from_denoiser(den, sch, pairs[0][idx], pairs[1][idx], spatial_dims=2, batch=128,
                                           generator=torch.Generator().manual_seed(seed))
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(table.var, tmp)
        tmp.replace(cache)
        print(f"seed {seed}: per-level x0 error table on {n_table} valid pairs, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    return {"residual": residual, "table": table, "level": level_near(sch, sigma_p / 2**0.5)}


def one_step_spectrum(steppers: dict, x_prev, x_next, physical, seed: int, batch: int = 256) -> dict[str, list]:
    """Per shell, the time-mean energy spectrum of one step of each stepper from valid ``x_prev``
    over that of the true ``x_next`` (``physical``: normalised ``(B, 1, N, N)`` -> physical
    ``(B, N, N)``): does one refined step keep the small scales' energy?"""
    from sns.metrics import energy_spectrum

    ref = energy_spectrum(physical(x_next))[1].mean(0)
    out = {}
    with torch.no_grad():
        for name, step in steppers.items():
            g = torch.Generator().manual_seed(seed)
            y = torch.cat([step(x_prev[a:a + batch], generator=g) for a in range(0, len(x_prev), batch)])
            out[name] = (energy_spectrum(physical(y))[1].mean(0) / ref).tolist()
    return out


def fixed_level_rmse(sur, den, sch, x_prev, x_next, seed: int, levels=(0, 10, 20, 30, 40, 50, 60),
                     batch: int = 256) -> dict[str, float]:
    """One-step RMSE against ``x_next`` of the surrogate's proposal and of that proposal refined at
    fixed levels ``(i, i)`` (one move per leg): where is the denoiser the better one-step model?"""
    from sns.refine import SNSRefiner

    out = {}
    steppers = {"surrogate": sur} | {f"({i},{i})": SNSRefiner(den, sch, surrogate=sur, path="A", fixed_levels=(i, i),
                                                             n_moves=1) for i in levels}
    with torch.no_grad():
        for name, step in steppers.items():
            g, se = torch.Generator().manual_seed(seed), 0.0
            for a in range(0, len(x_prev), batch):
                y = step(x_prev[a:a + batch]) if name == "surrogate" else step(x_prev[a:a + batch], generator=g)
                se += float(((y - x_next[a:a + batch]) ** 2).double().sum())
            out[name] = (se / x_next.numel()) ** 0.5
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-sns-kolmogorov")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--surrogate-steps", type=int, default=2000)
    p.add_argument("--denoiser-steps", type=int, default=4000)
    p.add_argument("--sigma-min", type=float, default=1e-3)
    p.add_argument("--n-moves", type=int, default=2)
    p.add_argument("--ic-split", default="test", choices=["valid", "test"])
    p.add_argument("--burn", type=int, default=100)
    p.add_argument("--tol", type=float, default=0.15, help="per-shell relative error counted as a miss")
    p.add_argument("--max-wall", type=float, default=20_000.0, help="safety cap per rollout (s); the budget is --steps")
    p.add_argument("--only", nargs="*", help="substrings of the method names to run ('=name': that name exactly)")
    p.add_argument("--report", action="store_true", help="print the table of every seed stored so far")
    p.add_argument("--seeds-only", action="store_true", help="with --report: run nothing, only report")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: also run every method under bf16 autocast (rows '... [bf16]', sns.precision)")
    p.add_argument("--level-emphasis", nargs=3, metavar=("LOW", "HIGH", "FACTOR"),
                   help="train the denoiser drawing levels LOW..HIGH FACTOR x as often "
                        "(PairDenoiserModule level_emphasis; the model and results get their own names)")
    p.add_argument("--train-only", choices=["surrogate", "denoiser"],
                   help="train that model of every seed and stop (to train the two in parallel processes)")
    args = p.parse_args()
    args.out = args.out / "kolmogorov"
    from sns.data.io import open_dataset
    from sns.export import load_model, load_schedule
    from sns.metrics import RunningSpectrum, enstrophy, spectrum_distance
    from sns.refine import calibrate_proposal_sigma
    from sns.rollout import rollout, state_rms

    data_root, data_dir = cpu_data(args.out, "kolmogorov")
    ics_ds, train_ds, valid_ds = (open_dataset(data_dir, s) for s in (args.ic_split, "train", "valid"))
    var = next(iter(train_ds.data_vars))
    offset = float(np.asarray(train_ds.attrs["norm_offset"]).reshape(-1)[0])
    scale = float(np.asarray(train_ds.attrs["norm_scale"]).reshape(-1)[0])
    tx = ics_ds[var].values.astype(np.float64)  # (B, T, N, N) physical
    N = tx.shape[-1]
    shells = slice(1, N // 2)
    norm = lambda a: torch.from_numpy(((a - offset) / scale).astype(np.float32))[:, None]  # add the channel
    x0 = norm(tx[:, 0])
    vx = valid_ds[var].values.astype(np.float64)
    pairs = (norm(vx[:, :-1].reshape(-1, N, N)), norm(vx[:, 1:].reshape(-1, N, N)))
    data_rms = float(state_rms(norm(train_ds[var].values[:, ::10].reshape(-1, N, N))).mean())
    dt = float(train_ds.attrs["dt"]) * int(train_ds.attrs.get("save_every", 1))

    def stats(x):  # x: (B, T, N, N) physical -> time-mean spectrum (shells), mean enstrophy
        spec = RunningSpectrum(frame_ndim=2)
        for a in range(0, x.shape[1], 500):
            spec.update(x[:, a:a + 500])
        return spec.result()[1]["mean"], float(enstrophy(x).mean())

    e_ref, ens_ref = stats(train_ds[var].values.astype(np.float64))

    def errors(x):
        e, ens = stats(x)
        rel, _ = spectrum_distance(e[..., shells], e_ref[..., shells])
        return np.abs(np.asarray(rel, dtype=np.float64)).reshape(-1), ens / ens_ref

    floor_rel, floor_ens = errors(tx[:, args.burn:])

    results: dict[str, dict[str, list]] = {}
    diag: dict[str, list] = {}
    emph, emph_kw = "", []
    if args.level_emphasis:
        low, high, factor = int(args.level_emphasis[0]), int(args.level_emphasis[1]), float(args.level_emphasis[2])
        emph = f"_emph{low}-{high}x{factor:g}"
        emph_kw = [f"model.denoiser.module.level_emphasis={{low:{low},high:{high},factor:{factor}}}"]
    res_dir = args.out / f"surrogate{args.surrogate_steps}_denoiser{args.denoiser_steps}{emph}"
    res_dir.mkdir(parents=True, exist_ok=True)
    log_kw = f"diffusion.kwargs={{sigma_min:{args.sigma_min},sigma_max:80.0}}"
    small = [f"++model.denoiser.module.net.kwargs.{k}={v}" for k, v in SMALL_PAIR.items()]
    for seed in ([] if args.seeds_only else args.seeds):
        train = {
            "sur": lambda seed=seed: train_one(args, data_root, "surrogate", "surrogate", seed, args.surrogate_steps, []),
            "log": lambda seed=seed: train_one(args, data_root, f"denoiser_log_sigma{args.sigma_min:g}{emph}", "denoiser",
                                              seed, args.denoiser_steps,
                                              ["diffusion=log_sigma", log_kw, "model.denoiser.module.val_rollout_steps=0",
                                               *small, *emph_kw]),
        }
        if args.train_only:
            train["sur" if args.train_only == "surrogate" else "log"]()
            continue
        files = {k: f() for k, f in train.items()}
        seed_file = res_dir / f"results_{args.ic_split}_{args.steps}_seed{seed}.json"
        seed_results = json.loads(seed_file.read_text())["results"] if seed_file.exists() else {}
        (sur, _), (den, xl) = load_model(files["sur"]), load_model(files["log"])
        sch = load_schedule(xl)
        with torch.no_grad():
            from sns.refine import (
                calibrate_skip_threshold,
                estimate_levels,
                head_accuracy,
                noise_detectability,
            )

            sub = (pairs[0][::4], pairs[1][::4])
            prop = torch.cat([sur(sub[0][a:a + 256]) for a in range(0, len(sub[0]), 256)])
            i2c, i1c = estimate_levels(den, *sub)
            i2p, i1p = estimate_levels(den, sub[0], prop)
            k2, k1 = calibrate_skip_threshold(den, *sub, quantile=0.9)
            acc = head_accuracy(den, sch, *sub)
        sigma_p = calibrate_proposal_sigma(sur, *pairs, batch=256)
        cal = calibrations(sur, den, sch, pairs, sigma_p, seed, res_dir / f"x0_table_seed{seed}.pt")
        one_step = fixed_level_rmse(sur, den, sch, *sub, seed=seed)
        seen = noise_detectability(sub[1], sch, levels=[20, 30, 40, 50, 60])
        seen = {str(int(i)): float(r) for i, r in zip(seen["levels"], seen["ratio"])}
        q = lambda v: float(v.double().median())
        diag.setdefault("surrogate / log-sigma", []).append({
            "rmse": sigma_p / 2**0.5, "clean_i2": q(i2c), "clean_i1": q(i1c), "prop_i2": q(i2p), "prop_i1": q(i1p),
            "k2": k2, "k1": k1, "prop_i1_p90": float(i1p.double().quantile(0.9)),
            "acc_levels": acc["levels"].tolist(), "acc_i2": acc["i2"].tolist(), "acc_i1": acc["i1"].tolist(),
            "one_step": one_step, "detectability": seen, "level": cal["level"]})
        steppers = methods(sur, den, sch, args.n_moves, sigma_p, cal)
        physical = lambda x: x[:, 0].double().numpy() * scale + offset
        diag["surrogate / log-sigma"][-1]["one_step_spectrum"] = one_step_spectrum(
            {k: steppers[k] for k in list(steppers)[:4]}, *sub, physical, seed)
        if seed_file.exists():  # refresh the stored diagnostics (also when --only selects no row)
            stored = json.loads(seed_file.read_text())
            stored["diag"] = {k: v[-1:] for k, v in diag.items()}
            tmp = seed_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stored))
            tmp.replace(seed_file)
        if args.precision != "fp32":  # the same models under autocast, after their fp32 rows
            from sns.precision import MixedPrecision

            steppers.update({f"{k} [{args.precision}]": MixedPrecision(v, args.precision)
                             for k, v in methods(sur, den, sch, args.n_moves, sigma_p, cal).items()})
        for name, step in steppers.items():
            if args.only and not any(name == o[1:] if o.startswith("=") else o in name for o in args.only):
                continue
            if name in seed_results:  # done by an earlier (interrupted) run of this seed
                r = results.setdefault(name, {f: [] for f in seed_results[name]})
                for f, v in seed_results[name].items():
                    r[f].extend(v)
                continue
            t0 = time.perf_counter()
            res = rollout(step, x0, args.steps, store=None, dt=dt, seed=seed, data_rms=data_rms,
                          blowup_factor=10.0, max_wall_time=args.max_wall, progress=False)
            states = res.states[:, :, 0].double().numpy() * scale + offset  # (B, T, N, N) physical
            stable = res.stop_step - 1 if res.stop_step is not None else res.steps_done
            ok = res.status == "completed"
            nan = np.full(floor_rel.shape, np.nan)
            rel, ens = errors(states[:, args.burn + 1:]) if ok else (nan, float("nan"))
            late, ens_late = errors(states[:, -max(states.shape[1] // 5, 1):]) if ok else (nan, float("nan"))
            r = results.setdefault(name, {"rel": [], "late": [], "ens": [], "ens_late": [], "stable": [],
                                          "calls": [], "status": [], "ms_step": []})
            r["rel"].append(rel.tolist()), r["late"].append(late.tolist()), r["ens"].append(ens)
            r["ens_late"].append(ens_late), r["stable"].append(stable), r["calls"].append(res.calls_mean)
            r["status"].append(res.status)
            r["ms_step"].append(1e3 * res.wall_time / max(res.steps_done, 1))
            print(f"seed {seed} | {name}: {res.status} {stable} steps, worst shell {np.nanmax(rel):.3f}, "
                  f"late {np.nanmax(late):.3f}, enstrophy {ens:.3f}, calls {float(res.calls_mean or 'nan'):.2f}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            if seed_file.exists():  # rows another process (``--only``) stored meanwhile
                seed_results = {**json.loads(seed_file.read_text())["results"], **seed_results}
            seed_results[name] = {f: v[-1:] for f, v in r.items()}
            tmp = seed_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"results": seed_results, "diag": {k: v[-1:] for k, v in diag.items()}}))
            tmp.replace(seed_file)  # atomic: a kill leaves the old file or the new one
    if args.report:  # every seed run so far for this split, length and pair of budgets
        results, diag, args.seeds = stored_results(res_dir, args.ic_split, args.steps)
    ms = mean_spread

    print(f"\nkolmogorov cpu preset, {args.steps} steps from {x0.shape[0]} {args.ic_split} initial conditions, "
          f"seeds {args.seeds}; budgets (optimizer steps, batch 32): surrogate {args.surrogate_steps}, denoiser "
          f"{args.denoiser_steps}; log-sigma {args.sigma_min:g}..80, S = 100.")
    print(f"floor ({args.ic_split} vs train, {tx.shape[1]}-frame trajectories): worst shell {floor_rel.max():.3f}, "
          f"shells > {args.tol:g}: {int((floor_rel > args.tol).sum())}/{floor_rel.size}, enstrophy ratio "
          f"{floor_ens:.3f}\n")
    print_diagnostics(diag)
    for k, ds in diag.items():  # head accuracy on noised valid pairs (sns.refine.head_accuracy)
        ds = [d for d in ds if "acc_levels" in d]
        if ds:
            lv = ds[0]["acc_levels"]
            print(f"\nmean |level read - level| of the heads on valid pairs noised to a known level ({k}, mean "
                  f"over {len(ds)} seed(s)):\n\n| head | " + " | ".join(f"i = {v}" for v in lv) + " |\n|---"
                  + "|---" * len(lv) + "|")
            for h in ("i2", "i1"):
                print(f"| {h} | " + " | ".join(f"{v:.1f}" for v in np.mean([d[f"acc_{h}"] for d in ds], 0)) + " |")
    for k, ds in diag.items():  # is the denoiser a better one-step model than the surrogate? (valid pairs)
        ds = [d for d in ds if "one_step" in d]
        if ds:
            lv = list(ds[0]["one_step"])
            print(f"\none-step RMSE on valid pairs (normalised units; {k}, mean over {len(ds)} seed(s)): the "
                  "surrogate's proposal, and that proposal refined at fixed levels (i, i), 1 move per leg:\n\n| "
                  + " | ".join(lv) + " |\n" + "|---" * len(lv) + "|\n| "
                  + " | ".join(f"{np.mean([d['one_step'][v] for d in ds]):.4f}" for v in lv) + " |")
    for k, ds in diag.items():  # can a single state show the noise at all? (valid states)
        ds = [d for d in ds if "detectability" in d]
        if ds:
            lv = list(ds[0]["detectability"])
            print(f"\nwhite noise at level i in one valid state: added band variance / the clean states' spread "
                  f"of it (best band; sns.refine.noise_detectability; {k}, mean over {len(ds)} seed(s)):\n\n| "
                  + " | ".join(f"i = {v}" for v in lv) + " |\n" + "|---" * len(lv) + "|\n| "
                  + " | ".join(f"{np.mean([d['detectability'][v] for d in ds]):.2f}" for v in lv) + " |")
    for k, ds in diag.items():  # the calibrated level and one step's small-scale energy (valid pairs)
        ds = [d for d in ds if "one_step_spectrum" in d]
        if ds:
            print(f"\ncalibrated fixed level i* (sigma nearest the valid one-step RMSE) per seed: "
                  f"{[d['level'] for d in ds]}\n\none step from valid states: time-mean energy spectrum over the "
                  f"true next state's, per shell ({k}, mean over {len(ds)} seed(s)):\n\n| stepper | "
                  + " | ".join(f"k = {v}" for v in range(8, N // 2)) + " |\n|---" + "|---" * (N // 2 - 8) + "|")
            for name in ds[0]["one_step_spectrum"]:
                r = np.mean([d["one_step_spectrum"][name] for d in ds], 0)
                print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in r[8:N // 2]) + " |")
    print(f"\n| method | completed | stable steps (min) | calls/step | worst shell | shells > {args.tol:g} "
          f"| worst shell, last fifth | enstrophy ratio | enstrophy ratio, last fifth | ms/step |")
    print("|---" * 10 + "|")
    for k, r in results.items():
        rel, late = np.asarray(r["rel"], dtype=np.float64), np.asarray(r["late"], dtype=np.float64)
        done = sum(s == "completed" for s in r["status"])
        print(f"| {k} | {done}/{len(r['status'])} | {min(r['stable'])} | {ms(r['calls'])} | "
              f"{ms(np.nanmax(rel, 1), '{:.3f}')} | {ms((rel > args.tol).sum(1), '{:.1f}')} | "
              f"{ms(np.nanmax(late, 1), '{:.3f}')} | {ms(r['ens'], '{:.3f}')} | {ms(r['ens_late'], '{:.3f}')} | "
              f"{ms(r['ms_step'], '{:.1f}') if r.get('ms_step') else '-'} |")
    bare = results.get("bare surrogate")
    if bare is not None and len(bare["rel"]) == len(args.seeds):
        print("\nworst shell over the bare surrogate's, per seed (same seed, data and initial conditions):\n\n"
              "| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |\n|---|"
              + "---|" * (len(args.seeds) + 1))
        b = np.nanmax(np.asarray(bare["rel"], dtype=np.float64), 1)
        for k, r in results.items():
            if len(r["rel"]) == len(b):
                q = np.nanmax(np.asarray(r["rel"], dtype=np.float64), 1) / b
                print(f"| {k} | " + " | ".join(f"{v:.2f}" for v in q) + f" | {np.nanmean(q):.2f} |")
    for k, r in results.items():  # per-shell errors, mean over seeds
        rel = np.nanmean(np.asarray(r["rel"], dtype=np.float64), 0)
        print(f"{k}: per shell " + " ".join(f"{v:.2f}" for v in rel), file=sys.stderr)
    print("floor: per shell " + " ".join(f"{v:.2f}" for v in floor_rel), file=sys.stderr)


if __name__ == "__main__":
    main()
