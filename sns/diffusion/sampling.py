"""The DDPM ancestral reverse step, vectorised over per-sample levels, in the x0 form.

For a state ``x`` at level ``i`` (0-based, see :mod:`sns.diffusion.schedules`) and
a noise estimate ``eps_hat``::

    x0_hat = (x - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i)          [optionally clamped]
    mean   = sqrt(abar_{i-1}) beta_i / (1 - abar_i) * x0_hat
           + sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i) * x
    x'     = mean + sigma_i z,   sigma_i^2 = beta_i (1 - abar_{i-1}) / (1 - abar_i)

with ``abar_{-1} = 1``, so the step at ``i = 0`` returns ``x0_hat`` with no noise.
Without clamping this equals Ho et al.'s eps form
``x' = (x - beta_i / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i) + sigma_i z``; the x0
form lets ``x0_hat`` be clamped, which keeps the top level (``beta = 0.999``,
``1/sqrt(alpha) ~ 32``) from amplifying network errors into NaN (DESIGN.md
section 5, pitfall 1).  Coefficients are computed in float64 and cast to ``x``'s dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sns.diffusion.noising import randn_like, table
from sns.diffusion.schedules import Schedule

__all__ = ["ModeVariance", "ddpm_step", "posterior_step", "predict_x0"]


@dataclass(frozen=True)
class ModeVariance:
    """A diagonal covariance in an orthonormal basis of the state: per coordinate
    (``spatial_dims = 0``) or per Fourier mode of the last ``spatial_dims`` axes (the orthonormal
    DFT, ``norm="ortho"``; the natural basis of a statistically homogeneous field, where modes are
    uncorrelated).

    What it is for: a strided reverse move ``i -> j`` replaces ``x0`` by the posterior *mean*
    ``x0_hat = E[x0 | x_i]``, so its output lacks the spread ``Cov(x0 | x_i)`` (on a field: the
    small scales the noise at level ``i`` hid, which a unit-step sampler would have regenerated
    move by move).  :func:`posterior_step` with ``x0_var`` adds ``c0 xi``, ``xi ~ N(0, V_i)``
    drawn in this basis, ``c0`` the step's coefficient of ``x0``.  ``V_i`` comes in two forms:

    * **a prior** (``per_level=False``; ``var`` the shape of one state): the law the move samples
      from per mode (the data's own variance for an unconditional state, that of ``x_t`` given
      ``x_{t-1}`` for the conditional leg of a pair), and ``V_i`` its Gaussian posterior variance
      ``var (1 - abar_i) / (abar_i var + 1 - abar_i)``.  For Gaussian data whose covariance is
      diagonal in this basis every strided move is then exact (tests/test_mode_variance.py).
    * **measured per level** (``per_level=True``; ``var`` of shape ``(S, *state)``, from
      :meth:`from_denoiser`): ``V_i`` is the denoiser's own mean squared ``x0`` error per mode at
      level ``i`` on held-out pairs, which is ``E Cov(x0 | x_i)`` if the denoiser is the posterior
      mean, without a Gaussian assumption and with whatever the denoiser fails to take from
      ``x_{t-1}`` (measured with a clean ``x_{t-1}``).

    Units: the denoiser's (normalised) ones.  ``var`` must be non-negative and finite.
    """

    var: Tensor
    spatial_dims: int = 0
    per_level: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.var, Tensor):
            raise TypeError(f"var must be a tensor, got {type(self.var).__name__}")
        state_ndim = self.var.ndim - int(self.per_level)
        if state_ndim < 0 or not 0 <= self.spatial_dims <= state_ndim:
            raise ValueError(f"spatial_dims must lie in [0, {max(state_ndim, 0)}] for var of shape "
                             f"{tuple(self.var.shape)} (per_level={self.per_level}), got {self.spatial_dims!r}")
        if not bool(torch.isfinite(self.var).all()) or bool((self.var < 0).any()):
            raise ValueError("var must be finite and non-negative")

    @classmethod
    def from_samples(cls, samples: Tensor, spatial_dims: int = 0) -> ModeVariance:
        """A prior: the per-mode second moment of ``samples`` ``(N, *state)`` (their mean is not
        removed: e.g. residuals ``x_t - F(x_{t-1})`` of a surrogate, whose bias counts as spread)."""
        if samples.ndim < 1 or samples.shape[0] < 2:
            raise ValueError(f"need at least 2 samples (N, *state), got shape {tuple(samples.shape)}")
        return cls(cls._power(samples, spatial_dims).mean(0).to(samples.dtype), spatial_dims)

    @classmethod
    @torch.no_grad()
    def from_denoiser(cls, denoiser, schedule: Schedule, x_prev: Tensor, x_next: Tensor, spatial_dims: int = 0,
                      batch: int = 256, generator: torch.Generator | None = None) -> ModeVariance:
        """Measured per level: for every table level ``i``, noise the clean ``x_next`` to ``i``, take
        the pair denoiser's ``x0_hat`` given the clean ``x_prev`` (shown as level 0, as on a path
        after ``x_{t-1}`` is clean), and average ``|DFT(x0_hat - x_next)|^2`` over the pairs.
        ``S`` calls per ``batch`` pairs; a few hundred pairs give a stable table."""
        from sns.diffusion.noising import noise_state

        if x_prev.shape != x_next.shape or x_prev.shape[0] < 2:
            raise ValueError(f"need at least 2 pairs of equal shape, got {tuple(x_prev.shape)} and "
                             f"{tuple(x_next.shape)}")
        S, n = schedule.n_levels, x_next.shape[0]
        table_ = torch.zeros(S, *x_next.shape[1:], dtype=torch.float64)
        for a in range(0, n, batch):
            xp, xn = x_prev[a:a + batch], x_next[a:a + batch]
            zero = torch.zeros(len(xn), dtype=torch.long, device=xn.device)
            for i in range(S):
                lv = torch.full_like(zero, i)
                xi, _ = noise_state(schedule, xn, lv, generator=generator)
                x0 = predict_x0(schedule, xi, denoiser(xp, xi, zero, lv).eps_next, lv)
                table_[i] += cls._power(x0 - xn, spatial_dims).sum(0).cpu()
        return cls((table_ / n).to(x_next.dtype), spatial_dims, per_level=True)

    @classmethod
    def _power(cls, x: Tensor, spatial_dims: int) -> Tensor:
        x = x.double()
        if spatial_dims:
            x = torch.fft.fftn(x, dim=tuple(range(x.ndim - spatial_dims, x.ndim)), norm="ortho")
        return x.abs() ** 2

    def posterior_var(self, abar: Tensor, level: Tensor | None = None) -> Tensor:
        """``V_i`` per sample and mode (float64, ``(B, *state)``): from ``abar_i`` ``(B,)`` for a
        prior, from the table at ``level`` ``(B,)`` when measured per level."""
        if self.per_level:
            if level is None:
                raise ValueError("a per-level ModeVariance needs the levels")
            return self.var[level.cpu()].double()
        ab = abar.double().reshape(-1, *([1] * self.var.ndim))
        v = self.var.double().to(abar.device)
        return v * (1 - ab) / (ab * v + 1 - ab)

    def sample(self, var: Tensor, z: Tensor) -> Tensor:
        """Colour white noise ``z`` ``(B, *state)`` to per-mode variance ``var`` (broadcasting to it):
        ``z`` itself scaled per coordinate, or ``IDFT(sqrt(var) DFT(z))`` (real, because ``var`` of
        real data is symmetric under ``k -> -k``; the imaginary round-off is dropped)."""
        root = var.to(z.device).clamp(min=0).sqrt()
        if not self.spatial_dims:
            return (root * z.double()).to(z.dtype)
        dims = tuple(range(z.ndim - self.spatial_dims, z.ndim))
        coloured = torch.fft.ifftn(root * torch.fft.fftn(z.double(), dim=dims, norm="ortho"), dim=dims, norm="ortho")
        return coloured.real.to(z.dtype)


def predict_x0(schedule: Schedule, x: Tensor, eps_hat: Tensor, i: Tensor,
               clamp: float | None = None) -> Tensor:
    """``x0_hat = (x - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i)``, clamped to ``[-clamp, clamp]``."""
    abar = table(schedule.abar, i, x)
    x0 = (x - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    return x0 if clamp is None else x0.clamp(-clamp, clamp)


def ddpm_step(
    schedule: Schedule,
    x: Tensor,
    eps_hat: Tensor,
    i: Tensor,
    z: Tensor | None = None,
    clamp: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One ancestral step from level ``i`` to ``i - 1`` (to the clean state at ``i = 0``).

    Args:
        x: states at levels ``i``, ``(B, ...)``.
        eps_hat: predicted noise, ``x``'s shape.
        i: integer levels ``(B,)`` in ``[0, S)``, one per sample.
        z: standard normal noise (``x``'s shape); drawn with ``generator`` if ``None``.
            Ignored where ``i = 0``.
        clamp: clamp ``x0_hat`` to ``[-clamp, clamp]`` (in the units of the state).
    """
    if i.shape != (x.shape[0],):
        raise ValueError(f"levels must have shape ({x.shape[0]},), got {tuple(i.shape)}")
    schedule.check_levels(i)
    x0 = predict_x0(schedule, x, eps_hat, i, clamp)
    one_m_abar = table(1 - schedule.abar, i, x)
    c0 = table(schedule.abar_prev.sqrt() * schedule.betas, i, x) / one_m_abar
    cx = table(schedule.alphas.sqrt() * (1 - schedule.abar_prev), i, x) / one_m_abar
    mean = c0 * x0 + cx * x
    sigma = table(schedule.posterior_variance.sqrt(), i, x)
    if z is None:
        z = randn_like(x, generator)
    return mean + sigma * z


def posterior_step(
    schedule: Schedule,
    x: Tensor,
    eps_hat: Tensor,
    i: Tensor,
    j: Tensor,
    z: Tensor | None = None,
    clamp: float | None = None,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    x0_var: ModeVariance | None = None,
    z_x0: Tensor | None = None,
) -> Tensor:
    """A (possibly strided) reverse step from level ``i`` to level ``j < i`` (``j = -1``: clean).

    With ``a = abar_i / abar_j`` (``abar_{-1} = 1``) the forward kernel is
    ``q(x_i | x_j) = N(sqrt(a) x_j, (1 - a) I)``, and the DDPM posterior given ``x0``::

        q(x_j | x_i, x0) = N(mean, var),  var = (1 - a)(1 - abar_j) / (1 - abar_i),
        mean = sqrt(abar_j) x0 + sqrt(1 - abar_j - var) eps',  eps' = (x - sqrt(abar_i) x0) / sqrt(1 - abar_i)

    This step draws ``x_j = sqrt(abar_j) x0_hat + sqrt(1 - abar_j - s^2) eps' + s z`` with
    ``s = eta sqrt(var)`` (Song et al. 2021, DDIM, eq. 12): ``eta = 1`` is the DDPM posterior
    (for ``j = i - 1`` exactly :func:`ddpm_step`), ``eta = 0`` the deterministic DDIM step.
    ``eps'`` is recomputed from the (optionally clamped) ``x0_hat``, so clamping stays consistent.
    At ``j = -1`` the step returns ``x0_hat``.

    Strided steps are exact only for an exact oracle *and* the continuum limit: for unit-variance
    Gaussian data one DDPM step ``i -> j`` gives the marginal variance
    ``a + (1 - a)(1 - abar_j)/(1 - abar_i)`` (below the true 1); see tests/test_oracle.py.

    Args:
        x: states at levels ``i``, ``(B, ...)``; ``eps_hat``: predicted noise (``x``'s shape).
        i, j: integer levels ``(B,)``, ``i`` in ``[0, S)``, ``-1 <= j < i``.
        z: standard normal noise (drawn with ``generator`` if ``None``); unused where ``j = -1``.
        eta: stochasticity in ``[0, 1]``.
        x0_var: variance-corrected move (:class:`ModeVariance`): also add ``c0 xi``, ``xi`` the
            spread of ``x0`` given ``x_i`` that ``x0_hat`` lacks, ``c0 = sqrt(abar_j) -
            sqrt((1 - abar_j - s^2) abar_i / (1 - abar_i))`` the step's coefficient of ``x0``;
            ``None``: the plain step.
        z_x0: standard normal noise for ``xi`` (drawn with ``generator`` if ``None``).
    """
    if i.shape != (x.shape[0],) or j.shape != (x.shape[0],):
        raise ValueError(f"levels must have shape ({x.shape[0]},), got i {tuple(i.shape)}, j {tuple(j.shape)}")
    schedule.check_levels(i)
    bad = ((j < -1) | (j >= i)).nonzero()
    if len(bad):
        b = int(bad[0])
        raise ValueError(f"target level j[{b}] = {int(j[b])} must satisfy -1 <= j < i = {int(i[b])}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    x0 = predict_x0(schedule, x, eps_hat, i, clamp)
    abar_ext = torch.cat([torch.ones(1, dtype=torch.float64), schedule.abar])  # abar_ext[j + 1] = abar_j
    ab_i, ab_j = schedule.abar[i.cpu()], abar_ext[(j + 1).cpu()]  # float64 (B,)
    var = (1 - ab_i / ab_j) * (1 - ab_j) / (1 - ab_i)
    s2 = eta**2 * var
    col = lambda v: v.to(x.device).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    eps = (x - col(ab_i.sqrt()) * x0) / col((1 - ab_i).sqrt())
    out = col(ab_j.sqrt()) * x0 + col((1 - ab_j - s2).clamp(min=0).sqrt()) * eps
    s = col(s2.sqrt())
    if eta > 0:
        if z is None:
            z = randn_like(x, generator)
        out = out + s * z
    if x0_var is not None:
        c0 = ab_j.sqrt() - ((1 - ab_j - s2).clamp(min=0) * ab_i / (1 - ab_i)).sqrt()
        if z_x0 is None:
            z_x0 = randn_like(x, generator)
        xi = x0_var.sample(x0_var.posterior_var(ab_i, i), z_x0)
        out = out + col(c0) * xi
    return out
