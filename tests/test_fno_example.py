"""The FNO worked example (scripts/fno_surrogate.py, issue 17): a third-party model trained in
physical units by its own loop, named by its import path on the sns-rollout command line, rolls
out and evaluates like any sns surrogate.  With neuraloperator installed (extra ``fno``) the
example's own ``make_fno`` is used; without it, a small spectral-convolution stand-in written here."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TINY_FNO = textwrap.dedent('''
    """A small FNO (spectral convolution + pointwise mixing), standing in for neuraloperator's."""
    import json
    from pathlib import Path

    import torch
    from torch import nn

    from fno_surrogate import ResidualStep


    class SpectralConv(nn.Module):
        def __init__(self, width, modes):
            super().__init__()
            self.modes = modes
            scale = 1.0 / (width * width)
            self.w = nn.Parameter(scale * torch.randn(2, width, width, modes, modes, 2))

        def forward(self, x):
            B, C, H, W = x.shape
            f = torch.fft.rfft2(x)
            out = torch.zeros(B, C, H, W // 2 + 1, dtype=f.dtype)
            m = self.modes
            for k, rows in enumerate((slice(0, m), slice(H - m, H))):
                w = torch.view_as_complex(self.w[k].contiguous())
                out[:, :, rows, :m] = torch.einsum("bixy,ioxy->boxy", f[:, :, rows, :m], w)
            return torch.fft.irfft2(out, s=(H, W))


    class TinyFNO(nn.Module):
        def __init__(self, channels=1, width=8, modes=4, n_layers=2):
            super().__init__()
            self.lift = nn.Conv2d(channels, width, 1)
            self.spectral = nn.ModuleList(SpectralConv(width, modes) for _ in range(n_layers))
            self.mix = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(n_layers))
            self.proj = nn.Conv2d(width, channels, 1)

        def forward(self, x):
            h = self.lift(x)
            for s, m in zip(self.spectral, self.mix):
                h = torch.nn.functional.gelu(s(h) + m(h))
            return self.proj(h)


    def make(weights=None, **hp):
        step = ResidualStep(TinyFNO(**hp))
        if weights is not None:
            step.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return step
''')


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """(import path of the factory, factory callable, its size kwargs)."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    try:
        import neuralop  # noqa: F401
    except ImportError:
        (tmp_path / "tiny_fno_sns_test.py").write_text(TINY_FNO)
        monkeypatch.syspath_prepend(str(tmp_path))
        import tiny_fno_sns_test

        yield "tiny_fno_sns_test:make", tiny_fno_sns_test.make, {"width": 8, "modes": 4, "n_layers": 2}
        sys.modules.pop("tiny_fno_sns_test", None)
    else:
        import fno_surrogate

        yield "fno_surrogate:make_fno", fno_surrogate.make_fno, {"width": 8, "modes": 4, "n_layers": 2}
    sys.modules.pop("fno_surrogate", None)


def test_fno_from_the_command_line_rolls_out_and_evaluates(factory, tmp_path):
    import fno_surrogate
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH
    from sns.evaluation import evaluate
    from sns.cli.rollout import run_rollout
    from sns.data.generate import generate_dataset
    from sns.data.windows import WindowDataset
    from sns.rollout import open_rollout

    spec, make, hp = factory
    small = {"n_frames": 12, "spinup_steps": 50, "trajectories": {"train": 2, "valid": 1, "test": 1}}
    data = generate_dataset("kolmogorov", "cpu", out=tmp_path / "kolmogorov-cpu", overrides=small, progress=None)
    torch.manual_seed(0)
    step = make(**hp)
    assert step.units == "physical"
    losses = fno_surrogate.train(step, data, steps=3, batch=8)  # the user's own loop, physical units
    assert len(losses) == 3 and all(np.isfinite(losses))
    weights = tmp_path / "fno.pt"
    fno_surrogate.save_weights(step, weights)
    step.eval()

    out = tmp_path / "fno.zarr"
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        kwargs = ", ".join(f"{k}: {v}" for k, v in {"weights": str(weights), **hp}.items())
        cfg = compose(config_name="rollout", overrides=[
            f"surrogate={spec}", "surrogate_units=physical", f"surrogate_kwargs={{{kwargs}}}",
            f"data_dir={data}", "n_steps=5", "trajectories=1", f"out={out}"])
        run_rollout(cfg)
    store = open_rollout(out)
    assert store.attrs["rollout_status"] == "completed" and store.attrs["surrogate_kind"] == "import"
    assert store.attrs["surrogate_units"] == "physical"

    # the same states as stepping the FNO by hand in physical units
    ds = WindowDataset(data / "test.zarr", history=1, horizon=1, stride=1)
    x = ds.denormalise(ds[0][0][None])
    states = [x]
    with torch.no_grad():
        for _ in range(5):
            states.append(step(states[-1]))
    by_hand = torch.stack(states, 1)[:, :, :]  # (1, 6, C, H, W)
    stored = ds.denormalise(torch.from_numpy(store["state"].values))
    scale = float(by_hand.abs().max())
    np.testing.assert_allclose(stored.numpy(), by_hand.numpy(), atol=1e-5 * scale, rtol=0)

    report = evaluate(data / "test.zarr", {"FNO": out}, tmp_path / "report", spectrum_steps=[0, 5])
    rows = {r["method"]: r for r in report["rows"]}
    assert "FNO" in rows and np.isfinite(rows["FNO"]["spec_max_rel"])
    assert (tmp_path / "report" / "metrics.md").exists()
