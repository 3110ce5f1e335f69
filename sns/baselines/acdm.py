"""ACDM: autoregressive conditional diffusion (Kohl, Chen & Thuerey 2023) as a stepper.

ACDM is the *diagonal* of the SNS reverse-process phase space: the previous state
``x_{t-1}`` (the conditioning) and the next state ``x_t`` sit at the same level ``s1 = s2``
from the top coordinate ``S`` down to 0 (:func:`sns.diffusion.paths.acdm_path`).  At every
rollout step ``x_t`` starts from pure noise and all ``S`` reverse steps are taken; at every
level the conditioning is *re-noised* from the clean ``x_{t-1}`` with fresh noise (not
denoised by the network): :func:`sns.diffusion.paths.traverse` with ``condition=``.  So the
cost is exactly ``S`` network calls per step, whatever the state.

The network is an *explicit* pair denoiser (levels given through embeddings) trained with
:func:`sns.diffusion.pair_dsm_loss` and ``levels="diagonal"`` (both states at the same level
with their own noise, MSE on both noise predictions, no level heads: ``lambda_ce = 0``),
usually with a linear schedule (reference: S = 200 Kolmogorov, 100 QG).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sns.diffusion.noising import noise_state, randn_like
from sns.diffusion.paths import acdm_path, traverse
from sns.diffusion.schedules import Schedule
from sns.nets.base import PairDenoiser

__all__ = ["ACDM", "from_settings"]


class ACDM(nn.Module):
    """ACDM stepper ``x_{t-1} -> x_t``: ``S`` reverse steps along the diagonal per rollout step.

    Args:
        denoiser: an explicit pair denoiser (``blind == False``) trained on the diagonal.
        schedule: its schedule (``S == denoiser.n_levels``).
        clamp: clamp ``x0_hat`` to ``[-clamp, clamp]`` in every reverse step (None: off).

    Attribute ``last_calls`` (``S`` after each call) is read by :func:`sns.rollout.rollout`.
    """

    def __init__(self, denoiser: PairDenoiser, schedule: Schedule, clamp: float | None = None) -> None:
        super().__init__()
        S = schedule.n_levels
        if denoiser.n_levels != S:
            raise ValueError(f"denoiser has n_levels={denoiser.n_levels} but the schedule has S={S}")
        if getattr(denoiser, "blind", False):
            raise ValueError("ACDM needs an explicit denoiser (the levels are given to the network); "
                             "got a blind one: train an explicit_pair_unet / mlp_pair with blind=false")
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be positive or None, got {clamp!r}")
        self.denoiser = denoiser
        self.schedule = schedule
        self.clamp = clamp
        self._path = acdm_path(S)  # one shared diagonal path (S, S) -> (0, 0)
        self.last_calls: int | None = None

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One ACDM step ``(B, *state) -> (B, *state)``."""
        S = self.schedule.n_levels
        self.denoiser.check_pair(x, x)
        top = torch.full((x.shape[0],), S - 1, dtype=torch.long, device=x.device)
        x_prev, _ = noise_state(self.schedule, x, top, generator=generator)  # conditioning at s2 = S
        x_next = randn_like(x, generator)  # x_t at s1 = S: pure noise
        result = traverse(self.denoiser, self.schedule, x_prev, x_next, self._path, self.clamp,
                          generator, condition=x)
        self.last_calls = int(self._path.n_calls[0])
        return result.x_next


def from_settings(model, extra, surrogate, settings, context) -> tuple[ACDM, dict]:
    """Registry builder (:mod:`sns.methods`, ``sns-rollout acdm.*``): ``clamp`` (default off)."""
    from sns.export import load_schedule

    recorded = {"clamp": settings.get("clamp")}
    return ACDM(model, load_schedule(extra), clamp=recorded["clamp"]), recorded
