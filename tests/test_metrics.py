"""Numbers for sns.metrics: analytic spectra, Parseval, translations, ramps, known decays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sns.metrics import (
    RunningSpaceTimeCorrelation,
    RunningSpectrum,
    autocorrelation,
    blowup_step,
    correlation_time,
    energy_spectrum,
    enstrophy,
    kinetic_energy,
    mse_series,
    pearson_series,
    radial_correlation,
    rate_of_change,
    space_time_correlation,
    spatiotemporal_correlation,
    spectrum_distance,
    wasserstein1_per_coordinate,
)


def _grid(n: int, length: float) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(n) * length / n
    y, x = np.meshgrid(c, c, indexing="ij")  # (y, x) axis order
    return y, x


@pytest.mark.parametrize(
    ("length", "mx", "my"), [(2 * math.pi, 3, 0), (2 * math.pi, 3, 4), (3.0, 3, 4), (5.0, 0, 7)]
)
def test_single_mode_lands_in_its_shell(length: float, mx: int, my: int) -> None:
    n, a = 32, 2.5
    y, x = _grid(n, length)
    kx, ky = 2 * math.pi / length * mx, 2 * math.pi / length * my
    w = a * np.cos(kx * x + ky * y + 0.3)
    k, e = energy_spectrum(w, length=length)
    shell = round(math.hypot(mx, my))
    # psi = w / |k|^2, |u|^2 = a^2 / |k|^2 sin^2(.), mean 1/2: KE = a^2 / (4 |k|^2).
    expected = a**2 / (4 * (kx**2 + ky**2))
    assert k[shell] == pytest.approx(2 * math.pi / length * shell)
    assert e[shell] == pytest.approx(expected, rel=1e-12)
    assert np.delete(e, shell).max() < 1e-12 * expected
    assert kinetic_energy(w, length=length) == pytest.approx(expected, rel=1e-12)


def test_parseval_random_field_and_broadcasting() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 24, 24))  # (time, layer, y, x): QG-like
    k, e = energy_spectrum(w, length=2.0)
    assert e.shape == (3, 2, k.size)
    assert k.size == round(12 * math.sqrt(2)) + 1
    ke = kinetic_energy(w, length=2.0)
    np.testing.assert_allclose(e.sum(-1), ke, rtol=1e-6)
    assert np.all(e[..., 0] < 1e-20 * ke)  # zero-mean velocity: no energy in shell 0
    # Per-frame spectra equal the spectra of each frame alone (broadcasting is exact).
    _, e12 = energy_spectrum(torch.from_numpy(w[1, 0]), length=2.0)
    np.testing.assert_allclose(e[1, 0], e12, rtol=1e-12, atol=1e-30)
    # Independent Parseval check: velocity from the stream function by numpy FFTs.
    wh = np.fft.fft2(w[0, 1])
    kk = 2 * math.pi / 2.0 * np.fft.fftfreq(24, d=1 / 24)
    ky, kx = kk[:, None], kk[None, :]
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    ky[12] = 0.0  # Nyquist derivatives are zero (sns.systems.spectral convention)
    kx = kx.copy()
    kx[:, 12] = 0.0
    psih = wh / k2
    psih[0, 0] = 0
    u = np.fft.ifft2(1j * ky * psih).real
    v = np.fft.ifft2(-1j * kx * psih).real
    assert e[0, 1].sum() == pytest.approx(0.5 * np.mean(u**2 + v**2), rel=1e-10)


def test_enstrophy() -> None:
    n = 16
    y, x = _grid(n, 2 * math.pi)
    w = np.stack([1.5 * np.sin(2 * x), 3.0 * np.cos(x + y)])
    np.testing.assert_allclose(enstrophy(w), [0.5 * 1.5**2 / 2, 0.5 * 9.0 / 2], rtol=1e-12)


def test_running_spectrum_chunked_equals_all_at_once() -> None:
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((2, 17, 2, 16, 16))  # (trajectory, time, layer, y, x)
    k, e = energy_spectrum(frames)
    acc = RunningSpectrum(frame_ndim=3)
    for s in range(0, 17, 5):  # uneven chunks of time
        acc.update(frames[:, s : s + 5])
    k2, st = acc.result()
    flat = e.reshape(-1, 2, k.size)
    np.testing.assert_array_equal(k, k2)
    assert int(st["count"]) == 34
    np.testing.assert_allclose(st["mean"], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st["std"], flat.std(0), rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(st["min"], flat.min(0), rtol=1e-12)
    np.testing.assert_allclose(st["max"], flat.max(0), rtol=1e-12)
    with pytest.raises(ValueError, match="frame shape changed"):
        acc.update(rng.standard_normal((3, 2, 8, 8)))
    with pytest.raises(RuntimeError):
        RunningSpectrum().result()
    with pytest.raises(ValueError, match="frame_ndim"):
        RunningSpectrum(frame_ndim=4)


def test_spatiotemporal_correlation_of_translation() -> None:
    n, m, shift, t_len = 32, 3, 2, 12
    _, x = _grid(n, 2 * math.pi)
    base = np.cos(m * x) + 5.0  # spatial mean removed by C
    traj = np.stack([np.roll(base, shift * t, axis=-1) for t in range(t_len)])
    c = spatiotemporal_correlation(traj, max_lag=6)
    tau = np.arange(7)
    np.testing.assert_allclose(c, np.cos(m * shift * 2 * math.pi / n * tau), atol=1e-12)
    assert c[0] == pytest.approx(1.0, abs=1e-14)
    # (N, T, ...) with time_axis=1: average over trajectories of the same C.
    batch = np.stack([traj, 2.0 * traj])
    np.testing.assert_allclose(spatiotemporal_correlation(batch, 6, time_axis=1), c, atol=1e-12)
    with pytest.raises(ValueError, match="max_lag"):
        spatiotemporal_correlation(traj, 12)


def test_space_time_correlation_of_translating_mode() -> None:
    """A mode cos(m x - c t) translating by ``shift`` cells per frame: C(r, tau) = cos(m (r_x - shift tau) 2 pi / N)."""
    n, m, shift, t_len, lag = 32, 3, 2, 15, 6
    _, x = _grid(n, 2 * math.pi)
    base = 0.7 * np.cos(m * x) + 5.0  # amplitude and mean drop out
    traj = np.stack([np.roll(base, shift * t, axis=-1) for t in range(t_len)])  # (T, N, N)
    batch = np.stack([traj, 3.0 * np.roll(traj, 5, axis=-2)])  # a second IC: other amplitude, shifted in y
    c = space_time_correlation(batch, lag)
    assert c.shape == (lag + 1, n, n)
    r_x = np.arange(n)
    tau = np.arange(lag + 1)
    expect = np.cos(m * 2 * math.pi / n * (r_x[None, :] - shift * tau[:, None]))  # (tau, r_x), any r_y
    np.testing.assert_allclose(c, np.broadcast_to(expect[:, None, :], c.shape), atol=1e-12)
    # C(r = 0, tau) is the paper's C(tau).
    np.testing.assert_allclose(c[:, 0, 0], spatiotemporal_correlation(batch, lag, time_axis=1), atol=1e-12)
    # isotropic profile: at |r| = 0 it is C(tau); profiles are bounded by 1
    r, prof = radial_correlation(c, length=2 * math.pi)
    assert prof.shape == (lag + 1, n // 2 + 1) and r[1] == pytest.approx(2 * math.pi / n)
    np.testing.assert_allclose(prof[:, 0], c[:, 0, 0], atol=1e-12)
    assert np.all(np.abs(prof) <= 1 + 1e-12)


def test_running_space_time_correlation_chunked_equals_all_at_once() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40, 2, 16, 16))  # two layers
    x = np.cumsum(x, axis=1)  # correlated in time
    full = space_time_correlation(x, 7)
    assert full.shape == (8, 2, 16, 16)
    acc = RunningSpaceTimeCorrelation(7)
    for a, b in ((0, 3), (3, 4), (4, 21), (21, 40)):  # chunks shorter and longer than max_lag
        acc.update(x[:, a:b])
    np.testing.assert_allclose(acc.result(), full, atol=1e-12)
    np.testing.assert_allclose(full[0, :, 0, 0], 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="trajectories and the grid"):
        acc.update(x[:2, :3])
    with pytest.raises(ValueError, match="max_lag"):
        space_time_correlation(x, 40)
    with pytest.raises(RuntimeError, match="before any update"):
        RunningSpaceTimeCorrelation(2).result()


def test_rate_of_change_of_ramp() -> None:
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((8, 8))
    slope = rng.standard_normal((8, 8))
    dt = 0.25
    traj = np.stack([x0 + slope * dt * t for t in range(5)])
    r = rate_of_change(traj, dt)
    assert r.shape == (4,)
    np.testing.assert_allclose(r, np.abs(slope).mean(), rtol=1e-12)
    # Constant slope 3 everywhere: R = 3 exactly; batched layout keeps trajectories.
    ramp = 3.0 * dt * np.arange(5)[None, :, None] * np.ones((2, 5, 4))
    np.testing.assert_allclose(
        rate_of_change(ramp, dt, time_axis=1), 3.0 * np.ones((2, 4)), rtol=1e-12
    )


def test_mse_and_pearson_series() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((4, 10, 10))
    pred = ref.copy()
    pred[1] = 2.0 * ref[1] + 1.0  # affine: correlation 1
    pred[2] = -ref[2]
    pred[3] = ref[3] + 0.5
    np.testing.assert_allclose(pearson_series(pred, ref), [1.0, 1.0, -1.0, 1.0], atol=1e-12)
    mse = mse_series(pred, ref)
    assert mse[0] == 0.0 and mse[3] == pytest.approx(0.25)
    assert mse[2] == pytest.approx(4 * np.mean(ref[2] ** 2))


def test_correlation_time_of_exponential_decay() -> None:
    big_t, dt = 3.7, 0.05
    t = np.arange(400) * dt
    corr = np.exp(-t / big_t)
    res = correlation_time(corr, thresholds=(0.8, 0.9, 0.95), dt=dt)
    for thr, got in res.items():
        exact = big_t * math.log(1 / thr)
        assert got is not None and exact <= got <= exact + dt
    assert correlation_time(np.ones(5), thresholds=(0.9,))[0.9] is None
    nan_run = np.array([1.0, 0.99, np.nan, np.nan])
    assert correlation_time(nan_run, thresholds=(0.9,), dt=2.0, t0=1.0)[0.9] == 5.0


def test_spectrum_distance() -> None:
    e_ref = np.array([0.0, 1.0, 0.1, 0.01])
    rel, log_l2 = spectrum_distance(2.0 * e_ref, e_ref)
    assert math.isnan(rel[0])
    np.testing.assert_allclose(rel[1:], 1.0)
    assert log_l2 == pytest.approx(math.log(2.0))
    _, d0 = spectrum_distance(e_ref, e_ref)
    assert d0 == 0.0


def test_blowup_step() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 8, 8))
    assert blowup_step(x, factor=10.0, ref_rms=1.0) is None
    y = x.copy()
    y[13, 2, 5] = np.nan
    assert blowup_step(y, 10.0, 1.0) == 13
    growth = x * np.exp(0.5 * np.arange(20))[:, None, None]  # RMS ~ e^{0.5 t}: > 10 at t = 5
    expected = int(np.argmax(np.sqrt((growth**2).mean(axis=(1, 2))) > 10.0))
    assert blowup_step(growth, 10.0, 1.0) == expected and 4 <= expected <= 6
    batch = np.stack([x, y])  # (N, T, ...): one bad trajectory flags the step
    assert blowup_step(batch, 10.0, 1.0, time_axis=1) == 13


def test_wasserstein_of_shifted_gaussians() -> None:
    rng = np.random.default_rng(5)
    shift = np.array([0.5, 2.0, -1.0])
    a = rng.standard_normal((100_000, 3))
    b = rng.standard_normal((50_000, 3)) + shift
    w1 = wasserstein1_per_coordinate(a, b)
    np.testing.assert_allclose(w1, np.abs(shift), rtol=0.02)


def test_autocorrelation_of_ar1() -> None:
    rng = np.random.default_rng(6)
    phi = np.array([0.9, 0.5])
    n_traj, t_len = 20, 5000
    x = np.zeros((n_traj, t_len, 2))
    noise = rng.standard_normal((n_traj, t_len, 2))
    for t in range(1, t_len):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    rho = autocorrelation(x[:, 200:], max_lag=5, time_axis=1)
    np.testing.assert_allclose(rho[0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(rho, phi[None, :] ** np.arange(6)[:, None], atol=0.02)
