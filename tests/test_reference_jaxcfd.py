"""Reference comparison: KolmogorovFlow vs jax-cfd's ForcedNavierStokes2D + crank_nicolson_rk4.

Skipped unless ``jax`` and ``jax_cfd`` are installed (``pip install jax-cfd jax``;
checked with jax 0.10.2, jax-cfd 0.2.1).  Runs jax in float64.  jax-cfd indexes
arrays ``(x, y)``; our fields are ``(y, x)``, hence the transposes.  The default
suite compares against trajectories jax-cfd made once
(``tests/test_reference_fixtures.py``); the last test here checks that
``tests/fixtures/make_reference_fixtures.py`` still makes those files.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
cfd = pytest.importorskip("jax_cfd.base")
spectral = pytest.importorskip("jax_cfd.spectral")
spectral_utils = pytest.importorskip("jax_cfd.spectral.utils")

from sns.systems.kolmogorov import KolmogorovFlow
from sns.systems.spectral import dealias_mask


@pytest.fixture(autouse=True, scope="module")
def _jax_float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _grid(n: int):
    return cfd.grids.Grid((n, n), domain=((0, 2 * np.pi), (0, 2 * np.pi)))


@pytest.mark.parametrize("n", [8, 16, 64, 96])
def test_effective_mask_matches_brick_wall_filter(n: int) -> None:
    """Our "jaxcfd" mask acts on real fields exactly as jax's filter + irfftn."""
    jnp = jax.numpy
    g = np.random.default_rng(n).standard_normal((3, n, n))  # jax layout (x, y)
    filt = spectral_utils.brick_wall_filter_2d(_grid(n))
    ref = np.asarray(jnp.fft.irfftn(jnp.fft.rfftn(g, axes=(1, 2)) * filt, axes=(1, 2)))
    ours_in = torch.from_numpy(g.transpose(0, 2, 1).copy())
    mask = dealias_mask(n, "jaxcfd", dtype=torch.float64)
    ours = torch.fft.irfft2(torch.fft.rfft2(ours_in) * mask, s=(n, n)).numpy()
    np.testing.assert_allclose(ours.transpose(0, 2, 1), ref, rtol=0, atol=1e-12 * np.abs(g).max())


@pytest.mark.parametrize("n, reynolds, steps", [(32, 1e3, 300), (64, 1e4, 200)])
def test_trajectory_matches_jaxcfd_to_roundoff(n: int, reynolds: float, steps: int) -> None:
    jnp = jax.numpy
    dt = 1e-3
    system = KolmogorovFlow(n=n, reynolds=reynolds, dt=dt, dealias="jaxcfd", dtype=torch.float64)
    u0 = system.initial_condition(2, torch.Generator().manual_seed(1))
    ours = system.step(u0, steps).numpy()

    equation = spectral.equations.ForcedNavierStokes2D(1.0 / reynolds, _grid(n), smooth=True)
    step = spectral.time_stepping.crank_nicolson_rk4(equation, dt)
    run = jax.jit(jax.vmap(cfd.funcutils.repeated(step, steps)))
    w0 = jnp.asarray(u0.numpy().transpose(0, 2, 1))
    ref = np.asarray(jnp.fft.irfftn(run(jnp.fft.rfftn(w0, axes=(1, 2))), axes=(1, 2)))
    ref = ref.transpose(0, 2, 1)

    scale = np.abs(ref).max()
    change = np.abs(ref - u0.numpy()).max() / scale
    assert change > 0.05  # the flow actually evolved
    err = np.abs(ours - ref).max() / scale
    assert err < 1e-11, err
    # The symmetric mask is a different (if equally valid) discretisation: not round-off.
    sym = KolmogorovFlow(n=n, reynolds=reynolds, dt=dt, dealias="symmetric", dtype=torch.float64)
    assert np.abs(sym.step(u0, steps).numpy() - ref).max() / scale > 1e3 * max(err, 1e-16)


@pytest.mark.parametrize("n, reynolds, steps", [(32, 1e3, 300), (64, 1e4, 1000)])
def test_unmasked_initial_condition_matches_jaxcfd(n: int, reynolds: float, steps: int) -> None:
    """jax-cfd's own initial condition (finite-difference curl: content outside the mask and at
    the Nyquist wavenumber) evolves as in jax-cfd: nothing is trimmed (issue 16)."""
    jnp = jax.numpy
    dt, grid = 1e-3, _grid(n)
    v0 = cfd.initial_conditions.filtered_velocity_field(jax.random.PRNGKey(n), grid, 7.0, 4)
    w0 = cfd.finite_differences.curl_2d(v0).data[None]  # (1, x, y)
    equation = spectral.equations.ForcedNavierStokes2D(1.0 / reynolds, grid, smooth=True)
    step = spectral.time_stepping.crank_nicolson_rk4(equation, dt)
    run = jax.jit(jax.vmap(cfd.funcutils.repeated(step, steps)))
    ref = np.asarray(jnp.fft.irfftn(run(jnp.fft.rfftn(w0, axes=(1, 2))), axes=(1, 2)))
    ref = ref.transpose(0, 2, 1)
    system = KolmogorovFlow(n=n, reynolds=reynolds, dt=dt, dealias="jaxcfd", dtype=torch.float64)
    u0 = torch.from_numpy(np.asarray(w0).transpose(0, 2, 1).copy())
    assert (u0 - system.project(u0)).norm() > 2e-3 * u0.norm()
    ours = system.step(u0, steps).numpy()
    err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    print(f"{n}^2, t = {steps * dt}: relative L2 {err:.1e}")
    assert err < 1e-11, err


def test_fixture_script_reproduces_committed_fixture(tmp_path: Path) -> None:
    """``make_reference_fixtures.py kolmogorov`` makes the committed file (to round-off)."""
    fixtures = Path(__file__).parent / "fixtures"
    spec = importlib.util.spec_from_file_location("mrf", fixtures / "make_reference_fixtures.py")
    mrf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mrf)
    mrf.make_kolmogorov(tmp_path / "k.npz")
    with np.load(tmp_path / "k.npz") as new, np.load(fixtures / "jaxcfd_kolmogorov.npz") as old:
        assert sorted(new.files) == sorted(old.files)
        assert json.loads(str(new["meta"]))["cases"] == json.loads(str(old["meta"]))["cases"]
        for key in new.files:
            if key != "meta":
                rel = np.linalg.norm(new[key] - old[key]) / np.linalg.norm(old[key])
                assert rel < 1e-12, (key, rel)
