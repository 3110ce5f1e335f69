"""PDE-Refiner (Lippe et al. 2023) as a stepper, with its training loss.

A conditional network ``G(x_{t-1}, y^k, k)`` first predicts ``x_t`` from ``x_{t-1}`` alone
(``k = K``: its input ``y^K`` is pure noise, so the prediction is a plain one-step forecast),
then refines it in ``K`` steps with decreasing noise.  It is a ``K + 1``-level DDPM with
v-prediction whose schedule is (reference implementation: PDEArena's ``PDERefiner``, also
used by the Thermalizer code, a diffusers ``DDPMScheduler`` with these ``trained_betas``)::

    beta_k = min_noise_std ** ((K - k) / K),   k = 0..K      (beta_K = 1: pure noise)
    abar_k = prod_{j <= k} (1 - beta_j)

so refinement step ``r = K - k`` (r = 1..K) adds noise of variance ``beta = min_noise_std^(r/K)``
to the current estimate: the noise std shrinks geometrically from about
``min_noise_std^(1/(2K))`` to ``min_noise_std^(1/2)`` (K = 3, 4e-7: std 0.086, 0.0074,
0.00063, exactly ``sqrt(1 - abar_k)``).  (The paper writes the schedule as
``sigma_min^(k/K)``; the reference code applies it to the per-step variance ``beta``, which is
what is implemented and tested here.)

Training (:func:`pde_refiner_loss`): ``k ~ U{0..K}``, ``y^k = sqrt(abar_k) y + sqrt(1 - abar_k) e``,
target ``v = sqrt(abar_k) e - sqrt(1 - abar_k) y`` (at ``k = K``: ``v = -y``), MSE.
Sampling: ``y^K ~ N(0, I)``; for ``k = K..0``: ``y0_hat = sqrt(abar_k) y^k - sqrt(1 - abar_k) v_hat``,
then the DDPM posterior step to level ``k - 1`` (no noise at ``k = 0``).  ``K + 1`` calls per step.

The network is any *explicit* pair denoiser with ``n_levels = K + 1``: it receives the clean
``x_{t-1}`` as ``x_prev`` (level ``s2 = 0``), ``y^k`` as ``x_next`` with ``s1 = k``, and its
``eps_next`` output is read as ``v_hat`` (its other outputs are unused).  Defaults K = 3,
``min_noise_std`` = 4e-7 (the paper's comparison).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sns.diffusion.noising import randn_like
from sns.nets.base import PairDenoiser

__all__ = ["PDERefiner", "from_settings", "pde_refiner_loss", "pde_refiner_schedule"]


def pde_refiner_schedule(n_refinement_steps: int = 3, min_noise_std: float = 4e-7) -> dict[str, Tensor]:
    """Float64 tables ``betas``, ``abar``, ``abar_prev``, ``noise_std = sqrt(1 - abar)``, each ``(K+1,)``."""
    K = n_refinement_steps
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"n_refinement_steps must be a positive integer, got {K!r}")
    if not 0 < min_noise_std < 1:
        raise ValueError(f"min_noise_std must lie in (0, 1), got {min_noise_std!r}")
    k = torch.arange(K + 1, dtype=torch.float64)
    betas = torch.tensor(min_noise_std, dtype=torch.float64) ** ((K - k) / K)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return {"betas": betas, "abar": abar, "abar_prev": abar_prev, "noise_std": (1 - abar).sqrt()}


def _col(values: Tensor, k: Tensor, like: Tensor) -> Tensor:
    return values.to(like.device)[k.to(like.device)].reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def _check(model: PairDenoiser, K: int) -> None:
    if model.n_levels != K + 1:
        raise ValueError(f"a PDE-Refiner with K = {K} refinement steps needs a network with n_levels = K + 1 = "
                         f"{K + 1}, got {model.n_levels}")
    if getattr(model, "blind", False):
        raise ValueError("PDE-Refiner needs an explicit network (the step k is given to it); got a blind one")


def pde_refiner_loss(
    model: PairDenoiser,
    x_prev: Tensor,
    x_next: Tensor,
    n_refinement_steps: int = 3,
    min_noise_std: float = 4e-7,
    generator: torch.Generator | None = None,
) -> Tensor:
    """v-prediction MSE of PDE-Refiner on clean pairs ``(x_{t-1}, x_t)`` (module docstring)."""
    K = n_refinement_steps
    _check(model, K)
    model.check_pair(x_prev, x_next)
    tab = pde_refiner_schedule(K, min_noise_std)
    B = x_prev.shape[0]
    dev = generator.device if generator is not None else "cpu"
    k = torch.randint(0, K + 1, (B,), generator=generator, device=dev).to(x_prev.device)
    e = randn_like(x_next, generator)
    a = _col(tab["abar"], k, x_next)
    y_k = a.sqrt() * x_next + (1 - a).sqrt() * e
    target = a.sqrt() * e - (1 - a).sqrt() * x_next
    zeros = torch.zeros_like(k)
    v_hat = model(x_prev, y_k, zeros, k).eps_next
    return F.mse_loss(v_hat, target)


class PDERefiner(nn.Module):
    """PDE-Refiner stepper ``x_{t-1} -> x_t`` (``K + 1`` network calls per step).

    Args:
        model: explicit pair denoiser with ``n_levels = K + 1`` trained by :func:`pde_refiner_loss`.
        n_refinement_steps: K (paper: 3).
        min_noise_std: the schedule's minimum (paper: 4e-7).
    """

    def __init__(self, model: PairDenoiser, n_refinement_steps: int = 3, min_noise_std: float = 4e-7) -> None:
        super().__init__()
        _check(model, n_refinement_steps)
        self.model = model
        self.K = n_refinement_steps
        self.min_noise_std = float(min_noise_std)
        self.tables = pde_refiner_schedule(self.K, self.min_noise_std)
        self.last_calls: int | None = None

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One step ``(B, *state) -> (B, *state)``."""
        self.model.check_pair(x, x)
        B = x.shape[0]
        t = self.tables
        y = randn_like(x, generator)
        zeros = torch.zeros(B, dtype=torch.long, device=x.device)
        for k in range(self.K, -1, -1):
            kk = torch.full((B,), k, dtype=torch.long, device=x.device)
            v_hat = self.model(x, y, zeros, kk).eps_next
            a, a_prev, beta = (float(t[n][k]) for n in ("abar", "abar_prev", "betas"))
            y0 = a ** 0.5 * y - (1 - a) ** 0.5 * v_hat
            if k == 0:
                y = y0
                break
            c0 = a_prev ** 0.5 * beta / (1 - a)
            cy = (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)
            var = beta * (1 - a_prev) / (1 - a)
            y = c0 * y0 + cy * y + var ** 0.5 * randn_like(y, generator)
        self.last_calls = self.K + 1
        return y


def from_settings(model, extra, surrogate, settings, context) -> tuple[PDERefiner, dict]:
    """Registry builder (:mod:`sns.methods`): K and the minimum noise are the ones the model was
    trained with (its file's ``pde_refiner`` record); ``settings`` may only repeat them."""
    trained = dict(extra.get("pde_refiner") or {})
    p = {"n_refinement_steps": int(trained.get("n_refinement_steps", 3)),
         "min_noise_std": float(trained.get("min_noise_std", 4e-7))}
    for key, value in settings.items():
        if key not in p:
            raise ValueError(f"unknown pde_refiner option {key!r}; valid: {sorted(p)} (fixed by training)")
        if value is not None and float(value) != p[key]:
            raise ValueError(f"pde_refiner.{key}={value!r} differs from the trained model's {p[key]!r}: "
                             "K and the noise schedule are fixed at training (sns-train task=pde_refiner)")
    return PDERefiner(model, p["n_refinement_steps"], p["min_noise_std"]), p
