"""Chaos and embedding toolkit (sns.metrics.chaos): numbers on Lorenz-63 and on known signals.

Lorenz-63 references (sigma 10, rho 28, beta 8/3): correlation dimension D2 = 2.05
(Grassberger & Procaccia 1983), largest Lyapunov exponent 0.9056 (Sprott 2003), exponents
summing to the divergence -(sigma + 1 + beta) = -13.667 (Liouville).
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from sns.metrics import chaos
from sns.systems.lorenz import Lorenz63

D2_REF = 2.05
LAMBDA1_REF = 0.9056
DT = 0.02  # sampling interval of the test series (MTU)


@pytest.fixture(scope="module")
def lorenz() -> np.ndarray:
    """One Lorenz-63 trajectory, RK4 at dt = 0.02, 20 MTU transient dropped, 300 MTU kept: (15000, 3)."""
    sys = Lorenz63(dt=DT)
    u = sys.step(sys.initial_condition(1, torch.Generator().manual_seed(0)), round(20 / DT))
    out = np.empty((15000, 3))
    for i in range(len(out)):
        u = sys.step(u)
        out[i] = u[0].numpy()
    return out


# ----------------------------------------------------------------------------- delay embedding


def test_mutual_information_lorenz_delay(lorenz):
    mi = chaos.mutual_information(lorenz[:, 0], 60)
    assert mi.shape == (61,)
    assert mi[0] > mi[1] > mi[5] > 0
    tau = chaos.mi_delay(lorenz[:, 0], 60)
    # first MI minimum of Lorenz x: ~0.16-0.17 MTU in the literature (Abarbanel 1996); measured 8 x 0.02
    assert 0.1 <= tau * DT <= 0.25
    assert mi[tau] < mi[tau - 1] and mi[tau] <= mi[tau + 1]


def test_lorenz_x_embedding_dimension(lorenz):
    e = chaos.embed(lorenz[:, 0], max_lag=60, max_dim=6, max_points=5000)
    assert 3 <= e.dim <= 5  # measured: 3 (Takens bound 2 D2 + 1 ~ 5)
    assert e.points.shape == (15000 - (e.dim - 1) * e.delay, e.dim)
    assert e.fnn[0] > 0.9  # a scalar alone is no state
    assert e.fnn[1] > 0.02 and e.fnn[2] <= 0.01  # measured 0.057 and 0.0002


@pytest.mark.parametrize("samples_per_period", [20.0, 2 * math.pi * 10])  # commensurate and not
def test_sine_embeds_in_two_dimensions(samples_per_period):
    x = 2.0 * np.sin(2 * np.pi * np.arange(5000) / samples_per_period) + 0.5
    e = chaos.embed(x, max_lag=40)
    assert e.dim == 2
    quarter = round(samples_per_period / 4)
    assert chaos.fnn_dimension(x, delay=quarter) == 2
    fnn = chaos.false_nearest_neighbours(x, delay=quarter, max_dim=4)
    assert fnn[0] > 0.1 and np.all(fnn[1:] == 0)


def test_delay_embed_layout_and_errors():
    x = np.arange(10.0)
    y = chaos.delay_embed(x, dim=3, delay=2)
    np.testing.assert_array_equal(y[0], [0, 2, 4])
    np.testing.assert_array_equal(y[-1], [5, 7, 9])
    assert y.shape == (6, 3)
    assert chaos.delay_embed(x, dim=4, delay=3).shape == (1, 4)  # exactly (4 - 1) 3 + 1 = 10 samples
    with pytest.raises(ValueError, match=r"length 10 is too short .* dim=4, delay=4: needs at least .* = 13"):
        chaos.delay_embed(x, dim=4, delay=4)
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        chaos.delay_embed(x, dim=0, delay=1)
    with pytest.raises(ValueError, match="scalar series"):
        chaos.delay_embed(np.zeros((10, 2)), dim=2, delay=1)
    with pytest.raises(ValueError, match="too short for max_lag=20"):
        chaos.mutual_information(x, 20)
    with pytest.raises(ValueError, match="too short for false nearest neighbours with max_dim=5, delay=3"):
        chaos.false_nearest_neighbours(np.sin(np.arange(16.0)), delay=3, max_dim=5)


# ----------------------------------------------------------------------------- correlation dimension


def test_correlation_sum_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = np.cumsum(rng.normal(size=(400, 2)), axis=0) * 0.1  # time-ordered (a random walk)
    radii = np.array([0.05, 0.2, 0.5, 1.0, 3.0])
    for theiler in (0, 5):
        i, j = np.triu_indices(len(pts), k=1)
        keep = (j - i) > theiler
        d = pdist(pts)[keep]
        expected = np.array([(d <= r).mean() for r in radii])
        got = chaos.correlation_sum(pts, radii, theiler=theiler, max_points=None)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # subsampled: still a fraction in [0, 1], increasing
    c = chaos.correlation_sum(pts, radii, theiler=5, max_points=100)
    assert np.all(np.diff(c) >= 0) and 0 <= c[0] and c[-1] <= 1


def test_correlation_dimension_of_known_sets():
    rng = np.random.default_rng(1)
    square = np.c_[rng.random((6000, 2)), np.zeros(6000)]  # a 2-D set in R^3
    t = rng.random(6000) * 2 * np.pi
    circle = np.c_[np.cos(t), np.sin(t), np.zeros(6000)]
    cube = rng.random((6000, 3))
    assert chaos.correlation_dimension(square, theiler=0) == pytest.approx(2.0, abs=0.1)
    assert chaos.correlation_dimension(circle, theiler=0) == pytest.approx(1.0, abs=0.05)
    assert chaos.correlation_dimension(cube, theiler=0) == pytest.approx(3.0, abs=0.2)


def test_correlation_dimension_lorenz(lorenz):
    fit = chaos.correlation_dimension(lorenz, return_fit=True)
    assert abs(fit["d2"] - D2_REF) < 0.1 * D2_REF  # measured 2.10
    assert fit["c"][0] == pytest.approx(1e-4, rel=0.2) and fit["c"][-1] == pytest.approx(1e-2, rel=0.2)
    emb = chaos.delay_embed(lorenz[:, 0], dim=3, delay=8)
    assert abs(chaos.correlation_dimension(emb) - D2_REF) < 0.1 * D2_REF  # measured 2.07


def test_correlation_dimension_errors():
    with pytest.raises(ValueError, match="all points coincide"):
        chaos.correlation_dimension(np.ones((100, 3)))
    with pytest.raises(ValueError, match="r_min < r_max"):
        chaos.correlation_dimension(np.random.default_rng(0).random((100, 2)), r_min=1.0, r_max=0.5)
    with pytest.raises(ValueError, match="c_range"):
        chaos.correlation_dimension(np.random.default_rng(0).random((100, 2)), c_range=(0.1, 0.01))


# ----------------------------------------------------------------------------- Lyapunov exponents


def test_lyapunov_rosenstein_lorenz_x(lorenz):
    """From the scalar x alone (MI delay + FNN dimension): within 10% of 0.906 (measured 0.909;
    0.86-0.92 over 6 seeds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a well-posed fit: no fit-range warning
        lam = chaos.lyapunov_rosenstein(lorenz[:, 0], DT)
    assert abs(lam - LAMBDA1_REF) < 0.1 * LAMBDA1_REF


def test_lyapunov_rosenstein_lorenz_state(lorenz):
    """From the full state the estimator reads lower (measured 0.858; 0.80-0.86 over 6 seeds): 15% band."""
    curve = chaos.rosenstein_divergence(lorenz, DT)
    assert curve["theiler"] * DT == pytest.approx(1.3, abs=0.3)  # mean period of x, MTU
    assert curve["logd"][-1] > curve["logd"][0] + 3.5  # grows by e^4 before saturating
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        lam = chaos.lyapunov_rosenstein(lorenz, DT)
    assert abs(lam - LAMBDA1_REF) < 0.15 * LAMBDA1_REF
    assert lam > 0.8 * LAMBDA1_REF


def test_lyapunov_rosenstein_warns_without_a_linear_range(lorenz):
    """issue 17: a 60-sample (1.2 MTU) horizon never reaches the plateau, so the default window
    sits in the initial transient and reads ~2.1 instead of 0.9: it must say so."""
    x = lorenz[:6000, 0]
    with pytest.warns(RuntimeWarning, match="not reached its plateau") as rec:
        lam = chaos.lyapunov_rosenstein(x, DT, dim=3, delay=8, theiler=50, horizon=60)
    assert isinstance(lam, float) and lam > 1.5  # still returned (measured 2.08)
    msg = str(rec[0].message)
    assert "longer horizon" in msg and "fit=(k0, k1)" in msg and "horizon=None" in msg
    with warnings.catch_warnings():  # the same series with the default horizon: a linear range, no warning
        warnings.simplefilter("error", RuntimeWarning)
        lam = chaos.lyapunov_rosenstein(x, DT, dim=3, delay=8, theiler=50)
    assert abs(lam - LAMBDA1_REF) < 0.1 * LAMBDA1_REF
    # an explicit window that runs into the saturation bend: the local slope is not constant
    with pytest.warns(RuntimeWarning, match="local slope is not constant"):
        chaos.lyapunov_rosenstein(x, DT, dim=3, delay=8, theiler=50, fit=(25, 350))


def test_lyapunov_rosenstein_errors(lorenz):
    with pytest.raises(ValueError, match="dim/delay apply only to a scalar series"):
        chaos.lyapunov_rosenstein(lorenz, DT, dim=3)
    with pytest.raises(ValueError, match="too short for horizon=400"):
        chaos.lyapunov_rosenstein(lorenz[:500], DT, theiler=60, horizon=400)
    with pytest.raises(ValueError, match="too short for a delay embedding with dim=3, delay=300"):
        chaos.lyapunov_rosenstein(lorenz[:500, 0], DT, dim=3, delay=300)
    with pytest.raises(ValueError, match="fit must satisfy"):
        chaos.lyapunov_rosenstein(lorenz[:3000], DT, theiler=60, horizon=200, fit=(100, 300))


def test_lyapunov_qr_linear_system():
    """dx/dt = A x with A upper triangular: the exponents are A's eigenvalues (0.5, -1)."""
    a = torch.tensor([[0.5, 3.0], [0.0, -1.0]], dtype=torch.float64)
    spec = chaos.lyapunov_qr(lambda x: x @ a.T, np.array([1.0, 1.0]), dt=0.01, n_steps=2000, transient=200)
    np.testing.assert_allclose(spec, [0.5, -1.0], atol=2e-3)


def test_lyapunov_qr_lorenz(lorenz):
    """16 trajectories x 7 MTU (dt 0.02) from points on the attractor: lambda_1 within 10%
    of 0.906 (measured 0.881), lambda_2 ~ 0 (0.021), sum = divergence -13.667 (Liouville)."""
    sys = Lorenz63()
    x0 = lorenz[200::900][:16]
    spec = chaos.lyapunov_qr(sys.rhs, x0, dt=DT, n_steps=350, transient=100)
    assert spec.shape == (3,)
    assert abs(spec[0] - LAMBDA1_REF) < 0.1 * LAMBDA1_REF
    assert abs(spec[1]) < 0.05
    assert spec.sum() == pytest.approx(-(10 + 1 + 8 / 3), rel=2e-3)
    lam = chaos.largest_lyapunov_qr(sys.rhs, torch.from_numpy(x0), dt=DT, n_steps=350, transient=100)
    assert lam == pytest.approx(spec[0], rel=1e-8)  # the leading vector does not depend on the others
    with pytest.raises(ValueError, match="n_exponents must be <= the state dimension 3"):
        chaos.lyapunov_qr(sys.rhs, x0[0], dt=DT, n_steps=10, n_exponents=4)


def test_lyapunov_qr_batched_jacobians_equal_the_tangent_implementation(lorenz):
    """The batched-Jacobian path (issue 17) against the dual-number path it replaced (the
    implementation before, kept as method="tangent"): the same numbers to 1e-10 relative
    (measured <= 5e-15) on Lorenz-63 (all exponents and the leading two; also an rhs without an
    autograd graph, whose Jacobians come from forward mode), a learned tanh-MLP field
    (D = 4) and Lorenz-96 (D = 8), across time chunks (chunk boundary at 7 steps)."""
    sys = Lorenz63()
    x0 = lorenz[200::3000][:4]
    for k in (3, 2):
        new = chaos._lyapunov_qr(sys.rhs, x0, dt=0.01, n_steps=120, n_exponents=k, transient=15, method="jacobian")
        old = chaos._lyapunov_qr(sys.rhs, x0, dt=0.01, n_steps=120, n_exponents=k, transient=15, method="tangent")
        np.testing.assert_allclose(new, old, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(new, chaos.lyapunov_qr(sys.rhs, x0, dt=0.01, n_steps=120, n_exponents=k,
                                                             transient=15))  # auto: the Jacobian path

    def detached(x):  # no autograd graph: the Jacobians fall back to forward mode
        with torch.no_grad():
            return sys.rhs(x)

    np.testing.assert_allclose(chaos.lyapunov_qr(detached, x0, dt=0.01, n_steps=120, transient=15),
                               chaos.lyapunov_qr(sys.rhs, x0, dt=0.01, n_steps=120, transient=15), rtol=1e-10, atol=1e-12)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    field = lambda x: net(x) - 0.1 * x
    u0 = torch.randn(3, 4, dtype=torch.float64)
    np.testing.assert_allclose(chaos._lyapunov_qr(field, u0, 0.05, 60, transient=5, method="jacobian"),
                               chaos._lyapunov_qr(field, u0, 0.05, 60, transient=5, method="tangent"),
                               rtol=1e-10, atol=1e-12)
    from sns.systems.lorenz import Lorenz96

    l96 = Lorenz96(dim=8)
    v0 = 8.0 + torch.randn(2, 8, dtype=torch.float64)
    old_chunk = chaos._JACOBIAN_CHUNK_BYTES
    try:  # a 7-step time chunk: chunk boundaries inside the transient and the recorded steps
        chaos._JACOBIAN_CHUNK_BYTES = 7 * 4 * 2 * 8 * 8 * 8 * 4
        new = chaos._lyapunov_qr(l96.rhs, v0, 0.01, 40, n_exponents=5, transient=10, method="jacobian")
    finally:
        chaos._JACOBIAN_CHUNK_BYTES = old_chunk
    old = chaos._lyapunov_qr(l96.rhs, v0, 0.01, 40, n_exponents=5, transient=10, method="tangent")
    np.testing.assert_allclose(new, old, rtol=1e-10, atol=1e-12)
    with pytest.raises(FloatingPointError, match="non-finite state or tangent at step"):
        chaos.lyapunov_qr(lambda x: x**3, np.array([[10.0, 10.0]]), dt=0.5, n_steps=50)


def test_lyapunov_qr_lorenz_long():
    """8 trajectories x 50 MTU (dt 0.01, 5000 recorded steps each; a few seconds): lambda_1 within
    3% of 0.9056 (measured 0.894), lambda_2 within 0.02 of 0 (-0.005) and the sum the divergence."""
    sys = Lorenz63(dt=0.01)
    x0 = sys.step(sys.initial_condition(8, torch.Generator().manual_seed(1)), 1000)
    spec = chaos.lyapunov_qr(sys.rhs, x0, dt=0.01, n_steps=5000, transient=500)
    assert spec[0] == pytest.approx(LAMBDA1_REF, rel=0.03)
    assert abs(spec[1]) < 0.02
    assert spec.sum() == pytest.approx(-(10 + 1 + 8 / 3), rel=1e-3)


# ----------------------------------------------------------------------------- spectra, divergence


def test_psd_of_sine_peaks_at_its_frequency_and_integrates_to_variance():
    dt, f0, amp = 0.01, 2.5, 3.0
    t = np.arange(20000) * dt
    x = amp * np.sin(2 * np.pi * f0 * t) + 1.0
    f, p = chaos.power_spectral_density(x, dt, nperseg=1024)
    df = f[1] - f[0]
    assert f[-1] == pytest.approx(0.5 / dt)
    assert abs(f[np.argmax(p)] - f0) <= df
    assert np.sum(p) * df == pytest.approx(amp**2 / 2, rel=0.01)  # variance, mean removed
    # white noise: flat one-sided density 2 sigma^2 dt
    noise = np.random.default_rng(0).normal(scale=2.0, size=(40000, 2))
    f, p = chaos.power_spectral_density(noise, dt, axis=0)
    assert p.shape == (len(f), 2)
    assert np.mean(p[1:-1]) == pytest.approx(2 * 4.0 * dt, rel=0.03)
    with pytest.raises(ValueError, match="nperseg=2048 is longer than the series"):
        chaos.power_spectral_density(x[:1000], dt, nperseg=2048)


def test_divergence_error():
    sys = Lorenz63()
    pts = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    div = chaos.local_divergence(sys.rhs, pts)
    np.testing.assert_allclose(div, -(10 + 1 + 8 / 3), rtol=1e-12)
    assert chaos.divergence_error(div, div) == 0.0
    assert chaos.divergence_error(sys.rhs, sys.divergence, pts) == pytest.approx(0.0, abs=1e-12)

    def damped(x):  # rhs - 0.5 x: divergence shifted by -0.5 * 3
        return sys.rhs(x) - 0.5 * x

    assert chaos.divergence_error(damped, sys.rhs, pts) == pytest.approx(1.5, rel=1e-12)
    assert chaos.divergence_error(np.array([1.0, -1.0]), 0.0) == 1.0
    with pytest.raises(ValueError, match="give the points"):
        chaos.divergence_error(damped, div)
    with pytest.raises(ValueError, match="incompatible shapes"):
        chaos.divergence_error(np.zeros(3), np.zeros(4))


# ----------------------------------------------------------------------------- spikes


def test_interspike_intervals_of_a_known_train():
    """A piecewise-linear trace crossing 0 upwards exactly at the spike times (off the grid):
    linear interpolation recovers them to round-off."""
    spikes = np.array([3.37, 13.0, 27.61, 36.2, 51.05])
    dt = 0.1
    t = np.arange(0, 60, dt)
    mids = np.r_[-np.inf, (spikes[1:] + spikes[:-1]) / 2, np.inf]
    k = np.searchsorted(mids, t, side="right") - 1
    v = 10.0 * (t - spikes[k])  # rises through 0 at each spike, jumps down between spikes
    isi = chaos.interspike_intervals(v, dt, threshold=0.0)
    np.testing.assert_allclose(isi, np.diff(spikes), atol=1e-9)
    isi2 = chaos.interspike_intervals(v + 5.0, dt, threshold=5.0)  # threshold shifts with the trace
    np.testing.assert_allclose(isi2, np.diff(spikes), atol=1e-9)
    assert chaos.interspike_intervals(np.full(100, -70.0), dt).size == 0


def test_isi_error_values():
    a = np.array([10.0, 11.0, 12.0, 13.0])
    e = chaos.isi_error(a, a[::-1])
    assert e["mse"] == 0 and e["rel_mean_error"] == 0 and e["w1"] == 0
    e = chaos.isi_error(a + 0.5, a)
    assert e["mse"] == pytest.approx(0.25) and e["w1"] == pytest.approx(0.5)
    assert e["rel_mean_error"] == pytest.approx(0.5 / 11.5)
    # unequal sizes: K = 4 quantiles (k + 1/2)/4 of b = [10, 12] (Hazen): 10, 10.5, 11.5, 12
    e = chaos.isi_error(np.full(4, 10.0), np.array([10.0, 12.0]))
    assert e["mse"] == pytest.approx((0 + 0.25 + 2.25 + 4) / 4)
    assert e["n_a"] == 4 and e["n_b"] == 2
    e = chaos.isi_error(np.array([]), a)
    assert math.isnan(e["mse"]) and e["n_a"] == 0 and e["mean_b"] == 11.5
