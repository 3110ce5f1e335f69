"""Thermalizer (Pedersen, Zanna & Bruna 2025) as a stepper.

An *unconditional*, blind diffusion model of the invariant measure with a level classifier
corrects a surrogate's rollout on the fly.  After each surrogate step:

1. the classifier estimates the noise level ``i`` of the proposal ``x_hat`` (one call);
2. if ``i > limit``: the run is stopped (:class:`sns.rollout.StopRollout`, status
   ``aborted``) -- the state is too far off the attractor to be thermalized;
3. if ``i > start``: ``x_hat`` is forward-noised to level ``i`` with fresh noise and
   denoised down to level ``stop`` (``i - stop`` calls); otherwise it is kept untouched.

In the SNS phase space this is a *vertical* path at ``s2 = S``
(:func:`sns.diffusion.paths.thermalizer_path`): the conditioning ``x_{t-1}`` sits at the top
level, i.e. it is pure noise and carries no information, so the pair denoiser is an
unconditional model of ``x_t``.  The network is a blind pair denoiser trained by
:func:`sns.diffusion.pair_dsm_loss` with ``levels="unconditional"`` (``s2 = S - 1`` fixed;
its ``s1`` head is the classifier, CE weight 1 in the paper), and the traversal is the same
:func:`~sns.diffusion.paths.traverse` as SNS's.

Levels: ``start``, ``stop`` and ``limit`` are 0-based table levels (the classifier's classes,
as in the reference code).  The reference forward-noises with ``abar[i]`` and then takes
reverse steps with the coefficients of levels ``i-1 .. stop+1``; here (consistent indexing,
:mod:`sns.diffusion.paths`) the reverse steps are at levels ``i .. stop+1``, leaving the state
at level ``stop``: path coordinates from ``s1 = i + 1`` to ``stop + 1``, ``i - stop`` calls.
Paper settings: start/stop 6/4 (Kolmogorov), 10/4 (QG), limit 100 (with S = 1000).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sns.diffusion.noising import noise_state, randn_like
from sns.diffusion.paths import thermalizer_path, traverse
from sns.diffusion.schedules import Schedule
from sns.nets.base import PairDenoiser
from sns.rollout import StopRollout

__all__ = ["Thermalizer", "from_settings"]


class Thermalizer(nn.Module):
    """Thermalized surrogate stepper (module docstring).

    Args:
        denoiser: a pair denoiser trained unconditionally (``levels="unconditional"``).
        schedule: its schedule (``S == denoiser.n_levels``).
        surrogate: ``nn.Module`` or callable ``(B, *state) -> (B, *state)``.
        start: thermalize a state whose estimated level exceeds ``start``.
        stop: level at which denoising stops (``0 <= stop <= start``).
        limit: stop the rollout when an estimated level exceeds ``limit`` (None: never).
        sigma: std of noise added to each proposal (stochastic emulator; >= 0).
        clamp: clamp ``x0_hat`` in every reverse step (None: off).

    After each call: ``last_levels`` (``(B,)`` estimated levels), ``last_refined`` (``(B,)``
    bool) and ``last_calls`` (``(B,)``: 1 classifier call + ``level - stop`` where refined).
    """

    def __init__(
        self,
        denoiser: PairDenoiser,
        schedule: Schedule,
        surrogate: nn.Module | Callable[[Tensor], Tensor],
        start: int = 6,
        stop: int = 4,
        limit: int | None = 100,
        sigma: float = 0.0,
        clamp: float | None = None,
    ) -> None:
        super().__init__()
        S = schedule.n_levels
        if denoiser.n_levels != S:
            raise ValueError(f"denoiser has n_levels={denoiser.n_levels} but the schedule has S={S}")
        if not callable(surrogate):
            raise TypeError(f"surrogate must be an nn.Module or a callable, got {type(surrogate).__name__}")
        for name, v in (("start", start), ("stop", stop)):
            if not isinstance(v, int) or not 0 <= v < S:
                raise ValueError(f"thermalizer {name} must be an integer level in [0, {S}), got {v!r}")
        if stop > start:
            raise ValueError(f"thermalizer stop ({stop}) must not exceed start ({start})")
        if limit is not None and (not isinstance(limit, int) or limit < start):
            raise ValueError(f"thermalizer limit must be an integer >= start ({start}) or None, got {limit!r}")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be positive or None, got {clamp!r}")
        self.denoiser = denoiser
        self.schedule = schedule
        self.surrogate = surrogate
        self.start, self.stop, self.limit = start, stop, limit
        self.sigma = float(sigma)
        self.clamp = clamp
        self.last_levels: Tensor | None = None
        self.last_refined: Tensor | None = None
        self.last_calls: Tensor | None = None

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One thermalized step ``(B, *state) -> (B, *state)``; raises
        :class:`~sns.rollout.StopRollout` when a level exceeds ``limit``."""
        S = self.schedule.n_levels
        x_hat = self.surrogate(x)
        if not isinstance(x_hat, Tensor) or x_hat.shape != x.shape:
            got = tuple(x_hat.shape) if isinstance(x_hat, Tensor) else type(x_hat).__name__
            raise ValueError(f"the surrogate must return a tensor of the state's shape {tuple(x.shape)}, got {got}")
        if self.sigma > 0:
            x_hat = x_hat + self.sigma * randn_like(x_hat, generator)
        self.denoiser.check_pair(x, x_hat)
        B = x.shape[0]
        top = torch.full((B,), S - 1, dtype=torch.long, device=x.device)
        x_prev, _ = noise_state(self.schedule, x, top, generator=generator)  # s2 = S: uninformative
        _, logits_i1 = self.denoiser.estimate_levels(x_prev, x_hat)
        level = logits_i1.argmax(-1)
        calls = torch.ones(B, dtype=torch.long, device=x.device)
        self.last_levels = level
        if self.limit is not None and bool((level > self.limit).any()):
            bad = (level > self.limit).nonzero().squeeze(1).tolist()
            raise StopRollout(
                f"Thermalizer: estimated noise level {int(level.max())} exceeds the limit {self.limit} "
                f"in trajectories {bad} (the state left the attractor)", bad)
        refine = level > self.start
        out = x_hat.clone()
        idx = refine.nonzero().squeeze(1)
        if idx.numel():
            xn, _ = noise_state(self.schedule, x_hat[idx], level[idx], generator=generator)
            path = thermalizer_path(level[idx].cpu() + 1, self.stop + 1, S)
            result = traverse(self.denoiser, self.schedule, x_prev[idx], xn, path, self.clamp, generator)
            out[idx] = result.x_next
            calls[idx] += result.calls.to(calls.device)
        self.last_refined, self.last_calls = refine, calls
        return out


#: Options of ``sns-rollout thermalizer.*`` (table levels; paper 6/4 Kolmogorov, 10/4 QG, S = 1000).
DEFAULTS = {"start": 6, "stop": 4, "limit": 100, "sigma": 0.0, "clamp": None}


def from_settings(model, extra, surrogate, settings, context) -> tuple[Thermalizer, dict]:
    """Registry builder (:mod:`sns.methods`): :data:`DEFAULTS` where ``settings`` is silent."""
    from sns.export import load_schedule

    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown thermalizer option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    t = {**DEFAULTS, **settings}
    step = Thermalizer(model, load_schedule(extra), surrogate, start=int(t["start"]), stop=int(t["stop"]),
                       limit=None if t["limit"] is None else int(t["limit"]), sigma=float(t["sigma"]),
                       clamp=t["clamp"])
    return step, t
