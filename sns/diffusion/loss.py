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

**Training emphasis** (``level_weights``, issue 14): the levels can be drawn from any
distribution ``p`` over ``0..S-1`` instead of the uniform one, e.g. :func:`emphasis_weights`
to train harder on the band of levels the refiner starts from.  That reweights the MSE towards
those levels (the point), but it would also teach the level heads the prior ``p``: a
classifier trained by CE on labels drawn from ``p`` learns ``log p(i | x) = log p(x | i) +
log p(i) + c``.  The heads are therefore trained with *logit adjustment* (Menon et al. 2021,
"Long-tail learning via logit adjustment"): the CE is taken of ``logits + log p``, so the raw
logits the network outputs estimate the posterior under a *uniform* prior, as with uniform
sampling, and the refiner reads them unchanged.  With ``p`` uniform the adjustment is a
constant and the loss is exactly the uniform one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sns.diffusion.noising import noise_pair
from sns.diffusion.schedules import Schedule
from sns.nets.base import PairDenoiser

__all__ = ["LEVEL_SAMPLING", "emphasis_weights", "pair_dsm_loss"]

LEVEL_SAMPLING = ("independent", "diagonal", "unconditional")


def pair_dsm_loss(
    denoiser: PairDenoiser,
    schedule: Schedule,
    x_prev: Tensor,
    x_next: Tensor,
    lambda_ce: float = 0.1,
    generator: torch.Generator | None = None,
    levels: str = "independent",
    level_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Return ``(loss, parts)`` with ``parts = {"mse", "ce_i2", "ce_i1"}`` (detached).

    Args:
        denoiser: any :class:`~sns.nets.base.PairDenoiser` with ``n_levels == S``.
        x_prev, x_next: clean states ``(B, ...)`` (the denoiser's ``state_shape``).
        lambda_ce: weight of the level-classification terms (paper: 0.1).
        generator: for the levels and the noise (reproducible tests).
        levels: ``"independent"`` (SNS), ``"diagonal"`` (ACDM) or ``"unconditional"``
            (Thermalizer); see the module docstring.
        level_weights: ``(S,)`` non-negative weights of the levels' sampling distribution
            (normalised here; ``None``: uniform), used for every level the sampling draws;
            the heads' CE is logit-adjusted by ``log p`` (module docstring).
    """
    S = schedule.n_levels
    if denoiser.n_levels != S:
        raise ValueError(f"denoiser has n_levels={denoiser.n_levels} but the schedule has S={S}")
    denoiser.check_pair(x_prev, x_next)
    if levels not in LEVEL_SAMPLING:
        raise ValueError(f"unknown level sampling {levels!r}; valid choices: {LEVEL_SAMPLING}")
    B = x_prev.shape[0]
    log_p = None if level_weights is None else _log_probs(level_weights, S).to(x_prev.device)
    i1 = _draw(S, B, generator, log_p).to(x_prev.device)
    if levels == "independent":
        i2 = _draw(S, B, generator, log_p).to(x_prev.device)
    elif levels == "diagonal":
        i2 = i1.clone()
    else:
        i2 = torch.full_like(i1, S - 1)
    x_prev_i2, x_next_i1, e2, e1 = noise_pair(schedule, x_prev, x_next, i2, i1, generator=generator)
    out = denoiser(x_prev_i2, x_next_i1, i2, i1)  # positional: denoisers written with the old names work
    ce_i1 = F.cross_entropy(_adjust(out.logits_i1, log_p), i1)
    if levels == "unconditional":
        mse = F.mse_loss(out.eps_next, e1)
        ce_i2 = torch.zeros_like(ce_i1)
        loss = mse + lambda_ce * ce_i1
    else:
        mse = 0.5 * (F.mse_loss(out.eps_prev, e2) + F.mse_loss(out.eps_next, e1))
        ce_i2 = F.cross_entropy(_adjust(out.logits_i2, log_p), i2)
        loss = mse + lambda_ce * (ce_i2 + ce_i1)
    return loss, {"mse": mse.detach(), "ce_i2": ce_i2.detach(), "ce_i1": ce_i1.detach()}


def emphasis_weights(n_levels: int, low: int, high: int, factor: float) -> Tensor:
    """Sampling weights ``(S,)`` that draw the levels ``low..high`` (inclusive) ``factor`` times as
    often as each other level (normalised to a distribution).

    For :func:`pair_dsm_loss`'s ``level_weights``: ``factor = 1`` is uniform sampling.
    """
    if not (0 <= low <= high < n_levels):
        raise ValueError(f"emphasis band must satisfy 0 <= low <= high < S = {n_levels}, got low={low}, high={high}")
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"emphasis factor must be a positive finite number, got {factor!r}")
    w = torch.ones(n_levels, dtype=torch.float64)
    w[low:high + 1] = float(factor)
    return w / w.sum()


def _log_probs(weights: Tensor, S: int) -> Tensor:
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != S:
        raise ValueError(f"level_weights must have S = {S} entries, got {w.numel()}")
    if not torch.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError("level_weights must be finite, non-negative and not all zero")
    return (w / w.sum()).log().float()


def _draw(S: int, B: int, generator: torch.Generator | None, log_p: Tensor | None) -> Tensor:
    device = generator.device if generator is not None else "cpu"
    if log_p is None:
        return torch.randint(0, S, (B,), generator=generator, device=device)
    return torch.multinomial(log_p.exp().to(device), B, replacement=True, generator=generator)


def _adjust(logits: Tensor, log_p: Tensor | None) -> Tensor:
    """Logit adjustment: CE of ``logits + log p`` trains the raw logits for a uniform prior."""
    # a level of probability 0 is never drawn as a label; -inf would only make its logit irrelevant
    return logits if log_p is None else logits + log_p.clamp_min(-1e4).to(logits.dtype)
