"""The window GAN of seed 000 (sns.generators.gan): the divergence estimator with numbers, the
mode-collapse report, training and generation plumbing, persistence and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sns.generators.gan import StepGenerator, WindowGAN, coverage_report, window_divergence
from sns.systems.lorenz import Lorenz63


def _linear_windows(a: torch.Tensor, dt: float, n_windows: int, length: int, seed: int = 0) -> torch.Tensor:
    """Exactly sampled windows of dx/dt = A x from random initial states."""
    m = torch.matrix_exp(a * dt)
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(n_windows, a.shape[0], dtype=torch.float64, generator=g)]
    for _ in range(length - 1):
        x.append(x[-1] @ m.T)
    return torch.stack(x, 1)


@pytest.mark.parametrize("a", [[[-0.1, 1.0], [-1.0, -0.1]], [[-0.5, 0.0, 0.2], [0.0, 0.3, 0.0], [0.1, 0.0, -1.0]]])
def test_window_divergence_is_the_trace_for_linear_flows(a):
    a = torch.tensor(a, dtype=torch.float64)
    w = _linear_windows(a, 0.05, 64, 8)
    div = window_divergence(w, 0.05, k=16, ridge=0.0)
    assert div.shape == (64, 7)
    # exact up to the conditioning of the neighbour sets (each spans a few nearby windows)
    torch.testing.assert_close(div, torch.full_like(div, float(a.trace())), atol=1e-6, rtol=0)


def _lorenz_frames(n: int, frames: int, seed: int = 0) -> torch.Tensor:
    sys = Lorenz63(dt=0.01)
    u = sys.step(sys.initial_condition(n, torch.Generator().manual_seed(seed)), 1000)
    out = [u]
    for _ in range(frames - 1):
        out.append(sys.step(out[-1], 5))
    return torch.stack(out, 1)  # frames every 0.05


def test_window_divergence_reads_lorenz63():
    """Median over 128 windows of 16 frames (0.05) within 10% of -(sigma + 1 + beta) = -13.67."""
    x = _lorenz_frames(64, 400)
    w = x.unfold(1, 16, 7).permute(0, 1, 3, 2).reshape(-1, 16, 3)
    w = w[torch.randperm(len(w), generator=torch.Generator().manual_seed(0))[:128]]
    med = float(window_divergence(w, 0.05).median())
    assert abs(med - (-(10 + 1 + 8 / 3))) < 0.1 * 13.67, med


def test_window_divergence_is_differentiable_and_checks_input():
    w = _linear_windows(torch.tensor([[-0.2, 1.0], [-1.0, 0.0]], dtype=torch.float64), 0.1, 8, 6).requires_grad_()
    window_divergence(w, 0.1, k=4).sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        window_divergence(torch.zeros(4, 3), 0.1)
    with pytest.raises(ValueError, match="k must be"):
        window_divergence(torch.zeros(2, 3, 2), 0.1, k=10)
    with pytest.raises(ValueError, match="dt must be"):
        window_divergence(torch.zeros(4, 3, 2), 0.0, k=2)


def test_coverage_report_detects_one_lobe():
    x = _lorenz_frames(4, 2000).numpy()
    ref, other = x[:2].reshape(-1, 3), x[2:].reshape(-1, 3)
    ok = coverage_report(other, ref)
    assert not ok["collapsed"] and ok["coverage"] >= 0.9 and ok["occupancy_tv"] < 0.15
    one_lobe = other[other[:, 0] > 0]
    bad = coverage_report(one_lobe, ref)
    assert bad["collapsed"] and bad["coverage"] < 0.75 and bad["occupancy_tv"] > 0.3
    fixed_point = np.tile(ref[:1], (500, 1))
    assert coverage_report(fixed_point, ref)["collapsed"]
    nans = np.full((100, 3), np.nan)
    r = coverage_report(nans, ref)
    assert r["collapsed"] and r["nonfinite"] == 1.0 and all(math.isnan(v) for v in r["w1"])
    with pytest.raises(ValueError, match="dimension"):
        coverage_report(np.zeros((5, 2)), ref)


def test_step_generator_starts_as_persistence_and_is_seeded():
    gen = StepGenerator(3)
    x = torch.randn(5, 3)
    torch.testing.assert_close(gen(x), x)
    a = gen.unroll(x, 4, generator=torch.Generator().manual_seed(1))
    b = gen.unroll(x, 4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 5, 3) and torch.equal(a, b)


@pytest.mark.parametrize("div", [False, True])
def test_fit_generate_save_load(tmp_path, div):
    x = _lorenz_frames(4, 120)
    gan, hist = WindowGAN.fit(x, 0.05, window=8, divergence_features=div, steps=20, batch=16, k=8, seed=0,
                              log_every=10)
    assert hist.step == [10, 20] and all(math.isfinite(v) for v in hist.loss_d + hist.loss_g + hist.supervised)
    assert gan.discriminator.hparams["n_features"] == (7 if div else 0)
    tr = gan.generate(x[:, 0], 30, seed=3)
    assert tr.shape == (4, 30, 3) and torch.isfinite(tr).all()
    torch.testing.assert_close(tr[:, 0], x[:, 0])
    again, _ = WindowGAN.fit(x, 0.05, window=8, divergence_features=div, steps=20, batch=16, k=8, seed=0,
                             log_every=10)
    assert torch.equal(again.generate(x[:, 0], 30, seed=3), tr)  # seeded end to end
    path = gan.save(tmp_path / "gan.pt")
    loaded = WindowGAN.load(path)
    assert torch.equal(loaded.generate(x[:, 0], 30, seed=3), tr)
    assert not list(tmp_path.glob("*.partial"))


def test_fit_rejects_bad_input():
    x = _lorenz_frames(2, 40)
    with pytest.raises(ValueError, match="NaN"):
        WindowGAN.fit(torch.where(torch.rand_like(x) < 0.01, float("nan"), x), 0.05, steps=1)
    with pytest.raises(ValueError, match="window"):
        WindowGAN.fit(x, 0.05, window=100, steps=1)
    with pytest.raises(ValueError, match="frame_dt"):
        WindowGAN.fit(x, -1.0, steps=1)
    with pytest.raises(ValueError, match="constant"):
        WindowGAN.fit(torch.ones(2, 40, 3), 0.05, steps=1)
    with pytest.raises(ValueError, match="floating"):
        WindowGAN.fit(torch.ones(2, 40, 3, dtype=torch.int64), 0.05, steps=1)
    with pytest.raises(ValueError, match="steps"):
        WindowGAN.fit(x, 0.05, steps=0)
    gan, _ = WindowGAN.fit(x, 0.05, window=8, steps=2, batch=8, k=4)
    with pytest.raises(ValueError, match="x0 must have shape"):
        gan.generate(torch.zeros(2, 4), 5)
