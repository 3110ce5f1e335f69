"""Two-scale Lorenz-96: RHS against a plain loop, h = 0 decoupling, energy identity,
divergence, RK4 order against DOP853, and data generation of the slow variables."""

import json

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from sns.systems import get_preset, make_system
from sns.systems.lorenz import Lorenz96
from sns.systems.lorenz96_two_scale import Lorenz96TwoScale

SETTINGS = [  # (K, J, F, b, c, h)
    (8, 32, 20.0, 10.0, 10.0, 1.0),
    (8, 32, 18.0, 10.0, 4.0, 2.0),
    (5, 3, 7.5, 3.0, 1.7, 0.6),
]


def loop_rhs(state: np.ndarray, K: int, J: int, F: float, b: float, c: float, h: float) -> np.ndarray:
    """The equations written out index by index (Y_{j,k} at ring position k J + j)."""
    X, Y = state[:K], state[K:]
    N = K * J

    def y(j, k):  # Y_{j,k} with j allowed outside [0, J): wraps along the single ring
        return Y[(k * J + j) % N]

    out = np.zeros_like(state)
    for k in range(K):
        out[k] = (-X[(k - 1) % K] * (X[(k - 2) % K] - X[(k + 1) % K]) - X[k] + F
                  - h * c / b * sum(y(j, k) for j in range(J)))
        for j in range(J):
            out[K + k * J + j] = (-c * b * y(j + 1, k) * (y(j + 2, k) - y(j - 1, k)) - c * y(j, k)
                                  + h * c / b * X[k])
    return out


def random_states(sys: Lorenz96TwoScale, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 5.0 * torch.randn(batch, sys.K, generator=g, dtype=torch.float64) + 3.0
    y = 0.5 * torch.randn(batch, sys.K * sys.J, generator=g, dtype=torch.float64)
    return torch.cat((x, y), 1)


@pytest.mark.parametrize("setting", SETTINGS)
def test_rhs_matches_loop(setting):
    K, J, F, b, c, h = setting
    sys = Lorenz96TwoScale(K=K, J=J, F=F, b=b, c=c, h=h)
    u = random_states(sys, 3, seed=K + J)
    got = sys.rhs(u).numpy()
    for i in range(u.shape[0]):
        ref = loop_rhs(u[i].numpy(), K, J, F, b, c, h)
        np.testing.assert_allclose(got[i], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_h_zero_decouples():
    sys = Lorenz96TwoScale(F=18.0, h=0.0)
    u = random_states(sys, 4, seed=1)
    x, _ = sys.split(u)
    torch.testing.assert_close(sys.observe(sys.rhs(u)), Lorenz96(dim=8, forcing=18.0).rhs(x), rtol=1e-14, atol=1e-12)
    # and the fast variables no longer see X
    u2 = u.clone()
    u2[:, : sys.K] += 3.0
    torch.testing.assert_close(sys.split(sys.rhs(u2))[1], sys.split(sys.rhs(u))[1], rtol=0, atol=0)
    # with h > 0 they do (the check above can fail)
    coupled = Lorenz96TwoScale(F=18.0, h=1.0)
    assert (coupled.split(coupled.rhs(u2))[1] - coupled.split(coupled.rhs(u))[1]).abs().min() > 0.29


@pytest.mark.parametrize("setting", SETTINGS)
def test_energy_identity(setting):
    """u . rhs(u) = F sum X - sum X^2 - c sum Y^2: advection and coupling conserve E."""
    K, J, F, b, c, h = setting
    for forcing in (0.0, F):
        sys = Lorenz96TwoScale(K=K, J=J, F=forcing, b=b, c=c, h=h)
        u = random_states(sys, 5, seed=7)
        x, y = sys.split(u)
        de_dt = (u * sys.rhs(u)).sum(-1)
        damping = -(x * x).sum(-1) - c * (y * y).sum(-1) + forcing * x.sum(-1)
        scale = (u.abs() * sys.rhs(u).abs()).sum(-1)  # size of the cancelling terms
        assert ((de_dt - damping).abs() / scale).max() < 1e-13
        assert ((sys.energy_rate(u) - damping).abs() / scale).max() < 1e-14
        torch.testing.assert_close(sys.energy(u), 0.5 * (u * u).sum(-1), rtol=0, atol=0)
        if forcing == 0.0:
            # the quadratic part alone is a big number that cancels (h > 0: the coupling terms too)
            assert (de_dt - damping).abs().max() < 1e-10 * (u * sys.rhs(u)).abs().sum(-1).max()


def test_divergence_matches_autograd():
    sys = Lorenz96TwoScale(K=4, J=3, c=4.0, h=2.0)
    u = random_states(sys, 2, seed=3)
    for ui, div in zip(u, sys.divergence(u)):
        jac = torch.autograd.functional.jacobian(lambda v: sys.rhs(v[None])[0], ui)
        assert torch.diagonal(jac).sum().item() == pytest.approx(div.item(), rel=1e-12)
    assert div.item() == pytest.approx(-(4 + 4.0 * 12))


def test_rk4_order_against_dop853():
    """0.1 MTU from a point on the attractor: error vs DOP853 (rtol 1e-12) falls ~16x per halving."""
    sys = Lorenz96TwoScale()
    u0 = sys.step(sys.initial_condition(1, torch.Generator().manual_seed(0)), 1500)
    t_end = 0.1
    ref = solve_ivp(lambda t, v: loop_rhs(v, 8, 32, 20.0, 10.0, 10.0, 1.0), (0.0, t_end),
                    u0[0].numpy(), method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    errs = []
    for dt in (0.004, 0.002, 0.001):
        s = Lorenz96TwoScale(dt=dt)
        errs.append(np.linalg.norm(s.step(u0, round(t_end / dt))[0].numpy() - ref))
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(13 < r < 19 for r in ratios), (errs, ratios)
    # the default dt = 0.001: 2 frames (0.1 MTU) off by < 1e-4 (|u| ~ 15, float32 storage ~1e-6 relative)
    assert errs[2] < 1e-4


def test_presets_and_validation():
    cpu, paper = get_preset("lorenz96_two_scale", "cpu"), get_preset("lorenz96_two_scale", "paper")
    for pre, h in ((cpu, 2.0), (paper, 2.0)):  # the measured uncertain regime (strong coupling)
        assert pre.system["dt"] * pre.save_every == pytest.approx(0.05)
        assert (pre.system["K"], pre.system["J"], pre.system["F"], pre.system["b"], pre.system["c"],
                pre.system["h"]) == (8, 32, 20.0, 10.0, 10.0, h)
    sys = make_system("lorenz96_two_scale", c=4.0, h=2.0, F=18.0)
    assert sys.params == {"K": 8, "J": 32, "F": 18.0, "b": 10.0, "c": 4.0, "h": 2.0, "dt": 0.001}
    assert sys.dim == 8 + 256 and sys.observe(sys.initial_condition(3)).shape == (3, 8)
    with pytest.raises(ValueError, match="K must be"):
        Lorenz96TwoScale(K=3)
    with pytest.raises(ValueError, match="c must be positive"):
        Lorenz96TwoScale(c=0.0)
    with pytest.raises(ValueError, match=r"\(B, 264\)"):
        sys.step(torch.zeros(2, 8))


def test_generate_slow_variables(tmp_path):
    import zarr

    from sns.data.generate import generate_dataset, trajectory_seed
    from sns.data.io import open_dataset

    overrides = {"n_frames": 6, "spinup_steps": 200, "trajectories": {"train": 2, "valid": 1, "test": 1}}
    out = generate_dataset("lorenz96_two_scale", "cpu", out=tmp_path / "l96ts", dtype="float64", progress=None,
                           params={"c": 4.0, "h": 2.0}, overrides=overrides)
    ds = open_dataset(out)
    var = ds[ds.attrs["variable"]]
    assert var.dims == ("trajectory", "time", "dim") and var.shape == (2, 6, 8)
    params = ds.attrs["params"]
    assert params == {"K": 8, "J": 32, "F": 20.0, "b": 10.0, "c": 4.0, "h": 2.0, "dt": 0.001}
    assert ds.attrs["param_units"]["dt"] == "MTU" and ds.attrs["system"] == "lorenz96_two_scale"
    assert len(ds.attrs["norm_scale"]) == 1  # pooled over the statistically identical X_k
    np.testing.assert_allclose(np.diff(ds["time"].values), 0.05, rtol=1e-9)
    # the stored frames are X of one integration from trajectory 1's initial condition
    sys = Lorenz96TwoScale(**params)
    u = sys.initial_condition(1, torch.Generator().manual_seed(trajectory_seed(0, "train", 1)))
    u = sys.step(u, 200)
    frames = [sys.observe(u)]
    for _ in range(5):
        u = sys.step(u, 50)
        frames.append(sys.observe(u))
    np.testing.assert_allclose(var.values[1], torch.cat(frames).numpy(), rtol=1e-6, atol=1e-5)
    assert json.loads(json.dumps(dict(zarr.open_group(str(out / "test.zarr"), mode="r").attrs)))["split"] == "test"


def test_generate_config_composes():
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="generate", overrides=["system=lorenz96_two_scale", "preset=cpu",
                                                         "+system.params.c=4"])
    assert cfg.system.name == "lorenz96_two_scale" and cfg.system.dtype == "float64"
    assert cfg.out == "data/lorenz96_two_scale-cpu" and cfg.system.params.c == 4
