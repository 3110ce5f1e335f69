"""Lorenz-63 / Lorenz-96: divergence, RK4 order, long-time boundedness."""

import math

import pytest
import torch

from sns.systems import make_system
from sns.systems.lorenz import Lorenz63, Lorenz96


def autograd_divergence(system, u: torch.Tensor) -> torch.Tensor:
    """Exact trace of d rhs / d u per sample, by autograd."""
    out = []
    for ui in u:
        jac = torch.autograd.functional.jacobian(lambda v: system.rhs(v[None])[0], ui)
        out.append(torch.diagonal(jac).sum())
    return torch.stack(out)


@pytest.mark.parametrize("system", [Lorenz63(), Lorenz63(sigma=7.0, beta=1.5), Lorenz96(dim=12, forcing=5.0)])
def test_divergence_matches_autograd(system):
    u = 5 * torch.randn(4, system.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(autograd_divergence(system, u), system.divergence(u), rtol=1e-6, atol=0)


def test_lorenz63_divergence_value():
    assert Lorenz63().divergence(torch.zeros(2, 3))[0] == pytest.approx(-(10 + 1 + 8 / 3))


def test_rk4_fourth_order():
    """Halving dt reduces the error at t = 0.5 by ~16 (classical RK4 is 4th order)."""
    u0 = torch.tensor([[1.0, 2.0, 20.0]], dtype=torch.float64)
    ref = Lorenz63(dt=1e-4).step(u0, 5_000)
    errs = [(Lorenz63(dt=dt).step(u0, round(0.5 / dt)) - ref).norm().item() for dt in (0.005, 0.0025)]
    assert 12 < errs[0] / errs[1] < 20


def test_lorenz63_stays_on_attractor_1e5_steps():
    """10^5 RK4 steps at dt = 0.01 (1000 MTU): bounded, and z keeps its attractor statistics."""
    sys = Lorenz63()
    u = sys.step(sys.initial_condition(8, torch.Generator().manual_seed(1)), 1000)
    zs = []
    for _ in range(100):
        u = sys.step(u, 1000)
        zs.append(u[:, 2].clone())
        assert torch.isfinite(u).all() and u.abs().max() < 60
    z = torch.stack(zs)
    # long-time mean of z on the attractor is ~23.5 (e.g. Sparrow 1982); sampled every 10 MTU
    assert 22.0 < z.mean().item() < 25.0
    assert 7.0 < z.std().item() < 10.0


def test_lorenz96_chaotic_and_bounded():
    sys = Lorenz96()
    g = torch.Generator().manual_seed(0)
    u = sys.step(sys.initial_condition(2, g), 2000)
    v = u + 1e-8 * torch.randn(u.shape, generator=g, dtype=u.dtype)
    u, v = sys.step(u, 200), sys.step(v, 200)  # 2 MTU to align with the leading direction
    d0 = (u - v).norm(dim=1)
    u, v = sys.step(u, 400), sys.step(v, 400)  # 4 MTU of exponential growth (still tiny)
    rate = torch.log((u - v).norm(dim=1) / d0).mean().item() / 4.0
    # leading Lyapunov exponent of L96 (D=40, F=8) is ~1.7 (Karimi & Paul 2010)
    assert 0.8 < rate < 2.5
    assert 2.0 < u.mean().item() < 3.0 and u.abs().max() < 20


def test_registry_and_errors():
    assert isinstance(make_system("lorenz63"), Lorenz63)
    with pytest.raises(ValueError, match="valid choices"):
        make_system("lorenz84")
    with pytest.raises(ValueError, match="dt must be positive"):
        Lorenz63(dt=0.0)
    with pytest.raises(ValueError, match="dim must be"):
        Lorenz96(dim=2)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        Lorenz63().step(torch.zeros(2, 4))
    assert math.isclose(Lorenz96(dim=40).divergence(torch.zeros(1, 40))[0].item(), -40.0)
