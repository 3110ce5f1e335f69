"""Does wavelet denoising before embedding recover the clean series' D2 and delay? (seed 000, step 1)

Lorenz-63 x, sampled every 0.01 time units (the built-in RK4 solver), ``--samples`` samples after
a spin-up, ``--series`` initial conditions; white Gaussian noise of ``--noise`` x the series' std
added with one noise seed per series.  For the clean, the noisy and the denoised series
(:func:`sns.generators.preprocess.wavelet_denoise`, BayesShrink and the universal threshold):
the mutual-information delay (:func:`sns.metrics.chaos.mi_delay`), the correlation dimension
``D2`` of the delay embedding in dimension ``--dim`` with each series' own delay
(:func:`sns.metrics.chaos.correlation_dimension`, its default scaling range), and the RMS error
against the clean series relative to the noise std.  Mean and spread over the series.

Run: ``python benchmarks/wavelet_denoising.py`` (about a minute).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sns.generators.preprocess import wavelet_denoise
from sns.metrics.chaos import correlation_dimension, delay_embed, mi_delay
from sns.systems.lorenz import Lorenz63


def lorenz_x(n_series: int, samples: int, seed: int) -> np.ndarray:
    system = Lorenz63()
    u = system.step(system.initial_condition(n_series, torch.Generator().manual_seed(seed)), 2000)
    xs = []
    for _ in range(samples):
        u = system.step(u, 1)
        xs.append(u[:, 0].clone())
    return torch.stack(xs, 1).double().numpy()


def measure(y: np.ndarray, dim: int) -> tuple[int, float]:
    d = mi_delay(y, max_lag=100)
    return d, float(correlation_dimension(delay_embed(y, dim, d)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--samples", type=int, default=8000)
    p.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--dim", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    clean = lorenz_x(args.series, args.samples, args.seed)
    variants = {"noisy (no filter)": None, "BayesShrink (default)": {"rule": "bayes"},
                "universal, hard": {"rule": "universal", "mode": "hard"},
                "universal, soft": {"rule": "universal", "mode": "soft"}}
    ref = [measure(x, args.dim) for x in clean]
    d_ref, D2_ref = np.array([r[0] for r in ref]), np.array([r[1] for r in ref])
    print(f"Lorenz-63 x, dt 0.01, {args.samples} samples x {args.series} series; embedding dimension {args.dim}")
    print(f"clean: delay {d_ref.mean():.1f} ± {d_ref.std():.1f}, D2 {D2_ref.mean():.3f} ± {D2_ref.std():.3f}\n")
    print("| noise / std | series | delay | delay error | D2 | D2 error | RMS error / noise std |")
    print("|---|---|---|---|---|---|---|")
    for frac in args.noise:
        rng = np.random.default_rng(args.seed + 1000 + int(1000 * frac))
        noisy = clean + frac * clean.std(axis=1, keepdims=True) * rng.standard_normal(clean.shape)
        for name, kw in variants.items():
            ys = noisy if kw is None else np.stack([wavelet_denoise(y, **kw) for y in noisy])
            res = [measure(y, args.dim) for y in ys]
            d, D2 = np.array([r[0] for r in res]), np.array([r[1] for r in res])
            rms = np.sqrt(((ys - clean) ** 2).mean(axis=1)) / (frac * clean.std(axis=1))
            print(f"| {frac:g} | {name} | {d.mean():.1f} ± {d.std():.1f} | {np.abs(d - d_ref).mean():.1f} | "
                  f"{D2.mean():.3f} ± {D2.std():.3f} | {np.abs(D2 - D2_ref).mean():.3f} | "
                  f"{rms.mean():.3f} ± {rms.std():.3f} |", flush=True)


if __name__ == "__main__":
    main()
