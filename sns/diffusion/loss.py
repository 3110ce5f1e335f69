"""Multi-noise-level denoising score matching for pair denoisers (SNS, DESIGN.md section 1).

For a clean pair ``(x_{t-1}, x_t)``, draw ``s1, s2 ~ Uniform{0..S-1}`` independently per
sample, noise each state with its own noise (:func:`sns.diffusion.noising.noise_pair`) and
minimise::

    L = MSE(eps_hat, (e2, e1)) + lambda_ce * (CE(logits_s2, s2) + CE(logits_s1, s1))

The MSE is the mean over both states and all entries; CE is the mean cross-entropy of
the S-way level heads.  Blind denoisers ignore the levels passed to them; explicit
denoisers embed them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sns.diffusion.noising import noise_pair
from sns.diffusion.schedules import Schedule
from sns.nets.base import PairDenoiser

__all__ = ["pair_dsm_loss"]


def pair_dsm_loss(
    denoiser: PairDenoiser,
    schedule: Schedule,
    x_prev: Tensor,
    x_next: Tensor,
    lambda_ce: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Return ``(loss, parts)`` with ``parts = {"mse", "ce_s2", "ce_s1"}`` (detached).

    Args:
        denoiser: any :class:`~sns.nets.base.PairDenoiser` with ``n_levels == S``.
        x_prev, x_next: clean states ``(B, ...)`` (the denoiser's ``state_shape``).
        lambda_ce: weight of the level-classification terms (paper: 0.1).
        generator: for the levels and the noise (reproducible tests).
    """
    S = schedule.n_levels
    if denoiser.n_levels != S:
        raise ValueError(f"denoiser has n_levels={denoiser.n_levels} but the schedule has S={S}")
    denoiser.check_pair(x_prev, x_next)
    B = x_prev.shape[0]
    s2 = _randint(S, B, generator).to(x_prev.device)
    s1 = _randint(S, B, generator).to(x_prev.device)
    x_prev_s2, x_next_s1, e2, e1 = noise_pair(schedule, x_prev, x_next, s2, s1, generator=generator)
    out = denoiser(x_prev_s2, x_next_s1, s2=s2, s1=s1)
    mse = 0.5 * (F.mse_loss(out.eps_prev, e2) + F.mse_loss(out.eps_next, e1))
    ce_s2 = F.cross_entropy(out.logits_s2, s2)
    ce_s1 = F.cross_entropy(out.logits_s1, s1)
    loss = mse + lambda_ce * (ce_s2 + ce_s1)
    return loss, {"mse": mse.detach(), "ce_s2": ce_s2.detach(), "ce_s1": ce_s1.detach()}


def _randint(S: int, B: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, S, (B,), generator=generator, device=device)
