"""What training emphasis on a band of levels does to a pair denoiser, where the answer can be measured.

The smooth AR(1) field of ``tests/test_levels.py`` (D = 32, a = 0.9, correlated noise), whose noise
levels are well posed: a blind MLP pair denoiser (width 128, 1500 Adam steps of batch 256, cosine
schedule, S = 50, ``lambda_ce = 0.5``) is trained with uniform levels and with
``pair_dsm_loss(level_weights=emphasis_weights(S, LOW, HIGH, FACTOR))``, the same seeds, the same
number of optimizer steps.  Measured on 8192 held-out pairs with independent uniform levels, inside
and outside the band: the i1 head's mean absolute level error and its mean signed error (a head that
learnt the sampling prior would lean towards the band), the share of levels outside the band that
the head reads as inside it, and the noise-prediction MSE on x_t.
A third row is the ablation: emphasis with the heads' logit adjustment switched off (plain CE of the
emphasised labels, by replacing ``sns.diffusion.loss._adjust`` in this process), which shows what
the adjustment is for.

Run: ``python benchmarks/level_emphasis_ar1.py --seeds 0 1 2`` (about 20 s per model on one thread).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def train(seed: int, weights, steps: int, adjust: bool = True):
    from test_levels import D, S, ar1_pairs

    import sns.diffusion.loss as loss_module
    from sns.diffusion import cosine_schedule, pair_dsm_loss
    from sns.nets.mlp import MLPPairDenoiser

    torch.manual_seed(seed)
    net = MLPPairDenoiser(D, S, width=128, n_enc=2, n_dec=2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g, sch = torch.Generator().manual_seed(seed + 1), cosine_schedule(S)
    adjusted = loss_module._adjust
    if not adjust:  # the ablation: plain CE of the emphasised labels
        loss_module._adjust = lambda logits, log_p: logits
    try:
        for _ in range(steps):
            xp, xn = ar1_pairs(256, g)
            loss, _ = pair_dsm_loss(net, sch, xp, xn, lambda_ce=0.5, generator=g, level_weights=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        loss_module._adjust = adjusted
    return net.eval()


def score(net, low: int, high: int) -> dict[str, tuple[float, float, float]]:
    from test_levels import S, ar1_pairs

    from sns.diffusion import cosine_schedule, noise_pair
    from sns.refine import estimate_levels

    g, n = torch.Generator().manual_seed(7), 8192
    xp, xn = ar1_pairs(n, g)
    s2, s1 = torch.randint(0, S, (n,), generator=g), torch.randint(0, S, (n,), generator=g)
    y2, y1, _, e1 = noise_pair(cosine_schedule(S), xp, xn, s2, s1, generator=g)
    with torch.no_grad():
        _, i1 = estimate_levels(net, y2, y1)
        mse = (net(y2, y1, s2, s1).eps_next - e1).pow(2).mean(1)
    band, read_in = (s1 >= low) & (s1 <= high), (i1 >= low) & (i1 <= high)
    out = {k: ((i1 - s1)[m].abs().float().mean().item(), (i1 - s1)[m].float().mean().item(), mse[m].mean().item())
           for k, m in (("band", band), ("outside", ~band))}
    out["false_band"] = (read_in[~band].float().mean().item(),)  # outside levels read as in the band
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--band", type=int, nargs=2, default=[5, 15], metavar=("LOW", "HIGH"))
    p.add_argument("--factor", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=1500)
    args = p.parse_args()
    torch.set_num_threads(1)
    from test_levels import S

    from sns.diffusion import emphasis_weights

    low, high = args.band
    w = emphasis_weights(S, low, high, args.factor)
    rows = {"uniform levels": (None, True), f"emphasis {low}..{high} x{args.factor:g}": (w, True),
            f"emphasis {low}..{high} x{args.factor:g}, heads not adjusted (ablation)": (w, False)}
    res = {k: [score(train(s, w, args.steps, adj), low, high) for s in args.seeds] for k, (w, adj) in rows.items()}
    print(f"AR(1) field, S = {S}, {args.steps} steps of batch 256, seeds {args.seeds}; band = levels {low}..{high}"
          f" (the emphasis draws {float(w[low:high + 1].sum()):.0%} of the levels there)\n")
    print("| training | i1 MAE, band | i1 bias, band | eps MSE, band | i1 MAE, outside | i1 bias, outside "
          "| eps MSE, outside | outside read in the band |\n" + "|---" * 8 + "|")
    for k, rs in res.items():
        cells = []
        for part in ("band", "outside"):
            for j, fmt in enumerate(("{:.2f}", "{:+.2f}", "{:.4f}")):
                v = np.array([r[part][j] for r in rs])
                cells.append(f"{fmt.format(v.mean())} ± {fmt.format(v.std()).lstrip('+')}")
        v = np.array([r["false_band"][0] for r in rs])
        cells.append(f"{v.mean():.1%} ± {v.std():.1%}")
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
