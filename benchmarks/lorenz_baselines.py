"""SNS against the baselines on Lorenz-63 (or Lorenz-96), cheap enough for a 2-core CPU.

One command makes everything it needs under ``--out`` and prints a markdown table:

1. data: ``sns-generate``'s cpu preset (Lorenz-63: 16/4/4 trajectories of 4000 frames saved
   every 0.05 MTU);
2. training, every method with the *same budget*: ``--train-steps`` optimizer steps of batch 256
   (the ``<system>_cpu`` experiment; wall time reported), through ``sns-train``'s ``train``:
   the residual-MLP surrogate (shared by the Gaussian approximation, SNS and the Thermalizer),
   the blind SNS pair denoiser (S = 100, cosine), ACDM (explicit, linear, S = ``--acdm-levels``),
   the Thermalizer (blind, unconditional, CE weight 1) and PDE-Refiner (explicit, K = 3);
3. rollouts of ``--steps`` steps (default 10^5) from the same initial conditions (frames 0 and
   2000 of the test trajectories) through :func:`sns.rollout.rollout` (zarr stores, calls per
   step recorded, blow-up guard at 10x the data RMS, a wall-clock cap per method:
   ``--max-wall``; a capped run reports the steps it reached and is resumed by re-running);
4. metrics in physical units: steps until blow-up (or the steps reached), mean / max network
   calls per step, steps per second, the per-coordinate Wasserstein-1 distance between the
   rollout's invariant measure (all states after ``--burn`` steps, pooled over initial
   conditions) and the training data's, the ratio of their standard deviations, and the
   autocorrelation error (max over lags <= ``--max-lag`` frames of |ACF - ACF_train|, ACF
   averaged over coordinates, on the states after the burn-in).  The row "truth (test vs
   train)" is the sampling floor of these for trajectories of this length.  Methods: the
   Gaussian approximation, SNS path A (estimated and fixed levels), the path ablation (B, C,
   fix s2), clean conditioning (generation from pure noise), ACDM, the Thermalizer, PDE-Refiner.

Run: ``python benchmarks/lorenz_baselines.py`` (Lorenz-63; ``--system lorenz96`` for D = 40).
Everything resumes: trained models and finished rollouts are reused, capped rollouts continue.
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

REPO = Path(__file__).resolve().parents[1]
TASKS = ("surrogate", "denoiser", "acdm", "thermalizer", "pde_refiner")


def compose(config: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def cpu_data(out: Path, system: str) -> tuple[Path, Path]:
    """``(data_root, data_dir)``: the ``cpu`` preset of ``system`` under ``out/data``, generated
    when its test split is missing (one thread: the benchmarks run beside each other)."""
    from sns.data.generate import generate_dataset

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data_root = out / "data"
    data_dir = data_root / f"{system}-cpu"
    if not (data_dir / "test.zarr").exists():
        generate_dataset(system, "cpu", out=data_dir, progress=None)
    return data_root, data_dir


def train_all(args, data_root: Path, budget: list[str] | None = None, extra: list[str] | None = None) -> dict[str, dict]:
    """Train every task of ``TASKS`` with the same budget (``budget``: trainer overrides; default
    ``--train-steps`` optimizer steps of batch 256); reuse finished runs."""
    from sns.cli.train import train

    if budget is None:
        budget = [f"trainer.max_steps={args.train_steps}", "trainer.limit_train_batches=500", "data.batch_size=256"]
    info = {}
    for task in TASKS:
        run = args.out / "runs" / task
        file = run / f"{task}.safetensors"
        meta = run / "bench.json"
        if file.exists() and meta.exists():
            info[task] = json.loads(meta.read_text())
            continue
        overrides = [f"experiment={args.system}_cpu", f"task={task}", f"paths.data_dir={data_root}",
                     f"paths.run_dir={run}", f"paths.output_dir={run}", "torch_threads=1", "seed=0",
                     "trainer.max_epochs=100000", *budget, "trainer.limit_val_batches=2", "logger=csv",
                     f"model.acdm.module.n_levels={args.acdm_levels}", "model.denoiser.module.val_rollout_steps=0",
                     *(extra or [])]
        t0 = time.perf_counter()
        metrics = train(compose("train", overrides))
        info[task] = {"wall_s": time.perf_counter() - t0, "steps": int(metrics.get("global_step", 0)),
                      "val_loss": metrics.get("val/loss")}
        meta.write_text(json.dumps(info[task]))
        print(f"trained {task}: {info[task]}", file=sys.stderr, flush=True)
    return info


def steppers(args, clean_conditioning: bool = False, generation_clamp: float | None = None) -> dict[str, object]:
    """Every method as a stepper, built from the models that :func:`train_all` exported.

    ``generation_clamp`` clamps ``x0_hat`` (normalised units) in the clean-conditioning row only:
    generation starts at the top level of the cosine schedule, where ``abar`` is ~1e-7 and the
    ``x0`` estimate multiplies the network's noise error by ``1/sqrt(abar)`` (~2000 for S = 100).
    """
    from sns.baselines import GaussianApproximation
    from sns.export import load_model, load_schedule
    from sns.methods import build_stepper
    from sns.refine import SNSRefiner

    def load(task):
        return load_model(args.out / "runs" / task / f"{task}.safetensors")

    sur, _ = load("surrogate")
    den, dx = load("denoiser")
    acdm, ax = load("acdm")
    therm, tx = load("thermalizer")
    pde, px = load("pde_refiner")
    sch = load_schedule(dx)
    methods = {  # SNS's path variants: the library class with the option each row ablates
        "Gaussian approx. (surrogate)": GaussianApproximation(sur),
        "SNS path A (estimated levels)": SNSRefiner(den, sch, sur, path="A"),
        "SNS path A, fixed levels (0,0)": SNSRefiner(den, sch, sur, path="A", fixed_levels=(0, 0)),
        "SNS path B": SNSRefiner(den, sch, sur, path="B"),
        "SNS path C": SNSRefiner(den, sch, sur, path="C"),
        "SNS fix s2": SNSRefiner(den, sch, sur, path="fix_s2"),
    }
    if clean_conditioning:  # x_t generated from pure noise, conditioned on the (almost) clean x_{t-1}
        methods["clean conditioning (generation)"] = build_stepper("clean_conditioning", den, dx,
                                                                   settings={"clamp": generation_clamp})[0]
    methods[f"ACDM (S = {args.acdm_levels})"] = build_stepper("acdm", acdm, ax)[0]
    methods[f"Thermalizer {args.therm_start}/{args.therm_stop}"] = build_stepper(
        "thermalizer", therm, tx, sur, {"start": args.therm_start, "stop": args.therm_stop, "limit": None})[0]
    methods["PDE-Refiner (K = 3)"] = build_stepper("pde_refiner", pde, px)[0]
    return methods


def w1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from sns.metrics import wasserstein1_per_coordinate

    return np.asarray(wasserstein1_per_coordinate(a, b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="lorenz63", choices=["lorenz63", "lorenz96"])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-baselines")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--acdm-levels", type=int, default=100)
    p.add_argument("--therm-start", type=int, default=6)
    p.add_argument("--therm-stop", type=int, default=4)
    p.add_argument("--max-wall", type=float, default=900.0, help="wall-clock cap per rollout call (s)")
    p.add_argument("--burn", type=int, default=100)
    p.add_argument("--max-lag", type=int, default=40, help="lags (frames) of the autocorrelation error")
    p.add_argument("--only", nargs="*", help="substrings of the method names to run")
    args = p.parse_args()
    args.out = args.out / args.system
    from sns.data.io import open_dataset
    from sns.rollout import open_rollout, rollout, state_rms

    data_root, data_dir = cpu_data(args.out, args.system)
    train_info = train_all(args, data_root)

    test, train_ds = open_dataset(data_dir, "test"), open_dataset(data_dir, "train")
    var = next(iter(test.data_vars))
    offset = np.asarray(test.attrs["norm_offset"], dtype=np.float64)
    scale = np.asarray(test.attrs["norm_scale"], dtype=np.float64)
    tx = test[var].values  # (traj, time, dim), physical units
    ref = train_ds[var].values.reshape(-1, tx.shape[-1])
    starts = [0, tx.shape[1] // 2]
    x0_phys = np.concatenate([tx[:, s] for s in starts])
    x0 = torch.from_numpy(((x0_phys - offset) / scale).astype(np.float32))
    data_rms = float(state_rms(torch.from_numpy(((ref - offset) / scale).astype(np.float32))).mean())
    dt = float(test.attrs["dt"]) * int(test.attrs.get("save_every", 1))

    from sns.metrics import autocorrelation

    def acf(x):  # (B, T, D) -> (max_lag + 1,), mean over coordinates
        return np.nanmean(autocorrelation(x, min(args.max_lag, x.shape[1] - 1), time_axis=1), axis=-1)

    acf_ref = acf(train_ds[var].values)

    def acf_err(x):
        a = acf(x)
        return float(np.max(np.abs(a - acf_ref[:len(a)])))

    rows = []
    floor = w1(tx[:, args.burn:].reshape(-1, tx.shape[-1]), ref)
    rows.append(("truth (test vs train)", "-", len(starts) * tx.shape[0], tx.shape[1] - 1, "-", "-", "-", floor,
                 tx.reshape(-1, tx.shape[-1]).std(0) / ref.std(0), acf_err(tx)))
    # clamp of the generation row: 1.5x the largest |state| of the training data (normalised units)
    gen_clamp = 1.5 * float(np.abs((ref - offset) / scale).max())
    for name, step in steppers(args, clean_conditioning=True, generation_clamp=gen_clamp).items():
        if args.only and not any(s in name for s in args.only):
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
        store = args.out / "rollouts" / f"{slug}.zarr"
        res = rollout(step, x0, args.steps, store=store, chunk=1000, dt=dt, seed=0, data_rms=data_rms,
                      blowup_factor=10.0, max_wall_time=args.max_wall, attrs={"method": name}, progress=False)
        ds = open_rollout(store)
        states = ds["state"].values.astype(np.float64) * scale + offset  # (B, T, D) physical
        done = res.steps_done
        stable = res.stop_step - 1 if res.stop_step is not None else done
        # invariant measure: states after the burn-in (all states after step 0 if the run was shorter)
        pooled = states[:, args.burn + 1 if done > args.burn else 1:].reshape(-1, states.shape[-1])
        err = w1(pooled, ref) if len(pooled) else np.full(states.shape[-1], np.nan)
        sps = done / res.wall_time_total if res.wall_time_total > 0 else float("nan")
        ratio = pooled.std(0) / ref.std(0) if len(pooled) else np.full(states.shape[-1], np.nan)
        tail = states[:, args.burn + 1:] if done > args.burn + 2 * args.max_lag else states[:, 1:]
        aerr = acf_err(tail) if tail.shape[1] > 1 and np.isfinite(tail).all() else float("nan")
        rows.append((name, res.status, x0.shape[0], stable, res.calls_mean, res.calls_max, sps, err, ratio, aerr))
        print(f"{name}: {res.status} {done} steps, {res.wall_time_total:.0f} s", file=sys.stderr, flush=True)

    D = tx.shape[-1]
    coords = "x/y/z" if D == 3 else f"mean over {D}"
    print(f"\n{args.system}, {args.steps} steps requested from {x0.shape[0]} initial conditions; "
          f"training: {args.train_steps} steps of batch 256 per model "
          + ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in train_info.items()) + "\n")
    print(f"| method | status | ICs | stable steps (min) | calls/step mean | max | steps/s | W1 ({coords}) "
          f"| std ratio ({coords}) | ACF err (lags <= {args.max_lag}) |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def fmt_vec(v):
        v = np.asarray(v)
        return " / ".join(f"{x:.2f}" for x in v) if D == 3 else f"{v.mean():.3f}"

    for name, status, n, stable, cm, cx, sps, err, ratio, aerr in rows:
        cm_s = f"{cm:.2f}" if isinstance(cm, float) else str(cm)
        sps_s = f"{sps:.0f}" if isinstance(sps, float) else str(sps)
        print(f"| {name} | {status} | {n} | {stable} | {cm_s} | {cx} | {sps_s} | {fmt_vec(err)} | {fmt_vec(ratio)} "
              f"| {aerr:.3f} |")


if __name__ == "__main__":
    main()
