"""A third-party surrogate through the whole pipeline: a neuraloperator FNO on Kolmogorov flow.

The FNO is the user's model, trained by the user's own loop in **physical units** (vorticity as the
data set stores it), knowing nothing of sns.  sns only needs a way to build it: the factory
:func:`make_fno` below, named by its import path, with the units it maps declared::

    pip install -e ".[fno]"                                   # neuraloperator
    sns-generate system=kolmogorov preset=cpu out=data/kolmogorov-cpu
    python scripts/fno_surrogate.py --data data/kolmogorov-cpu --steps 500 --out outputs/fno
    PYTHONPATH=scripts sns-rollout surrogate=fno_surrogate:make_fno surrogate_units=physical \\
        'surrogate_kwargs={weights: outputs/fno/fno.pt}' data_dir=data/kolmogorov-cpu n_steps=1000 \\
        out=outputs/fno/rollout.zarr
    # refined by an SNS pair denoiser trained by sns-train on the same data set:
    #   ... denoiser=outputs/den/denoiser.safetensors refiner.n_moves=2
    sns-evaluate reference=data/kolmogorov-cpu/test.zarr +rollouts.FNO=outputs/fno/rollout.zarr

``sns-rollout`` steps the FNO on the store's normalised states through the data set's
normalisation (:class:`sns.surrogates.loading.NormalisedView`), so the store and every metric are
those of any other surrogate.  The step is residual, ``x + FNO(x)`` (one frame ahead), like sns's
own surrogates.  Without neuraloperator, :func:`make_fno` raises an ImportError saying so (the
test suite then uses a small spectral-convolution stand-in of its own).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn


class ResidualStep(nn.Module):
    """``x -> x + net(x)`` on ``(B, C, H, W)`` vorticity in physical units."""

    units = "physical"  # what sns-rollout / SNSRefiner.from_file read: this model maps physical states

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def make_fno(weights: str | None = None, modes: int = 12, width: int = 32, n_layers: int = 4,
             channels: int = 1) -> ResidualStep:
    """The FNO step (``neuralop.models.FNO``), with trained ``weights`` (a state dict saved by
    :func:`main`; its hyperparameters are read from ``<weights>.json`` next to it)."""
    try:
        from neuralop.models import FNO
    except ImportError as err:
        raise ImportError("this example needs neuraloperator: pip install -e '.[fno]'") from err
    if weights is not None:
        meta = Path(str(weights) + ".json")
        if meta.exists():
            hp = json.loads(meta.read_text())
            modes, width, n_layers, channels = hp["modes"], hp["width"], hp["n_layers"], hp["channels"]
    net = FNO(n_modes=(modes, modes), in_channels=channels, out_channels=channels, hidden_channels=width,
              n_layers=n_layers)
    step = ResidualStep(net)
    if weights is not None:
        step.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return step


def save_weights(step: nn.Module, path: str | Path) -> None:
    """The step's tensors (``torch.save`` of a plain dict of tensors, so ``torch.load(...,
    weights_only=True)`` reads it back; neuraloperator's non-tensor ``_metadata`` entry is left out)."""
    torch.save({k: v for k, v in step.state_dict().items() if isinstance(v, torch.Tensor)}, path)


def physical_pairs(data: Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """All consecutive frame pairs of a split, in physical units, ``(N, C, H, W)`` each."""
    from sns.data.windows import WindowDataset

    ds = WindowDataset(data / f"{split}.zarr", history=1, horizon=1, stride=1)
    pairs = torch.stack([torch.cat([ds[i][0], ds[i][1]]) for i in range(len(ds))])  # normalised
    pairs = ds.denormalise(pairs)
    return pairs[:, :1], pairs[:, 1:]


def train(step: nn.Module, data: Path, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """The user's own training loop: one-step MSE on physical-unit pairs, Adam, a fixed step budget."""
    x, y = physical_pairs(data)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(step.parameters(), lr=lr)
    losses = []
    step.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = torch.mean((step(x[idx]) - y[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an sns data set (sns-generate / sns-import)")
    p.add_argument("--out", type=Path, default=Path("outputs/fno"))
    p.add_argument("--steps", type=int, default=500, help="optimizer steps of batch 32")
    p.add_argument("--modes", type=int, default=12)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    x, _ = physical_pairs(args.data, "valid")
    step = make_fno(modes=args.modes, width=args.width, n_layers=args.layers, channels=x.shape[1])
    t0 = time.perf_counter()
    losses = train(step, args.data, args.steps, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "fno.pt"
    save_weights(step, weights)
    Path(str(weights) + ".json").write_text(json.dumps({"modes": args.modes, "width": args.width,
                                                        "n_layers": args.layers, "channels": x.shape[1]}))
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s, loss {losses[0]:.3g} -> {losses[-1]:.3g}; "
          f"weights {weights}")
    print(f"roll out: PYTHONPATH={Path(__file__).resolve().parent} sns-rollout surrogate=fno_surrogate:make_fno "
          f"surrogate_units=physical 'surrogate_kwargs={{weights: {weights}}}' data_dir={args.data} n_steps=1000")


if __name__ == "__main__":
    main()
