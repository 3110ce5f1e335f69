"""Log-sigma schedule, strided posterior steps, and the refiner's strided / coupled / leave-it options."""

import math

import pytest
import torch

from sns.diffusion import (
    cosine_schedule,
    ddpm_step,
    log_sigma_schedule,
    make_schedule,
    posterior_step,
)
from sns.nets.base import DenoiserOutput, PairDenoiser
from sns.refine import SNSRefiner


def test_log_sigma_schedule_values():
    sch = log_sigma_schedule(100, sigma_min=1e-3, sigma_max=80.0)
    sigma = ((1 - sch.abar) / sch.abar).sqrt()
    torch.testing.assert_close(sigma[0], torch.tensor(1e-3, dtype=torch.float64), rtol=1e-9, atol=0)
    torch.testing.assert_close(sigma[-1], torch.tensor(80.0, dtype=torch.float64), rtol=1e-9, atol=0)
    ratio = sigma[1:] / sigma[:-1]  # evenly spaced in log sigma
    torch.testing.assert_close(ratio, torch.full_like(ratio, (80.0 / 1e-3) ** (1 / 99)), rtol=1e-9, atol=0)
    assert (sch.betas > 0).all() and (sch.betas < 1).all() and (sch.abar.diff() < 0).all()
    assert make_schedule("log_sigma", 10, sigma_min=0.01, sigma_max=10.0).abar[0] == pytest.approx(1 / 1.0001)
    # the cosine schedule cannot resolve a surrogate's one-step error: its lowest sigma is 0.025
    cos = cosine_schedule(100)
    assert float(((1 - cos.abar[0]) / cos.abar[0]).sqrt()) == pytest.approx(0.02513, rel=1e-3)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        log_sigma_schedule(10, sigma_min=1.0, sigma_max=0.5)


@pytest.mark.parametrize("make", [cosine_schedule, log_sigma_schedule])
def test_posterior_step_is_the_ddpm_step_for_unit_moves(make):
    sch = make(100)
    g = torch.Generator().manual_seed(0)
    x, e, z = (torch.randn(100, 3, generator=g, dtype=torch.float64) for _ in range(3))
    i = torch.arange(100)
    want = ddpm_step(sch, x, e, i, z)
    got = posterior_step(sch, x, e, i, i - 1, z)
    assert ((got - want).abs() / (1 + want.abs())).max() < 1e-9
    # with the true noise, any jump lands on the forward-noised clean state when eta = 0
    x0 = torch.randn(100, 3, generator=g, dtype=torch.float64)
    ab = sch.abar[:, None]
    xi = ab.sqrt() * x0 + (1 - ab).sqrt() * e
    j = (i // 3) - 1
    ab_j = torch.where(j >= 0, sch.abar[j.clamp(min=0)], torch.ones(()))[:, None]
    torch.testing.assert_close(posterior_step(sch, xi, e, i, j, eta=0.0), ab_j.sqrt() * x0 + (1 - ab_j).sqrt() * e)


def test_posterior_step_errors():
    sch = cosine_schedule(10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"target level j\[1\] = 4 must satisfy -1 <= j < i = 4"):
        posterior_step(sch, x, x, torch.tensor([3, 4]), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="eta must lie in"):
        posterior_step(sch, x, x, torch.tensor([3, 4]), torch.tensor([0, 1]), eta=1.5)


class ShiftOracle(PairDenoiser):
    """Exact-in-each-state toy denoiser: x_{t-1} ~ N(target, V_PREV), x_t | x_{t-1} ~ N(x_{t-1} + 1, V_NEXT)
    (an uncertain next state), with level heads that read |x_{t-1} - target| (s2) and
    |x_t - x_{t-1} - 1| (s1) on the schedule's sigma grid.  Noise predictions are each state's
    Gaussian posterior given its own noised value (x_t's prior centred on the denoised x_{t-1} + 1)."""

    V_PREV, V_NEXT = 1e-6, 0.05**2

    def __init__(self, schedule, target=0.0):
        super().__init__()
        self.schedule, self.n_levels, self.state_shape, self.blind = schedule, schedule.n_levels, (1,), False
        self.sigma = ((1 - schedule.abar) / schedule.abar).sqrt().float()
        self.target = target

    def _logits(self, err):
        return -(torch.log(err.abs().clamp(min=1e-9)) - torch.log(self.sigma)[None]) ** 2

    def estimate_levels(self, x_prev, x_next):
        return self._logits(x_prev - self.target), self._logits(x_next - x_prev - 1)

    @staticmethod
    def _eps(y, ab, m, v):  # E[e | y] for x ~ N(m, v), y = sqrt(ab) x + sqrt(1 - ab) e
        return (1 - ab).sqrt() * (y - ab.sqrt() * m) / (ab * v + 1 - ab)

    def forward(self, x_prev, x_next, i2=None, i1=None):
        ab2 = self.schedule.abar[i2].float()[:, None]
        ab1 = self.schedule.abar[i1].float()[:, None]
        eps_prev = self._eps(x_prev, ab2, self.target, self.V_PREV)
        prev0 = (x_prev - (1 - ab2).sqrt() * eps_prev) / ab2.sqrt()
        eps_next = self._eps(x_next, ab1, prev0 + 1, self.V_NEXT)
        flat = torch.zeros(x_prev.shape[0], self.n_levels)
        return DenoiserOutput(eps_prev, eps_next, flat, flat)


def test_refiner_strided_coupled_and_leave_it():
    sch = log_sigma_schedule(40, sigma_min=1e-3, sigma_max=10.0)
    orc = ShiftOracle(sch)
    x = torch.tensor([[0.0], [0.0], [0.3]])  # two states on the "manifold", one off it

    def surrogate(u):  # exact on the first sample, 0.2 off on the second
        return u + 1 + torch.tensor([[0.0], [0.2], [0.0]])

    leave = SNSRefiner(orc, sch, surrogate, n_moves=2, skip_threshold=0, eta=0.0)
    y = leave(x)
    assert leave.last_refined.tolist() == [False, True, True]  # the exact step is left alone
    assert leave.last_calls.tolist()[0] == 1 and max(leave.last_calls.tolist()) <= 1 + 2 * 2
    assert y[0].item() == 1.0
    # without coupling the off-manifold x_{t-1} is cleaned but x_t (consistent with it) is kept
    assert abs(y[2].item() - 1.3) < 0.02
    coupled = SNSRefiner(orc, sch, surrogate, n_moves=2, skip_threshold=0, eta=0.0, couple_levels=True)
    yc = coupled(x)
    i2, i1 = coupled.last_levels
    assert int(i1[2]) >= int(i2[2]) > 20  # x_t inherits x_{t-1}'s level
    assert abs(yc[2].item() - 1.0) < abs(y[2].item() - 1.0) / 3  # regenerated from the cleaned x_{t-1}
    # unit steps cost 1 + s1 + s2; strided legs at most 1 + 2 n_moves
    unit = SNSRefiner(orc, sch, surrogate, couple_levels=True)
    unit(x)
    assert (unit.last_calls == 1 + unit.last_levels[0] + unit.last_levels[1] + 2).all()
    assert (coupled.last_calls <= 5).all() and coupled.calls_per_step < unit.calls_per_step


def test_refiner_option_errors():
    sch = log_sigma_schedule(10)
    orc = ShiftOracle(sch)
    with pytest.raises(ValueError, match="n_moves must be a positive integer"):
        SNSRefiner(orc, sch, lambda u: u, n_moves=0)
    with pytest.raises(ValueError, match="n_moves applies to the named paths"):
        SNSRefiner(orc, sch, lambda u: u, path=lambda s1, s2, S: None, n_moves=2)
    with pytest.raises(ValueError, match="eta must lie in"):
        SNSRefiner(orc, sch, lambda u: u, eta=-0.1)
    assert math.isnan(SNSRefiner(orc, sch, lambda u: u).calls_per_step)


def test_calibrate_proposal_sigma_and_skip_threshold():
    from sns.refine import calibrate_proposal_sigma, calibrate_skip_threshold

    g = torch.Generator().manual_seed(0)
    xp = torch.randn(4000, 1, generator=g)
    xn = xp + 1 + 0.05 * torch.randn(4000, 1, generator=g)  # the toy process of ShiftOracle
    sig = calibrate_proposal_sigma(lambda u: u + 1, xp, xn, batch=1000)  # the conditional-mean surrogate
    assert sig == pytest.approx(2**0.5 * 0.05, rel=0.05)
    assert calibrate_proposal_sigma(lambda u: u + 1, xp, xn, factor=1.0) == pytest.approx(0.05, rel=0.05)
    # the toy heads read clean pairs by their distance to the manifold: x_{t-1} = 0 exactly is the
    # bottom level; x_t is read at the level of its 0.05 spread
    sch = log_sigma_schedule(40, sigma_min=1e-3, sigma_max=10.0)
    k2, k1 = calibrate_skip_threshold(ShiftOracle(sch), torch.zeros(500, 1), 1 + 0.05 * torch.randn(500, 1, generator=g))
    sigma = ((1 - sch.abar) / sch.abar).sqrt()
    assert k2 == 0 and 0.05 < float(sigma[k1]) < 0.2
    with pytest.raises(ValueError, match="factor must be positive"):
        calibrate_proposal_sigma(lambda u: u, xp, xn, factor=0.0)
    with pytest.raises(ValueError, match="quantile must lie in"):
        calibrate_skip_threshold(ShiftOracle(sch), xp, xn, quantile=0.0)


def test_nearest_state_guard_calibration():
    """Reference states on the unit circle: held-out states on it read level 0; a state off it
    reads the level whose noised held-out states lie as far, increasing with the distance."""
    from sns.refine import NearestStateGuard

    g = torch.Generator().manual_seed(0)
    circle = lambda n: torch.stack([torch.cos(a := 2 * math.pi * torch.rand(n, generator=g)), torch.sin(a)], 1)
    sch = log_sigma_schedule(60, sigma_min=1e-3, sigma_max=10.0)
    guard = NearestStateGuard.calibrate(sch, circle(4000), circle(1000), quantile=0.999, n_probe=500)
    assert guard.threshold < 0.01  # held-out points on the circle are within the reference spacing
    assert (guard.distances.diff() >= 0).all() and guard.distances[0] < 0.01
    on = circle(200)
    assert (guard(on) == 0).all()
    sigma = ((1 - sch.abar) / sch.abar).sqrt()
    levels = [int(guard(torch.tensor([[r, 0.0]]))) for r in (1.05, 1.3, 2.0)]
    assert 0 < levels[0] < levels[1] < levels[2]
    # 2-D points noised at sigma lie ~0.67 sigma from a 1-D manifold (median |z|): d = 0.3 -> sigma ~0.45
    assert 0.2 < float(sigma[levels[1]]) < 1.0
    with pytest.raises(ValueError, match="states of 3 values"):
        guard(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="do not match the reference"):
        NearestStateGuard.calibrate(sch, circle(10), torch.zeros(5, 3))


def test_refiner_state_guard_floors_the_levels():
    sch = log_sigma_schedule(40, sigma_min=1e-3, sigma_max=10.0)
    orc = ShiftOracle(sch)
    x = torch.zeros(3, 1)  # all on the toy manifold, exact proposals: the heads read clean

    def surrogate(u):
        return u + 1

    floor = torch.tensor([0, 0, 25])
    ref = SNSRefiner(orc, sch, surrogate, n_moves=2, skip_threshold=0, eta=0.0, state_guard=lambda u: floor)
    y = ref(x)
    i2, i1 = ref.last_levels
    assert ref.last_refined.tolist() == [False, False, True]  # the guard overrides "leave it"
    assert int(i2[2]) >= 25 and int(i1[2]) >= 25 and (i2[:2] < 25).all()
    assert y[:2].flatten().tolist() == [1.0, 1.0]  # left alone
    assert abs(y[2].item() - 1.0) < 0.15  # re-noised at level 25 and sampled from x_t | x_{t-1} (std 0.05)
    with pytest.raises(ValueError, match="one level per sample"):
        SNSRefiner(orc, sch, surrogate, state_guard=lambda u: torch.zeros(2, dtype=torch.long))(x)
    with pytest.raises(TypeError, match="state_guard must be callable"):
        SNSRefiner(orc, sch, surrogate, state_guard=3)
