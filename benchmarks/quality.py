"""Quality table for the field systems (Kolmogorov flow, two-layer QG) at CPU scale: every method
from the same initial conditions, with the same training budget.

One command makes everything it needs under ``--out`` and prints a markdown table:

1. data: ``sns-generate``'s cpu preset (Kolmogorov: Re 1000, 64^2 -> 32^2, 16/4/4 trajectories of
   600 frames; QG: 64^2 -> 32^2);
2. training with the same budget in optimizer steps per model (``--train-steps``, batch 32, one
   thread; ``--train-minutes`` instead gives the wall-clock budget of the 2026-11-22 tables in
   RESULTS.md), through ``sns-train``'s ``train`` with the ``<system>_cpu`` experiment: the residual
   U-Net surrogate (preset size) and four diffusion models of one *small* pair U-Net size
   (dim 16, mults (1, 2), no attention, 0.21M parameters -- the preset's 2.4M trains at
   ~14 samples/s here, far too slow for this machine): the blind SNS pair denoiser
   (S = 100 cosine), ACDM (explicit, linear, S = ``--acdm-levels``, the paper's 200 for
   Kolmogorov), the Thermalizer (blind, unconditional) and PDE-Refiner (explicit, K = 3);
3. rollouts of ``--steps`` steps from frame 0 of every test trajectory (``--max-wall``: a
   wall-clock safety cap per method; a capped run reports the steps it reached; re-running
   continues it), blow-up guard at 10x the data RMS;
4. metrics in physical units against the test split: steps reached / until blow-up, calls per
   step (mean, max), steps per second, the time-mean energy spectrum's error (max relative error
   and log-L2 over shells 1..N/2-1; rollout after ``--burn`` steps, streamed in
   chunks), the error of C(tau) (max |C - C_ref| over tau <= ``--max-lag`` frames, on the first
   ``--corr-steps`` steps), and the ratio of the mean enstrophy to the reference's.
   The "truth" row compares the valid split with the test split (sampling floor).

``--conserve-mean`` wraps every method in :class:`sns.constraints.ConserveMean` (the spatial mean
of each channel kept at the initial condition's; stores under ``rollouts-cm/``), reusing the
trained models.

Run: ``python benchmarks/quality.py --system kolmogorov`` (2000 steps per model: ~45 min for the
surrogate and ~15-20 min for each diffusion model on one core here; the 100-200-call methods then
need hours for 10^4 steps: ``--steps`` and ``--only`` trim it).  Models and rollouts of a step
budget live under ``--out/<system>/steps<N>``, those of a ``--train-minutes`` budget under
``--out/<system>`` (where the published tables' runs are); the data set is shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lorenz_baselines import steppers, train_all

REPO = Path(__file__).resolve().parents[1]
SMALL_PAIR = {"dim": 16, "dim_mults": "[1,2]", "mid_attn": "false", "emb_dim": 64, "head_features": 64,
              "head_hidden": 64}


def field_stats(frames_iter, n_corr: int, max_lag: int):
    """Time-mean spectrum, mean enstrophy and C(tau) of physical frames given chunk by chunk.

    ``frames_iter`` yields ``(B, t, C, H, W)`` chunks in time order; C(tau) uses the first
    ``n_corr`` frames of every trajectory (loaded, they are few)."""
    from sns.metrics import RunningSpectrum, spatiotemporal_correlation

    spec = None
    ens_sum, ens_n = 0.0, 0
    head = []
    seen = 0
    for chunk in frames_iter:
        C = chunk.shape[2]
        frames = chunk[:, :, 0] if C == 1 else chunk
        if spec is None:
            spec = RunningSpectrum(frame_ndim=2 if C == 1 else 3)
        spec.update(frames)
        ens_sum += float((0.5 * chunk.astype(np.float64) ** 2).mean(axis=(2, 3, 4)).sum())
        ens_n += chunk.shape[0] * chunk.shape[1]
        if seen < n_corr:
            head.append(chunk[:, : n_corr - seen])
            seen += head[-1].shape[1]
    k, stats = spec.result()
    head = np.concatenate(head, axis=1)
    corr = spatiotemporal_correlation(head.reshape(*head.shape[:2], -1), min(max_lag, head.shape[1] - 1), 1)
    return k, stats["mean"], ens_sum / ens_n, corr


def chunks(arr, scale, offset, start: int, size: int = 500):
    """Physical-unit chunks ``(B, t, C, H, W)`` of a lazily loaded ``(B, T, C, H, W)`` array."""
    T = arr.shape[1]
    for a in range(start, T, size):
        yield np.asarray(arr[:, a:min(a + size, T)], dtype=np.float64) * scale + offset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="kolmogorov", choices=["kolmogorov", "qg"])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-quality")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--train-steps", type=int, default=2000, help="optimizer steps of batch 32 per model (the budget)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="wall-clock budget per model instead (the 2026-11-22 tables: 4)")
    p.add_argument("--acdm-levels", type=int, default=200)
    p.add_argument("--therm-start", type=int, default=6)
    p.add_argument("--therm-stop", type=int, default=4)
    p.add_argument("--max-wall", type=float, default=20_000.0,
                   help="safety cap per rollout (s); the budget is --steps (the 2026-11-22 tables: 240)")
    p.add_argument("--burn", type=int, default=50)
    p.add_argument("--max-lag", type=int, default=20)
    p.add_argument("--corr-steps", type=int, default=200)
    p.add_argument("--only", nargs="*")
    p.add_argument("--conserve-mean", action="store_true",
                   help="wrap every method in sns.constraints.ConserveMean (stores under rollouts-cm/)")
    args = p.parse_args()
    args.out = args.out / args.system
    torch.set_num_threads(1)

    from sns.data.generate import generate_dataset
    from sns.data.io import open_dataset
    from sns.metrics import spectrum_distance
    from sns.rollout import open_rollout, rollout, state_rms

    data_root = args.out / "data"
    data_dir = data_root / f"{args.system}-cpu"
    if args.train_minutes is None:  # models and rollouts of a step budget: their own folder
        args.out = args.out / f"steps{args.train_steps}"
    if not (data_dir / "test.zarr").exists():
        t0 = time.perf_counter()
        generate_dataset(args.system, "cpu", out=data_dir, progress=None)
        print(f"data generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.train_minutes is None:
        budget = [f"trainer.max_steps={args.train_steps}", "trainer.max_time=null", "data.batch_size=32",
                  "trainer.limit_train_batches=100"]
    else:
        minutes = int(args.train_minutes * 60)
        budget = [f"trainer.max_time=00:00:{minutes // 60:02d}:{minutes % 60:02d}", "data.batch_size=32",
                  "trainer.limit_train_batches=100"]
    small = [f"++model.{t}.module.net.kwargs.{k}={v}" for t in ("denoiser", "acdm", "thermalizer", "pde_refiner")
             for k, v in SMALL_PAIR.items()]
    train_info = train_all(args, data_root, budget=budget, extra=small)

    test, valid = open_dataset(data_dir, "test"), open_dataset(data_dir, "valid")
    var = next(iter(test.data_vars))
    field = test[var]
    if field.ndim == 4:  # (traj, time, y, x) -> add the channel axis
        field = field.expand_dims("channel", axis=2)
        vfield = valid[var].expand_dims("channel", axis=2)
    else:
        vfield = valid[var]
    C = field.shape[2]
    offset = np.asarray(test.attrs["norm_offset"], dtype=np.float64).reshape(1, 1, C, 1, 1)
    scale = np.asarray(test.attrs["norm_scale"], dtype=np.float64).reshape(1, 1, C, 1, 1)
    x0_phys = field[:, 0].values.astype(np.float64)
    x0 = torch.from_numpy(((x0_phys - offset[0]) / scale[0]).astype(np.float32))
    data_rms = float(state_rms(torch.from_numpy(((field[:, :50].values - offset) / scale).reshape(
        -1, *field.shape[2:]).astype(np.float32))).mean())
    dt = float(test.attrs["dt"]) * int(test.attrs.get("save_every", 1))

    def ref_iter(arr):
        for a in range(0, arr.shape[1], 200):
            yield arr[:, a:a + 200].values.astype(np.float64)

    _, e_ref, ens_ref, c_ref = field_stats(ref_iter(field), args.corr_steps + 1, args.max_lag)
    _, e_val, ens_val, c_val = field_stats(ref_iter(vfield), args.corr_steps + 1, args.max_lag)
    N = field.shape[-1]
    shells = slice(1, N // 2)

    def errors(e, c, ens):
        rel, log_l2 = spectrum_distance(e[..., shells], e_ref[..., shells])
        lag = min(len(c), len(c_ref))
        return (float(np.nanmax(rel)), float(np.mean(log_l2)),
                float(np.max(np.abs(c[:lag] - c_ref[:lag]))), ens / ens_ref)

    rows = [("truth (valid vs test)", "-", field.shape[0], field.shape[1] - 1, "-", "-", "-",
             *errors(e_val, c_val, ens_val))]
    # clamp of the generation row (see steppers): 1.5x the largest |state| of the test split (normalised)
    gen_clamp = 1.5 * float(np.abs((field.values - offset) / scale).max())
    for name, step in steppers(args, clean_conditioning=True, generation_clamp=gen_clamp).items():
        if args.only and not any(s in name for s in args.only):
            continue
        slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        store = args.out / ("rollouts-cm" if args.conserve_mean else "rollouts") / f"{slug}.zarr"
        if args.conserve_mean:
            from sns.constraints import ConserveMean

            step, name = ConserveMean(step), f"{name} + ConserveMean"
        res = rollout(step, x0, args.steps, store=store, chunk=100, dt=dt, seed=0, data_rms=data_rms,
                      blowup_factor=10.0, max_wall_time=args.max_wall, progress=False,
                      attrs={"method": name, "norm_offset": test.attrs["norm_offset"],
                             "norm_scale": test.attrs["norm_scale"], "split": "test", "start_frame": 0})
        ds = open_rollout(store)
        done = res.steps_done
        stable = res.stop_step - 1 if res.stop_step is not None else done
        sps = done / res.wall_time_total if res.wall_time_total > 0 else float("nan")
        if done >= 2:
            start = args.burn + 1 if done > args.burn + 10 else 1
            _, e, ens, _ = field_stats(chunks(ds["state"], scale, offset, start), 0 + 1, 0)
            _, _, _, c = field_stats(chunks(ds["state"], scale, offset, 0), args.corr_steps + 1, args.max_lag)
            err = errors(e, c, ens)
        else:
            err = (float("nan"),) * 4
        rows.append((name, res.status, x0.shape[0], stable, res.calls_mean, res.calls_max, sps, *err))
        print(f"{name}: {res.status} {done} steps, {res.wall_time_total:.0f} s", file=sys.stderr, flush=True)

    print(f"\n{args.system} cpu preset, {args.steps} steps requested from {x0.shape[0]} initial conditions, "
          f"rollout cap {args.max_wall:.0f} s per method{'; every method wrapped in ConserveMean' if args.conserve_mean else ''}; training budget "
          + (f"{args.train_steps} steps" if args.train_minutes is None else f"{args.train_minutes:g} min") + " per model: "
          + ", ".join(f"{t} {v['steps']} steps" for t, v in train_info.items()) + "\n")
    print("| method | status | ICs | steps (stable) | calls/step mean | max | steps/s | spectrum max rel. err "
          "(shells 1..N/2-1) | spectrum log-L2 | C(tau) max err | enstrophy ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, status, n, stable, cm, cx, sps, rel, logl2, cerr, ens in rows:
        cm_s = f"{cm:.2f}" if isinstance(cm, float) else str(cm)
        sps_s = f"{sps:.1f}" if isinstance(sps, float) else str(sps)
        print(f"| {name} | {status} | {n} | {stable} | {cm_s} | {cx} | {sps_s} | {rel:.2f} | {logl2:.3f} | "
              f"{cerr:.3f} | {ens:.2f} |")


if __name__ == "__main__":
    main()
