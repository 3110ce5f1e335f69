"""Wavelet denoising before embedding (sns.generators.preprocess): the noise estimate, the
shrinkage on a chaotic series, and the bad inputs a user will try."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sns.generators.preprocess import noise_sigma, wavelet_denoise
from sns.systems.lorenz import Lorenz63


@pytest.fixture(scope="module")
def lorenz_x() -> np.ndarray:
    system = Lorenz63()
    u = system.step(system.initial_condition(1, torch.Generator().manual_seed(3)), 2000)
    xs = []
    for _ in range(4096):  # dt 0.01
        u = system.step(u, 1)
        xs.append(float(u[0, 0]))
    return np.asarray(xs)


@pytest.mark.parametrize("frac", [0.05, 0.2])
def test_noise_sigma_reads_the_added_noise(lorenz_x, frac):
    sigma = frac * lorenz_x.std()
    noisy = lorenz_x + sigma * np.random.default_rng(0).standard_normal(lorenz_x.size)
    # MAD of 2048 finest coefficients: ~2% standard error; the signal leaks in a little
    assert noise_sigma(noisy) == pytest.approx(sigma, rel=0.08)
    # a clean series sampled this finely has almost nothing at the finest scale
    assert noise_sigma(lorenz_x) < 0.01 * sigma


@pytest.mark.parametrize("rule,mode,bound", [("bayes", "soft", 0.5), ("universal", "hard", 0.75)])
def test_denoising_removes_most_of_the_noise(lorenz_x, rule, mode, bound):
    sigma = 0.1 * lorenz_x.std()
    noisy = lorenz_x + sigma * np.random.default_rng(1).standard_normal(lorenz_x.size)
    y, info = wavelet_denoise(noisy, rule=rule, mode=mode, return_info=True)
    assert y.shape == noisy.shape and y.dtype == np.float64
    rms = np.sqrt(np.mean((y - lorenz_x) ** 2)) / sigma
    assert rms < bound  # measured: 0.36 (bayes), 0.55 (universal hard)
    assert info["sigma"] == pytest.approx(sigma, rel=0.08)
    assert len(info["thresholds"]) == info["level"] and info["rule"] == rule


def test_known_sigma_zero_leaves_the_series(lorenz_x):
    y = wavelet_denoise(lorenz_x, rule="universal", mode="hard", sigma=0.0)
    np.testing.assert_allclose(y, lorenz_x, atol=1e-9)  # perfect reconstruction, no threshold


def test_tensor_input_and_odd_length(lorenz_x):
    x = torch.as_tensor(lorenz_x[:1001])
    y = wavelet_denoise(x, level=3)
    assert y.shape == (1001,)


@pytest.mark.parametrize("x,kw,match", [
    (np.zeros((10, 3)), {}, "1-D series"),
    (np.arange(8.0), {}, "at least 16"),
    (np.r_[np.arange(20.0), np.nan], {}, "non-finite value at index 20"),
    (np.arange(64.0), {"rule": "sure"}, "rule must be one of"),
    (np.arange(64.0), {"rule": "universal", "mode": "garrote"}, "mode must be"),
    (np.arange(64.0), {"mode": "hard"}, "BayesShrink"),
    (np.arange(64.0), {"wavelet": "sym99"}, "unknown discrete wavelet 'sym99'"),
    (np.arange(64.0), {"level": 9}, r"level must be in \[1, 2\]"),
    (np.arange(64.0), {"sigma": -1.0}, "sigma must be"),
    (np.arange(20.0), {"wavelet": "db20"}, "too short for wavelet 'db20'"),
])
def test_bad_inputs_name_the_value(x, kw, match):
    with pytest.raises(ValueError, match=match):
        wavelet_denoise(x, **kw)
