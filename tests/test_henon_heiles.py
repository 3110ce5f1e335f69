"""Henon-Heiles: Hamiltonian structure, energy conservation, reversibility, integrator order,
Lyapunov exponents (chaotic at E = 1/6, regular at E = 1/12), initial conditions, generation."""

import math

import numpy as np
import pytest
import torch
import zarr

from sns.systems import get_preset, make_system
from sns.systems.henon_heiles import ESCAPE_ENERGY, HenonHeiles, energy, potential, section_y_range
from sns.systems.symplectic import leapfrog, yoshida4


def test_rhs_is_hamiltonian_and_divergence_free():
    sys = HenonHeiles()
    u = 0.4 * torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    uu = u.clone().requires_grad_(True)
    (dh,) = torch.autograd.grad(energy(uu).sum(), uu)
    omega_grad = torch.cat((dh[:, 2:], -dh[:, :2]), -1)  # (dH/dp, -dH/dq)
    torch.testing.assert_close(sys.rhs(u), omega_grad, rtol=1e-12, atol=1e-14)
    for ui in u:
        jac = torch.autograd.functional.jacobian(lambda v: sys.rhs(v[None])[0], ui)
        assert abs(torch.diagonal(jac).sum().item()) < 1e-14
    assert (sys.divergence(u) == 0).all()
    # the saddles have U = 1/6 and zero force
    for q in ([0.0, 1.0], [math.sqrt(3) / 2, -0.5], [-math.sqrt(3) / 2, -0.5]):
        qt = torch.tensor([q], dtype=torch.float64)
        assert potential(qt).item() == pytest.approx(1 / 6, abs=1e-15)
        assert sys.grad_potential(qt).abs().max().item() < 1e-15


def test_initial_conditions_on_the_energy_shell():
    for e in (1 / 12, 1 / 8, ESCAPE_ENERGY):
        sys = HenonHeiles(energy=e)
        u = sys.initial_condition(500, torch.Generator().manual_seed(1))
        assert u.shape == (500, 4)
        assert (energy(u) - e).abs().max().item() < 1e-15
        assert (u[:, 0] == 0).all() and (u[:, 2] >= 0).all()
        lo, hi = section_y_range(e)
        assert lo < u[:, 1].min() and u[:, 1].max() < hi
    assert section_y_range(1 / 6) == pytest.approx((-0.5, 1.0), abs=1e-6)
    a = HenonHeiles().initial_condition(3, torch.Generator().manual_seed(5))
    b = HenonHeiles().initial_condition(3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_energy_conserved_long_run():
    """yoshida4 at dt 0.02: |H(t) - H(0)| < 2e-8 over 5000 steps (100 time units; measured 4.3e-9;
    10^5 steps, 64 orbits: 5.1e-9); leapfrog over 2000 steps: < 1e-4 (measured 2.0e-5)."""
    g = torch.Generator().manual_seed(0)
    for integ, n, tol in (("yoshida4", 5000, 2e-8), ("leapfrog", 2000, 1e-4)):
        sys = HenonHeiles(integrator=integ)
        u = sys.initial_condition(8, g)
        e0 = energy(u)
        worst = 0.0
        for _ in range(10):
            u = sys.step(u, n // 10)
            worst = max(worst, (energy(u) - e0).abs().max().item())
        assert worst < tol, (integ, worst)
        assert u[:, :2].norm(dim=1).max() < 1.0  # bounded inside the triangle U = 1/6


def test_time_reversible():
    for integ in ("yoshida4", "leapfrog"):
        sys = HenonHeiles(integrator=integ)
        u0 = sys.initial_condition(4, torch.Generator().manual_seed(2))
        flip = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
        back = sys.step(sys.step(u0, 500) * flip, 500) * flip
        assert (back - u0).abs().max().item() < 1e-11


@pytest.mark.parametrize("integ,order", [("yoshida4", 4), ("leapfrog", 2)])
def test_convergence_order(integ, order):
    """Halving dt divides the error at t = 2 by 2^order (measured 16.0 and 4.0)."""
    u0 = HenonHeiles().initial_condition(4, torch.Generator().manual_seed(3))
    ref = HenonHeiles(dt=0.1 / 16, integrator="yoshida4").step(u0, 320)
    errs = [(HenonHeiles(dt=h, integrator=integ).step(u0, round(2.0 / h)) - ref).norm().item() for h in (0.1, 0.05)]
    ratio = errs[0] / errs[1]
    assert 2**order * 0.85 < ratio < 2**order * 1.15, (errs, ratio)


@pytest.mark.parametrize("step", [leapfrog, yoshida4])
def test_step_is_symplectic(step):
    sys = HenonHeiles()
    u0 = sys.initial_condition(1, torch.Generator().manual_seed(4))[0]

    def flow(u):
        q, p = step(u[None, :2], u[None, 2:], sys.grad_potential, 0.05, 20)
        return torch.cat((q, p), -1)[0]

    jac = torch.func.jacrev(flow)(u0)
    omega = torch.zeros(4, 4, dtype=torch.float64)
    omega[:2, 2:], omega[2:, :2] = torch.eye(2), -torch.eye(2)
    torch.testing.assert_close(jac.T @ omega @ jac, omega, rtol=0, atol=1e-12)
    assert torch.linalg.det(jac).item() == pytest.approx(1.0, abs=1e-12)


def _lyapunov(sys: HenonHeiles, u: torch.Tensor, t_total: float, d0: float = 1e-8) -> torch.Tensor:
    """Largest exponent per orbit: Benettin's two-trajectory method, renormalised every time unit."""
    v = u.clone()
    v[:, 0] += d0
    n = round(1.0 / sys.dt)
    logs = torch.zeros(u.shape[0], dtype=u.dtype)
    b = u.shape[0]
    for _ in range(round(t_total)):
        w = sys.step(torch.cat((u, v)), n)
        u, v = w[:b], w[b:]
        d = (v - u).norm(dim=1)
        logs += torch.log(d / d0)
        v = u + (v - u) * (d0 / d)[:, None]
    return logs / t_total


def test_lyapunov_chaotic_at_one_sixth_regular_at_one_twelfth():
    """E = 1/6, 8 random section points, 150 time units: exponents > 0.04, mean > 0.08 (measured
    0.066-0.192, mean 0.13); the orbit through the origin at E = 1/12 (a regular orbit):
    |lambda| < 0.01 (measured -1e-6 at 150 time units)."""
    chaotic = HenonHeiles(energy=1 / 6, dt=0.05)
    lam = _lyapunov(chaotic, chaotic.initial_condition(8, torch.Generator().manual_seed(0)), 150.0)
    assert lam.min() > 0.04 and lam.mean() > 0.08, lam
    e = 1 / 12
    regular = HenonHeiles(energy=e, dt=0.05)
    lam_r = _lyapunov(regular, torch.tensor([[0.0, 0.0, math.sqrt(2 * e), 0.0]], dtype=torch.float64), 150.0)
    assert abs(lam_r.item()) < 0.01, lam_r


def test_registry_presets_and_errors():
    assert isinstance(make_system("henon_heiles"), HenonHeiles)
    pre = get_preset("henon_heiles", "cpu")
    assert pre.system["energy"] == pytest.approx(1 / 6) and pre.save_every * pre.system["dt"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="<= 1/6"):
        HenonHeiles(energy=0.2)
    with pytest.raises(ValueError, match="energy must be positive"):
        HenonHeiles(energy=0.0)
    with pytest.raises(ValueError, match="valid choices"):
        HenonHeiles(integrator="rk4")
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        HenonHeiles().step(torch.zeros(2, 3))


def test_generate_small_dataset(tmp_path):
    from sns.data.generate import generate_dataset

    out = generate_dataset("henon_heiles", "cpu", out=tmp_path / "hh", dtype="float64", progress=None,
                           overrides={"n_frames": 20, "spinup_steps": 50,
                                      "trajectories": {"train": 2, "valid": 1, "test": 1}})
    root = zarr.open_group(str(out / "train.zarr"), mode="r")
    assert root.attrs["system"] == "henon_heiles" and root.attrs["params"]["integrator"] == "yoshida4"
    data = np.asarray(root["state"][:], dtype=np.float64)
    assert data.shape == (2, 20, 4)
    h = 0.5 * (data[..., 2] ** 2 + data[..., 3] ** 2) + potential(torch.from_numpy(data[..., :2])).numpy()
    assert np.abs(h - 1 / 6).max() < 1e-6  # float32 storage
    assert np.diff(np.asarray(root["time"][:]))[0] == pytest.approx(0.1)


def test_cli_generate(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "sns.cli.generate", "system=henon_heiles", f"out={out}",
           "overrides.n_frames=10", "overrides.spinup_steps=10", "overrides.trajectories.train=2",
           "overrides.trajectories.valid=1", "overrides.trajectories.test=1", "+system.params.energy=0.125",
           f"hydra.run.dir={tmp_path}/hydra"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "train  state [1]  trajectory 2 x time 10 x dim 4" in r.stdout
    root = zarr.open_group(str(out / "train.zarr"), mode="r")
    assert root.attrs["params"]["energy"] == 0.125
