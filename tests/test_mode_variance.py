"""Variance-corrected strided moves (sns.diffusion.ModeVariance): exact for Gaussian data, measured
per level from a denoiser, coloured in the Fourier basis of a field."""

import numpy as np
import pytest
import torch

from sns.diffusion import ModeVariance, log_sigma_schedule, posterior_step, traverse
from sns.diffusion.schedules import cosine_schedule
from sns.refine import SNSRefiner, calibrate_x0_variance
from tests.test_oracle import A, AR1Oracle, M, Q, _strided_law, true_conditional

F64 = torch.float64


@pytest.mark.parametrize("sch", [cosine_schedule(100), log_sigma_schedule(100)], ids=["cosine", "log_sigma"])
def test_corrected_strided_paths_are_exact_for_gaussian_data(sch):
    """With the true conditional variance as the prior, strided paths lose no variance at any
    stride, DDPM or DDIM (the plain ones lose up to 100%: tests/test_oracle.py).  The remaining
    error is the clean x_{t-1} shown to the oracle as table level 0 (abar_0 < 1)."""
    prior = ModeVariance(Q * (1 - A**2))
    for n in (1, 2, 5, None):
        for eta in (1.0, 0.0):
            dm, dv = _strided_law(sch, n, eta, x0_var=prior)
            assert dm.abs().max() < 2e-3, (n, eta, dm)
            assert dv.abs().max() < 3e-3, (n, eta, dv)


def test_one_corrected_step_keeps_unit_variance():
    """Unit-variance Gaussian data, exact oracle, x_i ~ N(0, 1): one corrected DDPM or DDIM move
    i -> j (a jump to clean included) has marginal variance 1 to round-off."""
    sch = log_sigma_schedule(100)
    orc = AR1Oracle(sch, a=torch.zeros(1, dtype=F64), m=torch.zeros(1, dtype=F64), q=torch.ones(1, dtype=F64))
    prior = ModeVariance(torch.ones(1, dtype=F64))
    for i_, j_ in ((99, 49), (60, 10), (30, 29), (20, -1)):
        i, j = torch.full((3,), i_), torch.full((3,), j_)
        x = torch.tensor([[0.0], [1.0], [0.0]], dtype=F64)
        prev, zero, one = torch.zeros(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64), torch.ones(3, 1, dtype=F64)
        eps = orc(prev, x, i, i).eps_next
        for eta in (1.0, 0.0):
            f = posterior_step(sch, x, eps, i, j, zero, eta=eta, x0_var=prior, z_x0=zero)
            g = posterior_step(sch, x, eps, i, j, one, eta=eta, x0_var=prior, z_x0=zero)
            h = posterior_step(sch, x, eps, i, j, zero, eta=eta, x0_var=prior, z_x0=one)
            got = (f[1] - f[0]) ** 2 + (g[0] - f[0]) ** 2 + (h[2] - f[2]) ** 2
            torch.testing.assert_close(got, torch.ones(1, dtype=F64), rtol=1e-9, atol=1e-12)


def test_measured_table_matches_the_gaussian_posterior_variance():
    """from_denoiser on the exact AR(1) oracle measures, per level, the Gaussian posterior variance
    of x_t given the noised x_t and the clean x_{t-1} (Monte Carlo, 4000 pairs: within 8%)."""
    sch = log_sigma_schedule(100)
    g = torch.Generator().manual_seed(0)
    n = 4000
    xp = M + Q.sqrt() * torch.randn(n, 2, generator=g, dtype=F64)
    mu, v = true_conditional(xp)
    xn = mu + v.sqrt() * torch.randn(n, 2, generator=g, dtype=F64)
    table = ModeVariance.from_denoiser(AR1Oracle(sch), sch, xp, xn, batch=1000, generator=g)
    assert table.per_level and table.var.shape == (100, 2)
    want = ModeVariance(Q * (1 - A**2)).posterior_var(sch.abar)
    for i in (10, 30, 50, 70, 99):
        torch.testing.assert_close(table.var[i], want[i], rtol=0.08, atol=1e-9)
    torch.testing.assert_close(table.posterior_var(sch.abar[:3], torch.tensor([5, 6, 7])), table.var[5:8].double())


def test_field_sampler_colours_white_noise_per_fourier_mode():
    """spatial_dims = 2: real fields whose mean |DFT|^2 per mode is var (anisotropic var, 2000
    draws: within 10%); from_samples recovers it; a per-coordinate sampler just scales."""
    g = torch.Generator().manual_seed(1)
    H = W = 8
    k = torch.fft.fftfreq(H) * H
    kx, ky = torch.meshgrid(k, k, indexing="ij")
    var = (1.0 / (1 + kx**2 + 3 * ky**2))[None].double()  # (C, H, W), symmetric under k -> -k
    mv = ModeVariance(var, spatial_dims=2)
    z = torch.randn(2000, 1, H, W, generator=g, dtype=F64)
    f = mv.sample(var, z)
    assert f.dtype == F64 and f.shape == z.shape
    got = ModeVariance.from_samples(f, spatial_dims=2)
    torch.testing.assert_close(got.var, var, rtol=0.1, atol=0.0)
    flat = ModeVariance(torch.tensor([4.0, 0.25]))
    torch.testing.assert_close(flat.sample(flat.var, torch.ones(1, 2)), torch.tensor([[2.0, 0.5]]))


def test_calibrate_x0_variance_reads_the_conditional_variance():
    """The exact conditional mean as the surrogate: its residuals' second moment is Q (1 - A^2)."""
    g = torch.Generator().manual_seed(2)
    xp = M + Q.sqrt() * torch.randn(20000, 2, generator=g, dtype=F64)
    mu, v = true_conditional(xp)
    xn = mu + v.sqrt() * torch.randn(20000, 2, generator=g, dtype=F64)
    got = calibrate_x0_variance(lambda x: M + A * (x - M), xp, xn)
    torch.testing.assert_close(got.var, Q * (1 - A**2), rtol=0.05, atol=0.0)


def test_refiner_with_x0_var_runs_and_the_default_stream_is_unchanged():
    """x0_var=None leaves the refiner's random stream as it was; with it, a one-move fixed-level
    refinement of the exact conditional mean regains the spread the plain jump loses: from the
    mean noised to level i (not the true law there) the output variance is
    ``v (1 - ab)(2 ab v + 1 - ab) / (ab v + 1 - ab)^2`` (Gaussian algebra), close to v (Monte Carlo)."""
    sch = log_sigma_schedule(100)
    orc = AR1Oracle(sch)
    sur = lambda x: M + A * (x - M)  # the conditional mean: a proposal with no spread
    x = (M + Q.sqrt() * torch.randn(6000, 2, generator=torch.Generator().manual_seed(3), dtype=F64))
    plain = SNSRefiner(orc, sch, surrogate=sur, fixed_levels=(0, 60), n_moves=1)
    again = SNSRefiner(orc, sch, surrogate=sur, fixed_levels=(0, 60), n_moves=1, x0_var=None)
    a, b = (r(x[:8], generator=torch.Generator().manual_seed(4)) for r in (plain, again))
    assert torch.equal(a, b)
    corr = SNSRefiner(orc, sch, surrogate=sur, fixed_levels=(0, 60), n_moves=1, x0_var=ModeVariance(Q * (1 - A**2)))
    v = Q * (1 - A**2)
    r_plain = plain(x, generator=torch.Generator().manual_seed(5)) - sur(x)
    r_corr = corr(x, generator=torch.Generator().manual_seed(5)) - sur(x)
    assert bool((r_plain.var(0) < 0.5 * v).all())  # one jump from level 60 returns ~the mean
    ab = sch.abar[60]
    want = v * (1 - ab) * (2 * ab * v + 1 - ab) / (ab * v + 1 - ab) ** 2
    assert bool((want > 0.85 * v).all())
    torch.testing.assert_close(r_corr.var(0), want, rtol=0.06, atol=0.0)


def test_bad_mode_variance_inputs():
    with pytest.raises(TypeError, match="tensor"):
        ModeVariance([1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        ModeVariance(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="finite"):
        ModeVariance(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="spatial_dims"):
        ModeVariance(torch.ones(4, 4), spatial_dims=3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        ModeVariance.from_samples(torch.ones(1, 3))
    with pytest.raises(ValueError, match="needs the levels"):
        ModeVariance(torch.ones(10, 3), per_level=True).posterior_var(torch.ones(2))
    sch = log_sigma_schedule(100)
    with pytest.raises(TypeError, match="ModeVariance"):
        SNSRefiner(AR1Oracle(sch), sch, surrogate=lambda x: x, x0_var=torch.ones(2))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        calibrate_x0_variance(lambda x: x, torch.ones(1, 2), torch.ones(1, 2))


def test_traverse_passes_x0_var_to_the_x_t_moves_only():
    """Per-sample generators and one generator both work; only x_t's moves change."""
    from sns.diffusion import make_path

    sch = log_sigma_schedule(100)
    orc = AR1Oracle(sch)
    g = torch.Generator().manual_seed(6)
    xp, xn = torch.randn(4, 2, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64)
    path = make_path("A", torch.full((4,), 41), torch.full((4,), 21), 100, n_moves=2)
    prior = ModeVariance(Q * (1 - A**2))
    for gens in (torch.Generator().manual_seed(7), [torch.Generator().manual_seed(k) for k in range(4)]):
        out = traverse(orc, sch, xp, xn, path, generator=gens, x0_var=prior)
        assert torch.isfinite(out.x_next).all() and torch.isfinite(out.x_prev).all()
        assert int(out.calls[0]) == 4


def test_gaussian_approximation_with_coloured_noise():
    """The control stepper: F(x) plus noise of the given per-mode variance (Monte Carlo)."""
    from sns.baselines import GaussianApproximation

    mv = ModeVariance(torch.tensor([0.04, 0.25], dtype=F64))
    step = GaussianApproximation(lambda x: 2 * x, noise=mv)
    x = torch.ones(20000, 2, dtype=F64)
    y = step(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(y.mean(0), torch.full((2,), 2.0, dtype=F64), rtol=0.0, atol=0.02)
    torch.testing.assert_close(y.var(0), mv.var, rtol=0.05, atol=0.0)
    with pytest.raises(TypeError, match="prior"):
        GaussianApproximation(lambda x: x, noise=ModeVariance(torch.ones(5, 2), per_level=True))


def test_rollout_option_x0_var_is_calibrated_on_the_valid_split(tmp_path):
    """``sns-rollout refiner.x0_var``: residual / table calibrated on the valid split, recorded,
    and refused when misspelt."""
    from _hydra import compose

    from sns.cli.rollout import run_rollout
    from sns.data.generate import generate_dataset
    from sns.export import load_model, save_model
    from sns.methods import StepperContext
    from sns.refine import calibrate_x0_variance, from_settings
    from sns.rollout import open_rollout
    from sns.training import build_model

    S = 10
    data = generate_dataset("lorenz63", "cpu", out=tmp_path / "lorenz63-cpu", progress=None,
                            overrides={"n_frames": 40, "spinup_steps": 100, "trajectories": {"train": 2, "valid": 2,
                                                                                              "test": 1}})
    torch.manual_seed(0)
    sur_spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16, "n_layers": 2}}
    den_spec = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": S, "width": 32}}
    sur = save_model(build_model(sur_spec).eval(), sur_spec, tmp_path / "sur.safetensors", {"task": "surrogate"})
    den = save_model(build_model(den_spec).eval(), den_spec, tmp_path / "den.safetensors",
                     {"task": "denoiser", "method": "sns", "schedule": {"name": "cosine", "n_levels": S, "kwargs": {}}})
    (surm, _), (denm, extra) = load_model(sur), load_model(den)
    ctx = StepperContext(data_dir=data)
    step, r = from_settings(denm, extra, surm, {"x0_var": "residual", "fixed_levels": [0, 5], "n_moves": 1}, ctx)
    expected = calibrate_x0_variance(surm, *ctx.pairs("valid"))
    assert r["x0_var"] == "residual" and not step.x0_var.per_level and step.x0_var.spatial_dims == 0
    torch.testing.assert_close(step.x0_var.var, expected.var)
    step, _ = from_settings(denm, extra, surm, {"x0_var": "table"}, ctx)
    assert step.x0_var.per_level and step.x0_var.var.shape == (S, 3) and bool((step.x0_var.var > 0).all())
    with pytest.raises(ValueError, match="refiner.x0_var must be null, 'residual' or 'table', got 'big'"):
        from_settings(denm, extra, surm, {"x0_var": "big"}, ctx)
    run_rollout(compose("rollout", [f"surrogate={sur}", f"denoiser={den}", f"data_dir={data}", "n_steps=3",
                                    "trajectories=1", "refiner.fixed_levels=[0,5]", "refiner.n_moves=1",
                                    "refiner.x0_var=residual", f"out={tmp_path}/r.zarr"]))
    ro = open_rollout(tmp_path / "r.zarr")
    assert ro.attrs["refiner"]["x0_var"] == "residual" and bool(np.isfinite(ro["state"].values).all())
