"""Schedules against diffusers' DDPMScheduler, the posterior variance, and the reverse step."""

import math

import pytest
import torch

from sns.diffusion import cosine_schedule, ddpm_step, linear_schedule, make_schedule, noise_pair
from sns.diffusion.sampling import predict_x0

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("S", [50, 100, 1000])
def test_cosine_matches_diffusers(S):
    ref = diffusers.DDPMScheduler(num_train_timesteps=S, beta_schedule="squaredcos_cap_v2")
    sch = cosine_schedule(S)
    # diffusers stores float32 tables: agreement to float32 precision
    torch.testing.assert_close(sch.betas, ref.betas.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sch.abar, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    assert sch.betas[-1].item() == pytest.approx(0.999)  # the clip at the top level
    assert sch.n_levels == S


@pytest.mark.parametrize("S,b0,b1", [(1000, 1e-4, 0.02), (100, 5e-4, 0.1)])
def test_linear_matches_diffusers(S, b0, b1):
    ref = diffusers.DDPMScheduler(num_train_timesteps=S, beta_schedule="linear", beta_start=b0, beta_end=b1)
    sch = linear_schedule(S, b0, b1)
    torch.testing.assert_close(sch.betas, ref.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sch.abar, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_cosine_formula_by_hand():
    S = 10
    f = [math.cos((i / S + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(S + 1)]
    sch = cosine_schedule(S)
    # abar_i = f(i+1)/f(0) up to the top level, where beta = 1 - f(S)/f(S-1) = 1 is clipped to 0.999
    for i in range(S - 1):
        assert sch.abar[i].item() == pytest.approx(f[i + 1] / f[0], rel=1e-9)
    assert sch.abar[S - 1].item() == pytest.approx(f[S - 1] / f[0] * 0.001, rel=1e-9)


def test_posterior_variance_formula_and_diffusers():
    S = 100
    sch = cosine_schedule(S)
    ref = diffusers.DDPMScheduler(num_train_timesteps=S, beta_schedule="squaredcos_cap_v2")
    assert sch.posterior_variance[0].item() == 0.0  # abar_{-1} = 1: no noise at the last step
    assert sch.abar_prev[0].item() == 1.0
    for i in (1, 2, 17, 50, 98, 99):
        by_hand = sch.betas[i] * (1 - sch.abar[i - 1]) / (1 - sch.abar[i])
        assert sch.posterior_variance[i].item() == pytest.approx(by_hand.item(), rel=1e-12)
        assert sch.posterior_variance[i].item() == pytest.approx(ref._get_variance(i).item(), rel=1e-4)


def test_ddpm_step_matches_diffusers_step():
    """The x0-form step equals diffusers' DDPM step (same noise), per-sample levels."""
    S = 100
    sch = cosine_schedule(S)
    ref = diffusers.DDPMScheduler(num_train_timesteps=S, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g)
    eps = torch.randn(6, 3, generator=g)
    levels = torch.tensor([0, 1, 5, 50, 98, 99])
    for b, i in enumerate(levels.tolist()):
        gd = torch.Generator().manual_seed(100 + b)
        want = ref.step(eps[b : b + 1], i, x[b : b + 1], generator=gd).prev_sample
        z = torch.randn(1, 3, generator=torch.Generator().manual_seed(100 + b))
        got = ddpm_step(sch, x[b : b + 1], eps[b : b + 1], torch.tensor([i]), z)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # vectorised over per-sample levels = one sample at a time
    z = torch.randn(6, 3, generator=g)
    batch = ddpm_step(sch, x, eps, levels, z)
    for b in range(6):
        torch.testing.assert_close(batch[b : b + 1], ddpm_step(sch, x[b : b + 1], eps[b : b + 1], levels[b : b + 1], z[b : b + 1]))


def test_step_with_true_noise_recovers_posterior_mean_at_top_level():
    """At beta = 0.999 the exact eps gives x0_hat = x0 exactly; clamping bounds a bad eps."""
    sch = cosine_schedule(100)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1000, 4, generator=g, dtype=torch.float64)
    top = torch.full((1000,), 99)
    xs, _, e, _ = noise_pair(sch, x0, x0, top, top, generator=g)
    torch.testing.assert_close(predict_x0(sch, xs, e, top), x0, rtol=0, atol=1e-6)
    bad_eps = e + 0.5 * torch.randn(e.shape, generator=g, dtype=torch.float64)
    x0_bad = predict_x0(sch, xs, bad_eps, top)
    assert x0_bad.abs().max() > 100  # errors amplified by sqrt((1 - abar)/abar) ~ 2e3
    out = ddpm_step(sch, xs, bad_eps, top, clamp=3.0, generator=g)
    assert torch.isfinite(out).all() and out.abs().max() < 10


def test_errors():
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'"):
        make_schedule("sigmoid", 10)
    with pytest.raises(ValueError, match="S must be an integer >= 2"):
        cosine_schedule(1)
    sch = cosine_schedule(10)
    with pytest.raises(ValueError, match=r"outside the valid levels \[0, 10\)"):
        ddpm_step(sch, torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="levels must have shape"):
        noise_pair(sch, torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1]), torch.tensor([1, 2]))
