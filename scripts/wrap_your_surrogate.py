"""Wrap your own surrogate with an SNS pair denoiser and roll it out for a long time.

Runnable example (CPU, < 1 min with the defaults)::

    python scripts/wrap_your_surrogate.py --steps 2000 --train-steps 800

What it does:

1. makes Lorenz-63 data with the built-in solver (saved every 0.05 MTU);
2. defines a *user surrogate*: a deliberately damped Lorenz-63 step
   ``F(x) = m + (1 - damping) (Phi(x) - m)`` (``Phi`` the exact step, ``m`` the data mean),
   which on its own collapses onto the mean;
3. trains a blind :class:`~sns.nets.mlp.MLPPairDenoiser` briefly on normalised pairs and
   exports it with :func:`sns.export.save_model` (schedule and normalisation in the file's
   metadata, as ``sns-train task=denoiser`` writes them; to ``--save``, or a temporary file),
   or uses the exported file ``--denoiser`` (e.g. ``sns-train task=denoiser`` on Lorenz-63);
4. wraps the surrogate, which maps *physical* states, with
   ``SNSRefiner.from_file(file, surrogate, units="physical")``: the refiner reads the
   schedule and the normalisation from the file (fixed levels by default, the best setting
   on Lorenz-63 in DESIGN.md section 5; ``--estimate-levels`` uses the heads), and rolls both
   out with :func:`sns.rollout.rollout`, streamed to ``--store`` if given;
5. prints the spread of z (truth ~ 8.6) and the denoiser calls per step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sns.diffusion import cosine_schedule, pair_dsm_loss
from sns.export import save_model
from sns.nets.mlp import MLPPairDenoiser
from sns.refine import SNSRefiner
from sns.rollout import rollout
from sns.systems.lorenz import Lorenz63

SAVE_EVERY = 5  # solver steps (dt = 0.01) per saved step


class DampedLorenz(torch.nn.Module):
    """The user's surrogate: an exact Lorenz-63 step pulled towards ``mean`` by ``damping``."""

    def __init__(self, mean: torch.Tensor, damping: float) -> None:
        super().__init__()
        self.system = Lorenz63()
        self.register_buffer("mean", mean)
        self.damping = damping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nxt = self.system.step(x.double(), SAVE_EVERY).to(x.dtype)
        return self.mean + (1 - self.damping) * (nxt - self.mean)


def make_data(n_traj: int, n_frames: int, seed: int) -> torch.Tensor:
    """``(n_traj, n_frames, 3)`` float32 Lorenz-63 states on the attractor."""
    system = Lorenz63()
    u = system.step(system.initial_condition(n_traj, torch.Generator().manual_seed(seed)), 1000)
    frames = [u]
    for _ in range(n_frames - 1):
        frames.append(system.step(frames[-1], SAVE_EVERY))
    return torch.stack(frames, 1).float()


def train(net: MLPPairDenoiser, xp: torch.Tensor, xn: torch.Tensor, steps: int, seed: int) -> None:
    schedule = cosine_schedule(net.n_levels)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for it in range(steps):
        idx = torch.randint(0, len(xp), (256,), generator=g)
        loss, parts = pair_dsm_loss(net, schedule, xp[idx], xn[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if it % max(1, steps // 5) == 0 or it == steps - 1:
            print(f"  train step {it:5d}  loss {loss.item():.3f}  mse {parts['mse'].item():.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, default=50, help="S, number of noise levels")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=800)
    p.add_argument("--denoiser", default=None,
                   help="use this exported denoiser (.safetensors: --save, or sns-train task=denoiser) instead of training")
    p.add_argument("--save", default=None, help="export the trained denoiser here (.safetensors)")
    p.add_argument("--damping", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=2000, help="rollout steps")
    p.add_argument("--batch", type=int, default=4, help="trajectories rolled out together")
    p.add_argument("--estimate-levels", action="store_true", help="use the level heads instead of fixed levels")
    p.add_argument("--fixed-levels", type=int, nargs=2, default=(0, 0), metavar=("I2", "I1"))
    p.add_argument("--proposal-sigma", type=float, default=0.0)
    p.add_argument("--store", default=None, help="zarr store for the refined rollout (default: in memory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead

    data = make_data(16, 500, args.seed)
    mean, std = data.mean((0, 1)), data.std((0, 1))
    z = (data - mean) / std
    xp, xn = z[:, :-1].reshape(-1, 3), z[:, 1:].reshape(-1, 3)

    tmp = tempfile.TemporaryDirectory()
    denoiser_file = args.denoiser
    if denoiser_file is None:
        spec = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": args.levels, "width": args.width}}
        net = MLPPairDenoiser(**spec["kwargs"])
        t0 = time.time()
        train(net, xp, xn, args.train_steps, args.seed)
        print(f"trained in {time.time() - t0:.1f} s")
        # the metadata sns-train writes: what the refiner needs to rebuild and normalise
        extra = {"task": "denoiser", "method": "sns",
                 "schedule": {"name": "cosine", "n_levels": args.levels, "kwargs": {}},
                 "data": {"system": "lorenz63", "norm_offset": mean.tolist(), "norm_scale": std.tolist()}}
        denoiser_file = save_model(net.eval(), spec, args.save or Path(tmp.name) / "denoiser.safetensors", extra)
        if args.save:
            print(f"exported the denoiser to {denoiser_file}")

    surrogate = DampedLorenz(mean, args.damping)  # maps physical Lorenz-63 states
    refiner = SNSRefiner.from_file(
        denoiser_file,
        surrogate,
        units="physical",  # shift/scale: the normalisation recorded in the file
        fixed_levels=None if args.estimate_levels else tuple(args.fixed_levels),
        proposal_sigma=args.proposal_sigma,
        clamp=5.0,
    )
    x0 = data[: args.batch, -1]
    for name, stepper, store in (("surrogate alone", surrogate, None), ("SNS-refined", refiner, args.store)):
        t0 = time.time()
        res = rollout(stepper, x0, args.steps, store=store, seed=args.seed, overwrite=True, data_rms=float(data.pow(2).mean().sqrt()))
        states = res.states if res.states is not None else None
        msg = f"{name:16s} status {res.status}, {res.steps_done} steps in {time.time() - t0:.1f} s"
        if states is not None:
            late = states[:, states.shape[1] // 2 :]
            msg += f", z std (second half) {late[..., 2].std().item():.2f} (truth {data[..., 2].std().item():.2f})"
        if res.calls_mean is not None:
            msg += f", {res.calls_mean:.2f} denoiser calls per step"
        print(msg)


if __name__ == "__main__":
    main()
