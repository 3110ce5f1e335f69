"""bf16 autocast against fp32 for trained models, in one run (issue 19): speed and accuracy.

Models: a surrogate and a pair denoiser exported by ``sns-train`` (``--surrogate``,
``--denoiser``; e.g. the Kolmogorov cpu models of ``benchmarks/sns_kolmogorov.py``), initial
states: frame 0 of the first ``--batch`` trajectories of ``--data``'s test split, normalised.

* speed: the surrogate's forward, the denoiser's level estimation and one SNS step (fixed levels
  (20, 20), one move per leg: 2 denoiser calls + the surrogate), fp32 and bf16 interleaved,
  ``--reps`` repetitions of ``--iters`` calls each, medians, and the ratio bf16 / fp32 measured
  in the same run; the CPU capability torch reports;
* accuracy: ``--steps`` SNS steps from the same states with the same seed in fp32 and under bf16
  (:class:`sns.precision.MixedPrecision`): the RMS difference of the states over the fp32 RMS at
  the first and the last step, and the relative difference of the time-mean energy spectra.

Run: ``python benchmarks/mixed_precision.py --surrogate S --denoiser D --data DIR``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--surrogate", required=True)
    p.add_argument("--denoiser", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from sns.data.io import open_dataset
    from sns.export import load_model, load_schedule
    from sns.metrics import energy_spectrum
    from sns.precision import MixedPrecision
    from sns.refine import SNSRefiner, estimate_levels
    from sns.rollout import rollout

    sur, _ = load_model(args.surrogate)
    den, extra = load_model(args.denoiser)
    sur.eval(), den.eval()
    sch = load_schedule(extra)
    te = open_dataset(args.data, "test")
    var = next(iter(te.data_vars))
    off = float(np.asarray(te.attrs["norm_offset"]).reshape(-1)[0])
    sc = float(np.asarray(te.attrs["norm_scale"]).reshape(-1)[0])
    x0 = torch.from_numpy(((te[var].values[: args.batch, 0] - off) / sc).astype(np.float32))[:, None]

    def sns_step():
        return SNSRefiner(den, sch, sur, fixed_levels=(20, 20), n_moves=1)

    refiner = sns_step()
    cases = {"surrogate forward": lambda: sur(x0), "denoiser level estimation": lambda: estimate_levels(den, x0, x0),
             "SNS step, fixed (20,20)": lambda: refiner(x0, generator=torch.Generator().manual_seed(0))}
    times: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad():
        for f in cases.values():  # warm-up, both precisions
            f()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                f()
        for _ in range(args.reps):
            for name, f in cases.items():
                for prec in ("fp32", "bf16"):
                    t0 = time.perf_counter()
                    for _ in range(args.iters):
                        if prec == "bf16":
                            with torch.autocast("cpu", dtype=torch.bfloat16):
                                f()
                        else:
                            f()
                    times.setdefault((name, prec), []).append(1e3 * (time.perf_counter() - t0) / args.iters)
    runs = {}
    for prec in ("fp32", "bf16"):
        step = sns_step() if prec == "fp32" else MixedPrecision(sns_step(), "bf16")
        runs[prec] = rollout(step, x0, args.steps, store=None, seed=0, progress=False).states[:, :, 0].double()
    a, b = runs["fp32"], runs["bf16"]
    rms = float(a.pow(2).mean().sqrt())
    first = float((a[:, 1] - b[:, 1]).pow(2).mean().sqrt()) / rms
    last = float((a[:, -1] - b[:, -1]).pow(2).mean().sqrt()) / rms
    ea = energy_spectrum(a[:, 1:].numpy() * sc + off)[1].mean(axis=(0, 1))
    eb = energy_spectrum(b[:, 1:].numpy() * sc + off)[1].mean(axis=(0, 1))
    n = a.shape[-1]
    shells = slice(1, n // 2)
    spec = np.abs(eb[shells] / ea[shells] - 1)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), batch {args.batch}, "
          f"{args.reps} x {args.iters} calls, medians (ms per call)\n")
    print("| case | fp32 ms | bf16 ms | bf16 / fp32 time |")
    print("|---|---|---|---|")
    for name in cases:
        f32, b16 = statistics.median(times[(name, "fp32")]), statistics.median(times[(name, "bf16")])
        print(f"| {name} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f} |")
    print(f"\nSNS fixed (20,20), {args.steps} steps, same seed: state RMS difference / RMS {first:.2e} after one step, "
          f"{last:.2e} after {args.steps}; time-mean spectrum, max relative difference over shells 1..{n // 2 - 1}: "
          f"{spec.max():.2e}")


if __name__ == "__main__":
    main()
