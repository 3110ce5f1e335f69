"""Hodgkin-Huxley neuron: resting potential, tonic spiking, analytic divergence, registry.

Reference numbers (standard parameters, modern convention): resting potential -65 mV at
I_ext = 0; at I_ext = 10 uA/cm^2 regular firing at ~68 Hz.  The interspike interval was
measured here as 14.63621 ms for RK4 steps dt = 0.001, 0.005, 0.01 and 0.025 ms (relative
spread < 1e-6), so the tolerance below (0.02 ms) is set by what a parameter or rate-function
error would change, not by the integrator.
"""

import numpy as np
import pytest
import torch
import zarr

from sns.metrics.chaos import interspike_intervals, isi_error
from sns.systems import get_preset, make_system
from sns.systems.base import System
from sns.systems.hodgkin_huxley import HodgkinHuxley, rates

ISI_REF = 14.6362  # ms at I_ext = 10, measured with dt = 0.001 ms (module docstring)


def simulate(sys: HodgkinHuxley, u: torch.Tensor, ms: float) -> np.ndarray:
    """V traces (B, steps) sampled every solver step."""
    n = round(ms / sys.dt)
    v = np.empty((u.shape[0], n))
    for i in range(n):
        u = sys.step(u)
        v[:, i] = u[:, 0].numpy()
    return v


def test_protocol_and_registry():
    sys = make_system("hodgkin_huxley")
    assert isinstance(sys, System) and isinstance(sys, HodgkinHuxley)
    assert sys.params["e_l"] == -54.387 and sys.params["g_na"] == 120.0 and sys.dt == 0.025
    preset = get_preset("hodgkin_huxley", "cpu")
    assert preset.system["dt"] * preset.save_every == pytest.approx(0.25)  # ms between frames (model config)
    assert preset.spinup_steps * preset.system["dt"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="dt = 0.05 ms is too large"):
        HodgkinHuxley(dt=0.05)
    with pytest.raises(ValueError, match="g_k must be >= 0"):
        HodgkinHuxley(g_k=-1.0)


def test_resting_potential_without_current():
    sys = HodgkinHuxley(i_ext=0.0)
    # gates adapted to V0; from -68 mV (and below) HH fires a rebound (anode-break) spike
    v0 = torch.tensor([-62.0, -66.0], dtype=torch.float64)
    u = torch.cat((v0[:, None], sys.steady_gates(v0)), dim=1)
    v = simulate(sys, u, 60.0)
    assert np.all(np.abs(v[:, -1] + 65.0) < 0.1)  # measured -64.996 mV
    assert v.max() < -60.0  # no spike (measured max -62.1 mV)


def test_tonic_spiking_interval():
    sys = HodgkinHuxley()  # I_ext = 10
    u = sys.step(sys.initial_condition(2, torch.Generator().manual_seed(3)), round(40 / sys.dt))
    v = simulate(sys, u, 80.0)
    for trace in v:
        isi = interspike_intervals(trace, sys.dt, threshold=0.0)
        assert len(isi) >= 4
        assert 14.0 < isi.mean() < 15.2  # the known ~68 Hz of HH at 10 uA/cm^2
        assert isi.mean() == pytest.approx(ISI_REF, abs=0.02)
        assert np.ptp(isi) < 0.01  # a limit cycle: regular firing
        # on the cycle: peak ~30.4 mV (h recovers only partly between spikes; below E_Na = 50),
        # after-hyperpolarisation ~-74.9 mV (above E_K = -77)
        assert 25.0 < trace.max() < 40.0
        assert -77.0 < trace.min() < -73.0
    a, b = (interspike_intervals(t, sys.dt) for t in v)
    assert isi_error(a, b)["rmse"] < 0.01  # two initial conditions, same cycle


def test_divergence_matches_autograd_trace():
    sys = HodgkinHuxley(i_ext=6.5)
    g = torch.Generator().manual_seed(0)
    v = torch.cat((torch.tensor([-40.0, -55.0, -65.0]), -90.0 + 140.0 * torch.rand(13, generator=g)))
    gates = torch.rand(16, 3, generator=g)
    u = torch.cat((v[:, None], gates), dim=1).double()
    jac = torch.func.vmap(torch.func.jacrev(lambda x: sys.rhs(x[None])[0]))(u)
    trace = torch.diagonal(jac, dim1=1, dim2=2).sum(-1)
    assert torch.isfinite(jac).all()
    torch.testing.assert_close(sys.divergence(u), trace, rtol=1e-10, atol=1e-10)
    assert (sys.divergence(u) < 0).all()  # every term is negative: volume contracts everywhere


def test_removable_singularities():
    v = torch.tensor([-40.0, -55.0, -40.0 + 1e-7, -55.0 - 1e-7, -40.0 + 1e-3], dtype=torch.float64,
                     requires_grad=True)
    a_m, _, _, _, a_n, _ = rates(v)
    assert a_m[0].item() == 1.0 and a_n[1].item() == pytest.approx(0.1, abs=1e-15)
    assert a_m[2].item() == pytest.approx(1.0 + 1e-8 / 2, rel=1e-12)  # 0.1 (V+40)/(1-exp(-(V+40)/10))
    assert a_n[3].item() == pytest.approx(0.1 * (1.0 - 1e-8 / 2), rel=1e-12)
    u = 1e-4
    assert a_m[4].item() == pytest.approx(u / -np.expm1(-u), rel=1e-13)
    (grad_m,) = torch.autograd.grad(a_m.sum(), v, retain_graph=True)
    (grad_n,) = torch.autograd.grad(a_n.sum(), v)
    assert torch.isfinite(grad_m).all() and torch.isfinite(grad_n).all()
    assert grad_m[0].item() == pytest.approx(0.05, rel=1e-6)  # d alpha_m/dV at -40: (1/2) (1/10)
    assert grad_n[1].item() == pytest.approx(0.005, rel=1e-6)  # d alpha_n/dV at -55: 0.1 (1/2) (1/10)


def test_generate_small_dataset(tmp_path):
    from sns.data.generate import generate_dataset

    out = generate_dataset("hodgkin_huxley", "cpu", out=tmp_path / "hh", dtype="float64", progress=None,
                           overrides={"n_frames": 12, "spinup_steps": 40,
                                      "trajectories": {"train": 2, "valid": 1, "test": 1}})
    root = zarr.open_group(str(out / "train.zarr"), mode="r")
    assert root.attrs["system"] == "hodgkin_huxley" and root.attrs["params"]["i_ext"] == 10.0
    data = np.asarray(root["state"][:])
    assert data.shape == (2, 12, 4) and np.isfinite(data).all()
    assert root["time"].attrs["units"] == "ms"
    assert np.diff(np.asarray(root["time"][:]))[0] == pytest.approx(0.25)
    assert ((data[..., 1:] >= 0) & (data[..., 1:] <= 1)).all()  # gates stay probabilities
    assert len(root.attrs["norm_scale"]) == 4
