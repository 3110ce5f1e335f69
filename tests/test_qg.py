"""Tests of the two-layer QG solver (sns.systems.qg): inversion, linear theory, divergence, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from sns.systems.base import Preset, System
from sns.systems.qg import (
    JET_PARAMS,
    NORM_SCALES,
    PARAM_UNITS,
    PRESETS,
    ABHistory,
    TwoLayerQG,
)

JET = {k: v for k, v in JET_PARAMS.items() if k not in ("nx", "n_coarse")}


def _model(nx: int = 32, dtype: torch.dtype = torch.float64, **kw) -> TwoLayerQG:
    return TwoLayerQG(**{**JET, "nx": nx, "n_coarse": None, "dtype": dtype, **kw})


def _random_pv(m: TwoLayerQG, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Finite-amplitude zero-mean PV of the jet's scale (1e-5 and 1e-6 1/s)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 2, m.nx, m.nx, generator=g, dtype=torch.float64)
    q = q - q.mean(dim=(-2, -1), keepdim=True)
    q = q * torch.tensor([1e-5, 1e-6], dtype=torch.float64)[:, None, None]
    return q.to(m.dtype)


def test_protocol_and_metadata() -> None:
    m = _model()
    assert isinstance(m, System)
    assert m.field_names == ("pv",) and m.field_units == ("1/s",)
    assert set(m.params) == set(PARAM_UNITS)
    assert NORM_SCALES == (7.6382e-6, 3.0120e-7)
    assert m.F1 == pytest.approx(15000.0**-2 / 1.1) and m.F2 == pytest.approx(0.1 * m.F1)


def test_inversion_round_trip() -> None:
    m = _model(nx=32)
    q = _random_pv(m, batch=3)
    psi = m.streamfunction(q)
    q_back = m.pv(psi)
    assert ((q_back - q).abs().max() / q.abs().max()).item() < 1e-10
    psi_back = m.streamfunction(m.pv(psi))
    assert ((psi_back - psi).abs().max() / psi.abs().max()).item() < 1e-10


def test_inversion_analytic_modes() -> None:
    """Barotropic modes have q = lap(psi) in both layers; baroclinic ones feel the stretching."""
    m = _model(nx=32)
    x = (torch.arange(32, dtype=torch.float64) + 0.5) * m.L / 32
    k = 2 * math.pi * 3 / m.L
    wave = torch.cos(k * x)[None, :].expand(32, 32)  # (y, x), depends on x only
    psi_bt = torch.stack((wave, wave))[None]
    assert torch.allclose(m.pv(psi_bt), -(k**2) * psi_bt, rtol=0, atol=1e-12 * k**2)
    psi_bc = torch.stack((wave, -wave))[None]  # q1 = -(K^2 + 2 F1) psi1, q2 = -(K^2 + 2 F2) psi2
    expected = torch.stack((-(k**2 + 2 * m.F1) * wave, (k**2 + 2 * m.F2) * wave))[None]
    assert torch.allclose(m.pv(psi_bc), expected, rtol=0, atol=1e-12 * (k**2 + 2 * m.F1))
    assert torch.allclose(m.streamfunction(expected), psi_bc, rtol=0, atol=1e-12)


def _theory_growth(m: TwoLayerQG, k: float, l: float) -> tuple[float, np.ndarray]:
    """Fastest-growing solution of A phi = omega B phi for psi ~ phi exp(i(kx + ly - omega t))."""
    K2 = k * k + l * l
    B = np.array([[-(K2 + m.F1), m.F1], [m.F2, -(K2 + m.F2)]], dtype=complex)
    A = k * np.diag([m.U1, m.U2]) @ B + k * np.diag(m.Qy) + np.diag([0.0, 1j * m.rek * K2])
    omega, phi = scipy.linalg.eig(A, B)
    i = int(np.argmax(omega.imag))
    return float(omega[i].imag), phi[:, i]


def test_linear_baroclinic_instability_growth_rates() -> None:
    """Eigenmodes of linear two-layer theory grow in the solver at the theoretical rates."""
    nx, steps = 32, 480  # 20 days
    m = _model(nx=nx)
    dk = 2 * math.pi / m.L
    modes = [(kx, 0) for kx in range(4, 11)] + [(6, 1), (5, 2)]  # (k index, l index)
    x = (torch.arange(nx, dtype=torch.float64) + 0.5) * m.L / nx
    X, Y = x[None, :], x[:, None]
    psi = torch.zeros(1, 2, nx, nx, dtype=torch.float64)
    theory = {}
    for kx, ly in modes:
        sigma, phi = _theory_growth(m, kx * dk, ly * dk)
        theory[(kx, ly)] = sigma
        phase = torch.exp(1j * (kx * dk * X + ly * dk * Y))
        for layer in range(2):
            psi[0, layer] += 1e-3 * torch.real(complex(phi[layer]) * phase)  # psi ~ 1e-3 m^2/s
    q0 = m.pv(psi)
    assert q0.abs().max() < 1e-10  # tiny: nonlinear terms are negligible
    q1 = m.step(q0, steps)
    h0, h1 = torch.fft.rfft2(q0)[0], torch.fft.rfft2(q1)[0]
    T = steps * m.dt
    fastest = max(theory, key=theory.get)
    assert fastest == (6, 0)
    assert theory[fastest] == pytest.approx(4.4636e-8, rel=1e-3)  # 1/(259 days)
    library = m.linear_growth_rates()
    for kx, ly in modes:
        amp0 = h0[:, ly, kx].abs().norm()
        amp1 = h1[:, ly, kx].abs().norm()
        measured = math.log(amp1 / amp0) / T
        assert measured == pytest.approx(theory[(kx, ly)], rel=0.02), (kx, ly)
        assert library[ly, kx].item() == pytest.approx(theory[(kx, ly)], rel=1e-6)
    # the fastest-growing mode to a tighter tolerance than the task asks for
    m_fast = math.log(h1[:, 0, 6].abs().norm() / h0[:, 0, 6].abs().norm()) / T
    assert m_fast == pytest.approx(theory[fastest], rel=1e-3)


@pytest.mark.parametrize("rek", [7e-8, 1e-6, 0.0])
def test_divergence_matches_autograd_trace(rek: float) -> None:
    """tr(d rhs/d q) by autograd on an 8x8 grid, at a finite-amplitude state, equals divergence()."""
    m = _model(nx=8, rek=rek)
    q = _random_pv(m, batch=1)[0]
    jac = torch.autograd.functional.jacobian(lambda z: m.rhs(z[None])[0], q)  # (2, 8, 8, 2, 8, 8)
    trace = jac.reshape(128, 128).diagonal().sum().item()
    div = m.divergence(q[None])
    assert div.shape == (1,)
    # independent closed form over the full 8x8 grid of wavenumbers, mean excluded
    kf = 2 * math.pi / m.L * np.fft.fftfreq(8, d=1 / 8)
    K2 = kf[None, :] ** 2 + kf[:, None] ** 2
    closed = -rek * ((K2 + m.F1) / (K2 + m.F1 + m.F2)).sum() + rek * m.F1 / (m.F1 + m.F2)
    assert div.item() == pytest.approx(closed, rel=1e-12, abs=1e-300)
    if rek == 0.0:
        # advection alone conserves phase-space volume; scale: a typical Jacobian diagonal entry
        scale = jac.reshape(128, 128).diagonal().abs().max().item()
        assert abs(trace) < 1e-10 * max(scale, 1e-300) * 128
        assert div.item() == 0.0
    else:
        assert trace == pytest.approx(div.item(), rel=1e-6)
        assert div.item() < 0
        # roughly -rek per resolved mode of the lower layer (63 non-mean modes)
        assert -63 * rek < div.item() < -40 * rek


def test_batch_equals_single_runs() -> None:
    m = _model(nx=32)
    q = _random_pv(m, batch=3)
    out, hist = m.advance(q, 25)
    for b in range(3):
        single, h1 = m.advance(q[b : b + 1], 25)
        assert ((out[b : b + 1] - single).abs().max() / single.abs().max()).item() < 1e-12
        assert ((hist.prev[b : b + 1] - h1.prev).abs().max() / h1.prev.abs().max()).item() < 1e-12


def test_advance_chunks_equal_one_run() -> None:
    m = _model(nx=32)
    q = _random_pv(m, batch=2)
    full, _ = m.advance(q, 30)
    part, hist = m.advance(q, 10)
    assert isinstance(hist, ABHistory) and hist.prev is not None and hist.prev2 is not None
    for _ in range(2):
        part, hist = m.advance(part, 10, hist)
    scale = full.abs().max().item()
    assert (part - full).abs().max().item() < 1e-12 * scale
    # restarting the history (Euler every chunk) is close to, but not the same as, AB3
    restarted = m.advance(m.advance(m.advance(q, 10)[0], 10)[0], 10)[0]
    diff = (restarted - full).abs().max().item() / scale
    assert 1e-9 < diff < 1e-2
    # n = 0 is the identity
    same, h = m.advance(q, 0)
    assert same is q and h.prev is None


def test_looping_step_is_ab3() -> None:
    """`u = qg.step(u)` continues the AB3 history (issue 16): it equals one `advance` run.

    Fails where `step` restarts with forward Euler at every call (a first-order loop).
    """
    m = _model(nx=32)
    q = _random_pv(m, batch=2)
    full, _ = m.advance(q, 30)
    scale = full.abs().max().item()
    u = q
    for _ in range(30):
        u = m.step(u)
    assert (u - full).abs().max().item() < 1e-12 * scale
    # chunks of several steps, and copies of the returned state, continue as well
    u = m.step(q, 10)
    u = m.step(u.clone(), 15)
    u = m.step(u, 0)
    u = m.step(u, 5)
    assert (u - full).abs().max().item() < 1e-12 * scale
    # a new initial condition restarts: the same as a fresh object
    other = _random_pv(m, batch=2, seed=5)
    assert not m.continues(other)
    fresh = _model(nx=32)
    assert torch.equal(m.step(other, 7), fresh.step(other, 7))
    # ... so does a returned state modified in place, and anything after reset()
    u = m.step(q, 10)
    assert m.continues(u)
    u += 1e-9 * scale
    assert not m.continues(u)
    restarted = m.step(u, 20)
    assert torch.equal(restarted, _model(nx=32).advance(u, 20)[0])
    m.reset()
    assert not m.continues(restarted)
    # the restarted loop is the first-order-started integrator: measurably off AB3
    loop_euler = q
    for _ in range(30):
        loop_euler = m.advance(loop_euler, 1)[0]
    assert (loop_euler - full).abs().max().item() > 1e-6 * scale


def test_float32_tracks_float64() -> None:
    m64, m32 = _model(nx=32), _model(nx=32, dtype=torch.float32)
    q = _random_pv(m64, batch=2)
    a = m64.step(q, 50)
    b = m32.step(q.float(), 50)
    assert b.dtype == torch.float32
    assert ((b.double() - a).abs().max() / a.abs().max()).item() < 1e-4
    assert m32.divergence(b).dtype == torch.float32


def test_observe_eddy_block_average() -> None:
    m = TwoLayerQG(**{**JET, "nx": 16, "n_coarse": 4})
    q = _random_pv(m, batch=2)
    q = (
        q + 3e-5 * torch.linspace(0, 1, 16, dtype=torch.float64)[:, None]
    )  # a zonal-mean (y) profile
    obs = m.observe(q)
    assert obs.shape == (2, 2, 4, 4)
    eddy = q - q.mean(dim=-1, keepdim=True)
    manual = torch.empty(2, 2, 4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            manual[..., i, j] = eddy[..., 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].mean(dim=(-2, -1))
    assert ((obs - manual).abs().max() / manual.abs().max()).item() < 1e-12
    assert obs.sum(dim=-1).abs().max() < 1e-18  # no zonal mean left
    assert TwoLayerQG(nx=16, n_coarse=None).observe(q).shape == (2, 2, 16, 16)


def test_initial_condition_is_pyqg_like_and_seeded() -> None:
    m = _model(nx=32)
    a = m.initial_condition(3, torch.Generator().manual_seed(5))
    b = m.initial_condition(3, torch.Generator().manual_seed(5))
    assert a.shape == (3, 2, 32, 32) and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    # upper layer: 1e-6 * U(x) (constant along y) dominates; lower layer: 1e-7 Gaussian, zero mean
    assert 1e-7 < a[:, 0].std().item() < 1e-6
    assert a[:, 1].std().item() == pytest.approx(1e-7, rel=0.1)
    assert a[:, 1].mean(dim=(-2, -1)).abs().max() < 1e-20
    along_y = a[:, 0].std(dim=-2).mean().item()  # variation along y: only the 1e-7 parts
    assert along_y < 1.5e-7 < a[:, 0].mean(dim=-2).std().item()  # 1e-6/sqrt(12) = 2.9e-7
    assert m.initial_condition(1).dtype == torch.float64
    assert _model(nx=32, dtype="float32").initial_condition(2).dtype == torch.float32


def test_presets() -> None:
    assert set(PRESETS) == {"paper", "cpu"}
    paper, cpu = PRESETS["paper"], PRESETS["cpu"]
    assert isinstance(paper, Preset)
    assert paper.system == JET_PARAMS
    assert paper.save_every * paper.system["dt"] == 36_000.0
    assert paper.spinup_steps * paper.system["dt"] == pytest.approx(3.1104e9)
    assert cpu.save_every * cpu.system["dt"] == 36_000.0
    for preset, factor in ((paper, 4), (cpu, 2)):
        m = TwoLayerQG(**preset.system)
        assert m.nx // m.n_coarse == factor
        assert m.params == preset.system
    # the cpu preset changes only the grid: same physics and time step as the paper's
    assert {k: v for k, v in cpu.system.items() if k not in ("nx", "n_coarse")} == JET


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nx": 63}, "nx must be an even integer >= 4, got 63"),
        ({"nx": 0}, "got 0"),
        ({"nx": -8}, "got -8"),
        ({"nx": 64.0}, "got 64.0"),
        (
            {"nx": 64, "n_coarse": 48},
            r"n_coarse=48 must divide nx=64; valid choices: \[1, 2, 4, 8, 16, 32, 64\]",
        ),
        ({"nx": 64, "n_coarse": 0}, "n_coarse must be a positive integer or None, got 0"),
        ({"dt": 0.0}, "dt must be positive, got 0.0"),
        ({"dt": -3600.0}, "dt must be positive, got -3600.0"),
        ({"L": -1.0}, "L must be positive, got -1.0"),
        ({"rd": 0}, "rd must be positive, got 0"),
        ({"rek": -1e-8}, "rek must be >= 0, got -1e-08"),
        ({"beta": float("nan")}, "beta must be finite, got nan"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"dtype": torch.int32}, "dtype must be torch.float32 or torch.float64"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TwoLayerQG(**{"nx": 64, "n_coarse": None, **kwargs})


def test_bad_states() -> None:
    m = _model(nx=16)
    with pytest.raises(ValueError, match=r"\(B, 2, 16, 16\), got \(1, 2, 8, 8\)"):
        m.step(torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got \(2, 16, 16\)"):
        m.rhs(torch.zeros(2, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype torch.float32"):
        m.observe(torch.zeros(1, 2, 16, 16, dtype=torch.float32))
    with pytest.raises(ValueError, match="n must be a non-negative integer, got -1"):
        m.advance(torch.zeros(1, 2, 16, 16, dtype=torch.float64), -1)
    _, hist = m.advance(torch.zeros(2, 2, 16, 16, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="do not match a batch of 1"):
        m.advance(torch.zeros(1, 2, 16, 16, dtype=torch.float64), 1, hist)
    with pytest.raises(ValueError, match="batch must be a positive integer, got 0"):
        m.initial_condition(0)


@pytest.mark.slow
def test_cpu_preset_regime() -> None:
    """The cpu preset after its spin-up: eddying, statistically steady energy, chaotic (~4 min).

    Four trajectories in float32: kinetic energy over the 200 days after the
    spin-up stays within 25% of its mean with no collapse or blow-up, the
    coarse eddy PV has the paper's magnitude (within a factor 2 of
    NORM_SCALES), and a twin experiment gives a positive finite-time
    Lyapunov exponent.
    """
    preset = PRESETS["cpu"]
    m = TwoLayerQG(**preset.system, dtype=torch.float32)
    q, hist = m.advance(
        m.initial_condition(4, torch.Generator().manual_seed(0)), preset.spinup_steps
    )
    ke = []
    for _ in range(20):  # 200 days
        q, hist = m.advance(q, 240, hist)
        ke.append(m.kinetic_energy(q).mean().item())
    ke_t = torch.tensor(ke)
    assert 3e-5 < ke_t.mean().item() < 5e-4
    assert (ke_t / ke_t.mean() - 1).abs().max().item() < 0.25
    assert m.cfl(q).max().item() < 0.2
    std = m.observe(q).std(dim=(0, 2, 3))
    for layer in range(2):
        assert 0.5 < std[layer].item() / NORM_SCALES[layer] < 2.0
    # finite-time Lyapunov exponent by a twin run, renormalised every 10 days
    qd = q.double()
    m64 = TwoLayerQG(**preset.system, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    d0 = 1e-6 * qd.flatten(1).norm(dim=1)
    dq = torch.randn(qd.shape, generator=g, dtype=torch.float64)
    both = torch.cat([qd, qd + dq * (d0 / dq.flatten(1).norm(dim=1))[:, None, None, None]])
    logs, h2 = [], None
    for _ in range(8):  # 80 days
        both, h2 = m64.advance(both, 240, h2)
        d = (both[4:] - both[:4]).flatten(1).norm(dim=1)
        logs.append(torch.log(d / d0))
        s = (d0 / d)[:, None, None, None]
        both = torch.cat([both[:4], both[:4] + (both[4:] - both[:4]) * s])
        h2 = ABHistory(*(torch.cat([t[:4], t[:4] + (t[4:] - t[:4]) * s]) for t in h2))
    ftle = torch.stack(logs[2:]).mean().item() / (240 * 3600.0) * 86400  # 1/day
    assert ftle > 0.005  # measured 0.017 /day (57-day e-folding) at 20 years
