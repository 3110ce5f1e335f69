"""The theory with an exact oracle: a linear-Gaussian AR(1) process.

Process (per coordinate d, stationary ``N(m, q)``)::

    x_t = m + a (x_{t-1} - m) + sqrt(q (1 - a^2)) w,   w ~ N(0, 1)

Noised pair ``y2 = sqrt(ab2) x_{t-1} + sqrt(1-ab2) e2``, ``y1 = sqrt(ab1) x_t + sqrt(1-ab1) e1``
(``ab = abar`` at each state's level).  ``(e2, e1, y2, y1)`` is jointly Gaussian, so the
optimal noise predictor is the Gaussian conditional expectation
``E[e | y] = Cov(e, y) Cov(y)^{-1} (y - E y)`` with ``E y = sqrt(ab) m`` and::

    Cov(y) = [[ab2 q + 1 - ab2,  sqrt(ab1 ab2) a q],
              [sqrt(ab1 ab2) a q, ab1 q + 1 - ab1]],
    Cov(e2, y) = [sqrt(1 - ab2), 0],   Cov(e1, y) = [0, sqrt(1 - ab1)].
"""

import torch

from sns.diffusion import (
    clean_conditioning_path,
    cosine_schedule,
    ddpm_step,
    noise_pair,
    path_A,
    path_B,
    path_C,
    traverse,
)
from sns.nets.base import DenoiserOutput, PairDenoiser

A = torch.tensor([0.8, -0.5], dtype=torch.float64)
M = torch.tensor([1.0, -2.0], dtype=torch.float64)
Q = torch.tensor([1.0, 0.25], dtype=torch.float64)


class AR1Oracle(PairDenoiser):
    """The exact (explicit-level) pair denoiser of the AR(1) process in the module docstring.

    ``estimate_levels`` returns each state's marginal Gaussian log-likelihood per level
    (the Bayes classifier of its level from that state alone, uniform prior); ``forward``
    is given the levels and returns uniform logits.
    """

    def __init__(self, schedule, a=A, m=M, q=Q):
        super().__init__()
        self.schedule, self.a, self.m, self.q = schedule, a, m, q
        self.n_levels = schedule.n_levels
        self.state_shape = (a.numel(),)
        self.blind = False

    def forward(self, x_prev, x_next, i2=None, i1=None):
        ab2, ab1 = self.schedule.abar[i2][:, None], self.schedule.abar[i1][:, None]
        y2 = x_prev - ab2.sqrt() * self.m
        y1 = x_next - ab1.sqrt() * self.m
        c22, c11 = ab2 * self.q + 1 - ab2, ab1 * self.q + 1 - ab1
        c12 = (ab1 * ab2).sqrt() * self.a * self.q
        det = c11 * c22 - c12**2
        eps_prev = (1 - ab2).sqrt() * (c11 * y2 - c12 * y1) / det
        eps_next = (1 - ab1).sqrt() * (c22 * y1 - c12 * y2) / det
        flat = torch.zeros(1, self.n_levels, dtype=x_prev.dtype).expand(x_prev.shape[0], -1)
        return DenoiserOutput(eps_prev, eps_next, flat, flat)

    def estimate_levels(self, x_prev, x_next):
        ab = self.schedule.abar[None, :, None]
        var = ab * self.q + 1 - ab
        out = [(-0.5 * ((x[:, None] - ab.sqrt() * self.m) ** 2 / var + var.log())).sum(-1) for x in (x_prev, x_next)]
        return out[0], out[1]


def true_conditional(c):
    """Mean and variance of p(x_t | x_{t-1} = c)."""
    return M + A * (c - M), Q * (1 - A**2)


def test_oracle_is_the_regression_of_the_noise():
    """Sanity: on samples, the oracle's residual noise is uncorrelated with the pair (normal equations)."""
    sch = cosine_schedule(100)
    g = torch.Generator().manual_seed(0)
    N = 200_000
    xp = M + Q.sqrt() * torch.randn(N, 2, generator=g, dtype=torch.float64)
    xn = M + A * (xp - M) + (Q * (1 - A**2)).sqrt() * torch.randn(N, 2, generator=g, dtype=torch.float64)
    s2, s1 = torch.full((N,), 30), torch.full((N,), 60)
    y2, y1, e2, e1 = noise_pair(sch, xp, xn, s2, s1, generator=g)
    out = AR1Oracle(sch)(y2, y1, s2, s1)
    for r in (e2 - out.eps_prev, e1 - out.eps_next):
        for y in (y2, y1):
            corr = ((r - r.mean(0)) * (y - y.mean(0))).mean(0)
            assert corr.abs().max() < 4 / N**0.5  # ~4 standard errors of a covariance of unit-scale variables


def test_exact_sampler_law_converges_to_the_true_conditional():
    """Propagate the sampler's exact Gaussian law (affine steps + posterior noise) through the
    clean-conditioning path: the DDPM discretisation bias of the variance is 5-10% at S = 100
    and below 2% at S = 1000 (why the Monte Carlo test below uses S = 1000)."""
    c = torch.tensor([1.5, -1.0], dtype=torch.float64)
    mu_true, var_true = true_conditional(c)
    bias = {}
    for S in (100, 1000):
        sch = cosine_schedule(S)
        orc = AR1Oracle(sch)
        mean, var = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)  # x_t ~ N(0, I) at s1 = S
        xp = c.expand(2, 2)
        zero = torch.zeros(2, 2, dtype=torch.float64)
        for i in range(S - 1, -1, -1):
            lv, l0 = torch.full((2,), i), torch.zeros(2, dtype=torch.long)
            x = torch.stack([torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)])
            f = ddpm_step(sch, x, orc(xp, x, l0, lv).eps_next, lv, zero)
            gain, offset = f[1] - f[0], f[0]
            mean, var = gain * mean + offset, gain**2 * var + sch.posterior_variance[i]
        torch.testing.assert_close(mean, mu_true, rtol=0, atol=2e-3)
        bias[S] = (var / var_true - 1).abs().max().item()
    assert 0.03 < bias[100] < 0.12
    assert bias[1000] < 0.02


def test_clean_conditioning_samples_match_true_conditional():
    """x_{t-1} = c clean, x_t from pure noise at s1 = S: mean and variance of N = 10^4 samples
    match p(x_t | x_{t-1} = c) within 4 standard errors (mean: sqrt(var/N) ~ 0.01 sd; variance:
    sqrt(2/N) ~ 1.4% relative) plus the <= 2% discretisation bias at S = 1000 (test above)."""
    S, N = 1000, 10_000
    sch = cosine_schedule(S)
    g = torch.Generator().manual_seed(1)
    c = torch.tensor([1.5, -1.0], dtype=torch.float64)
    xp = c.expand(N, 2).clone()
    xn = torch.randn(N, 2, generator=g, dtype=torch.float64)
    r = traverse(AR1Oracle(sch), sch, xp, xn, clean_conditioning_path(S), generator=g)
    assert r.network_calls == S and (r.calls == S).all()
    torch.testing.assert_close(r.x_prev, xp)  # the conditioning is never touched
    mu, var = true_conditional(c)
    assert ((r.x_next.mean(0) - mu).abs() < 4 * (var / N).sqrt()).all()
    assert ((r.x_next.var(0) / var - 1).abs() < 4 * (2 / N) ** 0.5 + 0.02).all()


def test_paths_A_B_C_give_the_same_distribution():
    """Path independence (Theorem 3.1): from the same noised pair, paths A, B, C each sample the
    posterior p(x_{t-1}, x_t | y2, y1).  Then the refined x_t has the stationary law N(m, q) and
    Cov(x_t_hat, x_{t-1}) = Cov(x_t, y) Cov(y)^{-1} Cov(y, x_{t-1}) for the original clean x_{t-1}.
    Tolerance: 4 standard errors with N = 6000 plus a 2% discretisation allowance at S = 1000."""
    S, N = 1000, 6000
    sch = cosine_schedule(S)
    orc = AR1Oracle(sch)
    g = torch.Generator().manual_seed(2)
    xp = M + Q.sqrt() * torch.randn(N, 2, generator=g, dtype=torch.float64)
    xn = M + A * (xp - M) + (Q * (1 - A**2)).sqrt() * torch.randn(N, 2, generator=g, dtype=torch.float64)
    s1, s2 = 500, 300  # phase-space coordinates: table levels 499 and 299
    i1, i2 = torch.full((N,), s1 - 1), torch.full((N,), s2 - 1)
    y2, y1, _, _ = noise_pair(sch, xp, xn, i2, i1, generator=g)
    ab1, ab2 = sch.abar[s1 - 1], sch.abar[s2 - 1]
    # closed form Cov(x_t_hat, x_{t-1}) per coordinate
    cyy = torch.stack([torch.stack([ab2 * Q + 1 - ab2, (ab1 * ab2).sqrt() * A * Q]),
                       torch.stack([(ab1 * ab2).sqrt() * A * Q, ab1 * Q + 1 - ab1])]).permute(2, 0, 1)
    c_xt_y = torch.stack([ab2.sqrt() * A * Q, ab1.sqrt() * Q], -1)[:, None]  # (D, 1, 2): Cov(x_t, (y2, y1))
    c_y_xp = torch.stack([ab2.sqrt() * Q, ab1.sqrt() * A * Q], -1)[:, :, None]  # (D, 2, 1)
    cov_true = (c_xt_y @ torch.linalg.solve(cyy, c_y_xp)).flatten()
    results = {}
    for name, make in (("A", path_A), ("B", path_B), ("C", path_C)):
        r = traverse(orc, sch, y2, y1, make(s1, s2, S), generator=g)
        assert (r.calls == (s1 + s2 if name != "C" else max(s1, s2))).all()
        xt = r.x_next
        mean, var = xt.mean(0), xt.var(0)
        cov = ((xt - mean) * (xp - xp.mean(0))).mean(0)
        results[name] = (mean, var, cov)
        assert ((mean - M).abs() < 4 * (Q / N).sqrt()).all(), name
        assert ((var / Q - 1).abs() < 4 * (2 / N) ** 0.5 + 0.02).all(), name
        se_cov = ((Q * Q + cov_true**2) / N).sqrt()
        assert ((cov - cov_true).abs() < 4 * se_cov + 0.02 * Q).all(), (name, cov, cov_true)
    # the correlation carried over is substantial, so the test can tell paths from unconditional sampling
    assert (cov_true.abs() > 0.1 * Q).all()


# --------------------------------------------------------------------------- strided moves


C_STRIDED = torch.tensor([1.5, -1.0], dtype=torch.float64)


def _strided_law(sch, n_moves, eta, start=None, c=C_STRIDED, x0_var=None):
    """Exact Gaussian law of x_t after the conditional path (clean x_{t-1} = c) from coordinate
    ``start`` (default S) to 0 in ``n_moves`` strided moves (``None``: unit steps), exact AR(1)
    oracle, x_t starting from its exact marginal at that level; ``x0_var``: variance-corrected moves
    (:class:`sns.diffusion.ModeVariance`).  The step is affine in (x, z, z_x0), so its gain and
    noise coefficients are read off by probing.  Returns (mean error, var / true - 1)."""
    from sns.diffusion import posterior_step
    from sns.diffusion.paths import _leg

    S = sch.n_levels
    start = S if start is None else start
    orc = AR1Oracle(sch)
    coords = _leg(torch.tensor([start]), n_moves)[0].unique_consecutive() if n_moves else torch.arange(start, -1, -1)
    mu, v = true_conditional(c)
    ab0 = sch.abar[start - 1]
    mean, var = ab0.sqrt() * mu, ab0 * v + 1 - ab0
    xp = c.expand(3, 2)
    zero, one = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    for s, s_new in zip(coords[:-1].tolist(), coords[1:].tolist()):
        i, j = torch.full((3,), s - 1), torch.full((3,), s_new - 1)
        x = torch.stack([torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                         torch.zeros(2, dtype=torch.float64)])
        eps = orc(xp, x, torch.zeros(3, dtype=torch.long), i).eps_next
        f = posterior_step(sch, x, eps, i, j, zero, eta=eta, x0_var=x0_var, z_x0=zero)
        g = posterior_step(sch, x, eps, i, j, one, eta=eta, x0_var=x0_var, z_x0=zero)
        h = posterior_step(sch, x, eps, i, j, zero, eta=eta, x0_var=x0_var, z_x0=one)
        gain, offset = f[1] - f[0], f[0]
        mean, var = gain * mean + offset, gain**2 * var + (g[0] - f[0]) ** 2 + (h[2] - f[2]) ** 2
    return mean - mu, var / v - 1


def test_one_strided_step_loses_the_stated_variance():
    """Unit-variance Gaussian data (AR(1) with a = 0, q = 1, m = 0), exact oracle, x_i ~ N(0, 1):
    one DDPM step i -> j has marginal variance r + (1 - r)(1 - abar_j)/(1 - abar_i), r = abar_i/abar_j;
    one DDIM step (eta = 0) has (sqrt(abar_i abar_j) + sqrt((1 - abar_i)(1 - abar_j)))^2.  Both < 1."""
    from sns.diffusion import log_sigma_schedule, posterior_step

    for sch in (cosine_schedule(100), log_sigma_schedule(100)):
        orc = AR1Oracle(sch, a=torch.zeros(1, dtype=torch.float64), m=torch.zeros(1, dtype=torch.float64),
                        q=torch.ones(1, dtype=torch.float64))
        for i_, j_ in ((99, 49), (60, 10), (30, 29), (20, -1)):
            i, j = torch.full((2,), i_), torch.full((2,), j_)
            x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
            prev = torch.zeros(2, 1, dtype=torch.float64)
            ab_i = sch.abar[i_]
            ab_j = sch.abar[j_] if j_ >= 0 else torch.tensor(1.0, dtype=torch.float64)
            r = ab_i / ab_j
            for eta, want in ((1.0, r + (1 - r) * (1 - ab_j) / (1 - ab_i)),
                              (0.0, ((ab_i * ab_j).sqrt() + ((1 - ab_i) * (1 - ab_j)).sqrt()) ** 2)):
                f = posterior_step(sch, x, orc(prev, x, i, i).eps_next, i, j, torch.zeros(2, 1, dtype=torch.float64),
                                   eta=eta)
                gain = f[1] - f[0]
                post = (1 - r) * (1 - ab_j) / (1 - ab_i)
                got = gain**2 + eta**2 * post
                torch.testing.assert_close(got[0], want, rtol=1e-9, atol=1e-12)
                assert float(want) <= 1 + 1e-12


def test_strided_paths_keep_the_mean_and_lose_variance_per_stride():
    """The exact law through strided conditional paths (S = 100, exact oracle, start law exact):
    the mean is exact for any stride up to the clean x_{t-1} being shown to the oracle as table level
    0 (abar_0 < 1: 1.4e-3 on the cosine schedule, 2e-6 on log-sigma); the variance deficit grows as the moves get fewer.  Measured, relative to the true
    conditional variance (worse coordinate), from the top (coordinate S), DDPM / DDIM:

    ======== ================= =================
    moves    cosine            log-sigma 1e-3..80
    ======== ================= =================
    unit     -0.08 / -0.03     -0.11 / -0.06
    20       -0.27 / -0.16     -0.40 / -0.25
    5        -0.59 / -0.51     -0.80 / -0.69
    2        -0.87 / -0.87     -0.86 / -0.86
    1        -1.00 / -1.00     -1.00 / -1.00
    ======== ================= =================

    DDIM loses less than DDPM at every stride.  From a low start, as in refinement, the deficit is
    bounded by the posterior variance at the start level: from coordinate 30 of the log-sigma
    schedule (sigma 0.027, against a conditional std of 0.35-0.6) even 1 move loses < 0.5%."""
    from sns.diffusion import log_sigma_schedule

    for sch in (cosine_schedule(100), log_sigma_schedule(100)):
        bias = {}
        for n in (None, 20, 5, 2):
            for eta in (1.0, 0.0):
                dm, dv = _strided_law(sch, n, eta)
                assert dm.abs().max() < 2e-3, (sch.name, n, eta, dm)
                bias[n, eta] = float(dv.min())
        assert all(b < 0 for b in bias.values())
        ddpm = [bias[n, 1.0] for n in (None, 20, 5, 2)]
        assert ddpm == sorted(ddpm, reverse=True), ddpm  # fewer moves, larger deficit
        assert -0.15 < bias[None, 1.0] < -0.02
        assert all(bias[n, 0.0] >= bias[n, 1.0] - 1e-9 for n in (None, 20, 5, 2))  # DDIM loses less
    sch = log_sigma_schedule(100)
    for n in (1, 2):
        dm, dv = _strided_law(sch, n, 1.0, start=30)
        assert dm.abs().max() < 1e-6 and -6e-3 < float(dv.min()) < -1e-3
