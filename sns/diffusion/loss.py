"""Multi-noise-level denoising score matching for pair denoisers (SNS, DESIGN.md section 1).

For a clean pair ``(x_{t-1}, x_t)``, draw ``i1, i2 ~ Uniform{0..S-1}`` independently per
sample, noise each state with its own noise (:func:`sns.diffusion.noising.noise_pair`) and
minimise::

    L = MSE(eps_hat, (e2, e1)) + lambda_ce * (CE(logits_i2, i2) + CE(logits_i1, i1))

The MSE is the mean over both states and all entries; CE is the mean cross-entropy of
the S-way level heads.  Blind denoisers ignore the levels passed to them; explicit
denoisers embed them.

The same loss trains the baselines that are lines in the SNS phase space (``levels``):

* ``"independent"`` (SNS): ``i1, i2`` independent and uniform -- the whole plane;
* ``"diagonal"`` (ACDM): ``i2 = i1`` uniform, both states at the same level with their own
  noise -- the diagonal (use an explicit denoiser and ``lambda_ce = 0``);
* ``"unconditional"`` (Thermalizer): ``i2 = S - 1`` fixed, so ``x_{t-1}`` is (almost) pure
  noise and carries no information: the network learns the invariant measure of ``x_t``
  and its ``i1`` head is the Thermalizer's level classifier (paper: CE weight 1).  Only
  ``eps_next`` and ``CE(i1)`` enter the loss (the ``x_{t-1}`` parts are uninformative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sns.diffusion.noising import noise_pair
from sns.diffusion.schedules import Schedule
from sns.nets.base import PairDenoiser

__all__ = ["LEVEL_SAMPLING", "pair_dsm_loss"]

LEVEL_SAMPLING = ("independent", "diagonal", "unconditional")


def pair_dsm_loss(
    denoiser: PairDenoiser,
    schedule: Schedule,
    x_prev: Tensor,
    x_next: Tensor,
    lambda_ce: float = 0.1,
    generator: torch.Generator | None = None,
    levels: str = "independent",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Return ``(loss, parts)`` with ``parts = {"mse", "ce_i2", "ce_i1"}`` (detached).

    Args:
        denoiser: any :class:`~sns.nets.base.PairDenoiser` with ``n_levels == S``.
        x_prev, x_next: clean states ``(B, ...)`` (the denoiser's ``state_shape``).
        lambda_ce: weight of the level-classification terms (paper: 0.1).
        generator: for the levels and the noise (reproducible tests).
        levels: ``"independent"`` (SNS), ``"diagonal"`` (ACDM) or ``"unconditional"``
            (Thermalizer); see the module docstring.
    """
    S = schedule.n_levels
    if denoiser.n_levels != S:
        raise ValueError(f"denoiser has n_levels={denoiser.n_levels} but the schedule has S={S}")
    denoiser.check_pair(x_prev, x_next)
    if levels not in LEVEL_SAMPLING:
        raise ValueError(f"unknown level sampling {levels!r}; valid choices: {LEVEL_SAMPLING}")
    B = x_prev.shape[0]
    i1 = _randint(S, B, generator).to(x_prev.device)
    if levels == "independent":
        i2 = _randint(S, B, generator).to(x_prev.device)
    elif levels == "diagonal":
        i2 = i1.clone()
    else:
        i2 = torch.full_like(i1, S - 1)
    x_prev_i2, x_next_i1, e2, e1 = noise_pair(schedule, x_prev, x_next, i2, i1, generator=generator)
    out = denoiser(x_prev_i2, x_next_i1, i2, i1)  # positional: denoisers written with the old names work
    ce_i1 = F.cross_entropy(out.logits_i1, i1)
    if levels == "unconditional":
        mse = F.mse_loss(out.eps_next, e1)
        ce_i2 = torch.zeros_like(ce_i1)
        loss = mse + lambda_ce * ce_i1
    else:
        mse = 0.5 * (F.mse_loss(out.eps_prev, e2) + F.mse_loss(out.eps_next, e1))
        ce_i2 = F.cross_entropy(out.logits_i2, i2)
        loss = mse + lambda_ce * (ce_i2 + ce_i1)
    return loss, {"mse": mse.detach(), "ce_i2": ce_i2.detach(), "ce_i1": ce_i1.detach()}


def _randint(S: int, B: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, S, (B,), generator=generator, device=device)
