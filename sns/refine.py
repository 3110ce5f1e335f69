"""The SNS refiner: estimate levels, re-noise, traverse a path, compose with any surrogate.

The self-refining step (Liu, Zanna & Bruna, arXiv:2603.17750, Algorithm 1; DESIGN.md
section 1), for a batch of states ``x_{n-1}``:

1. proposal ``x_hat = F(x_{n-1}) (+ sigma * z)`` from any surrogate ``F``;
2. one encoder pass on the raw pair ``(x_{n-1}, x_hat)`` gives the table levels
   ``(i2, i1) = argmax`` of the two heads (or levels forced by ``fixed_levels``);
3. re-noise ``x_{n-1}`` to level ``i2`` and ``x_hat`` to level ``i1`` with fresh noise;
4. traverse the path (A by default) from phase-space coordinates ``(s1, s2) = (i1+1, i2+1)``
   to ``s1 = 0`` with DDPM ancestral steps (:func:`sns.diffusion.paths.traverse`);
5. ``x_n`` = the refined ``x_t``.

Cost per step and sample: ``1 + s1 + s2 = i1 + i2 + 3`` denoiser calls on path A (one fewer
estimation call with fixed levels), at most ``1 + 2 n_moves`` with strided legs; samples whose
levels are both ``<= skip_threshold`` keep the proposal and cost 1 ("leave it": with a schedule
resolved below the surrogate's error, e.g. ``log_sigma_schedule``, ``skip_threshold=0`` leaves
alone every step the heads read as clean).  Without a surrogate the refiner generates: ``x_t`` starts
from pure noise at ``s1 = S`` and follows the path conditioned on ``x_{n-1}``.

A :class:`SNSRefiner` is itself a stepper (``state -> state``), so it composes with any
surrogate and with the generic rollout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sns.diffusion.noising import noise_state, randn_like
from sns.diffusion.paths import PATHS, Path, level_to_coord, make_path, traverse
from sns.diffusion.sampling import ModeVariance
from sns.diffusion.schedules import Schedule
from sns.nets.base import PairDenoiser

__all__ = ["NearestStateGuard", "SNSRefiner", "calibrate_proposal_sigma", "calibrate_skip_threshold", "calibrate_x0_variance",
           "clean_conditioning_from_settings", "estimate_levels", "from_settings", "head_accuracy",
           "noise_detectability"]

PathFn = Callable[[Tensor, Tensor, int], Path]  #: (s1, s2, S) start coordinates -> Path


@torch.no_grad()
def estimate_levels(denoiser: PairDenoiser, x_prev: Tensor, x_next: Tensor) -> tuple[Tensor, Tensor]:
    """``(i2_hat, i1_hat)``: argmax of the level heads on the raw pair, table levels ``(B,)`` in ``[0, S)``.

    One network call (the encoder and the heads only).  The order follows the states
    ``(x_{t-1}, x_t)``, as in :meth:`~sns.nets.base.PairDenoiser.estimate_levels`.
    """
    logits_i2, logits_i1 = denoiser.estimate_levels(x_prev, x_next)
    return logits_i2.argmax(-1), logits_i1.argmax(-1)


@torch.no_grad()
def calibrate_skip_threshold(denoiser: PairDenoiser, x_prev: Tensor, x_next: Tensor, quantile: float = 0.9,
                             batch: int = 8192) -> tuple[int, int]:
    """The levels the heads read on *clean* pairs of real data: ``(k2, k1)``, the ``quantile`` of
    ``(i2_hat, i1_hat)`` over the given pairs (normalised units, e.g. the valid split).

    A trained head cannot read levels below its own resolution: on clean data it returns the
    lowest level it can tell from clean (~ the denoiser's own one-step error), not 0.  A
    proposal read at or below that is as clean as the data looks to this denoiser, so
    ``SNSRefiner(skip_threshold=(k2, k1))`` leaves it alone ("leave it").  This is a property of
    the trained denoiser measured on held-out data, not a tuned hyper-parameter; compute it on
    a split that is not used for evaluation.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    if x_prev.shape != x_next.shape or x_prev.shape[0] < 1:
        raise ValueError(f"need non-empty pairs of equal shape, got {tuple(x_prev.shape)} and {tuple(x_next.shape)}")
    reads = [estimate_levels(denoiser, x_prev[k:k + batch], x_next[k:k + batch]) for k in range(0, len(x_prev), batch)]
    i2 = torch.cat([r[0] for r in reads]).double()
    i1 = torch.cat([r[1] for r in reads]).double()
    return int(i2.quantile(quantile).floor()), int(i1.quantile(quantile).floor())


@torch.no_grad()
def head_accuracy(denoiser: PairDenoiser, schedule: Schedule, x_prev: Tensor, x_next: Tensor,
                  levels: Tensor | list[int] | None = None, seed: int = 0, batch: int = 4096) -> dict[str, Tensor]:
    """How well the level heads read *known* levels, as in training: for each ``i`` of ``levels``
    (default: every tenth level and the top), ``x_{t-1}`` noised to table level ``i`` and ``x_t``
    to a uniformly random level, read by :func:`estimate_levels` (the ``i2`` head's error at
    ``i``), and the other way round (the ``i1`` head's).  Returns ``{"levels", "i2", "i1"}``: the
    levels ``(L,)`` and each head's mean absolute error in levels ``(L,)`` (0: exact; a head
    that always answers the middle level is off by ~S/4 on average).

    The heads must read the levels they meet well for estimated levels to work: a head that reads
    every input near one level has learned nothing (``benchmarks/RESULTS.md``, issue 14).  Use
    held-out pairs (e.g. the valid split), normalised like the training data.
    """
    S = schedule.n_levels
    lv = _report_levels(levels, S)
    if x_prev.shape != x_next.shape or x_prev.shape[0] < 1:
        raise ValueError(f"need non-empty pairs of equal shape, got {tuple(x_prev.shape)} and {tuple(x_next.shape)}")
    g = torch.Generator(device=x_prev.device).manual_seed(seed)
    err2, err1 = [], []
    for i in lv.tolist():
        e2 = e1 = 0.0
        for k in range(0, len(x_prev), batch):
            xp, xn = x_prev[k:k + batch], x_next[k:k + batch]
            lvl = torch.full((len(xp),), i, dtype=torch.long, device=xp.device)
            rnd = torch.randint(S, (len(xp),), generator=g, device=xp.device)
            i2, _ = estimate_levels(denoiser, noise_state(schedule, xp, lvl, generator=g)[0],
                                    noise_state(schedule, xn, rnd, generator=g)[0])
            _, i1 = estimate_levels(denoiser, noise_state(schedule, xp, rnd, generator=g)[0],
                                    noise_state(schedule, xn, lvl, generator=g)[0])
            e2 += float((i2 - i).abs().sum())
            e1 += float((i1 - i).abs().sum())
        err2.append(e2 / len(x_prev))
        err1.append(e1 / len(x_prev))
    return {"levels": lv, "i2": torch.tensor(err2), "i1": torch.tensor(err1)}


def _report_levels(levels: Tensor | list[int] | None, S: int) -> Tensor:
    """The table levels a diagnostic reports, ``(L,)``: ``levels``, or every tenth level and the top."""
    lv = torch.as_tensor(levels if levels is not None else sorted({*range(0, S, 10), S - 1}), dtype=torch.long)
    if lv.ndim != 1 or lv.numel() == 0 or bool(((lv < 0) | (lv >= S)).any()):
        raise ValueError(f"levels must be table levels in [0, {S}), got {lv.tolist()}")
    return lv


@torch.no_grad()
def noise_detectability(states: Tensor, schedule: Schedule, levels: Tensor | list[int] | None = None) -> dict[str, Tensor]:
    """How visible white noise of each table level is in *one* clean field state: the floor under
    any level head that reads a state's noise (``benchmarks/RESULTS.md``, issue 14).

    A head can only tell noise of std ``sigma`` from a clean state if the variance the noise adds
    to some band of wavenumbers stands out against the band variance clean states carry, which
    varies from state to state.  For each level ``i`` (default: every tenth level and the top), with
    ``sigma_i = sqrt((1 - abar_i) / abar_i)`` the noise-to-signal ratio of the level: the band
    variance the noise adds over the clean states' standard deviation of it, for the best of the
    bands ``|k| >= N/4``, ``|k| >= 3N/8`` and the corners ``|k| > N/2`` (~1 or more: visible in a
    single state; << 1: invisible, whatever the head's training).  For white-noise states of unit
    variance it is ``sigma^2 sqrt(m / 2)`` for a band of ``m`` modes.

    Args:
        states: clean states ``(M, ..., H, W)`` with ``H == W`` (normalised like the training data,
            e.g. the valid split; channels are pooled), ``M >= 2``.
        schedule: the denoiser's schedule.
        levels: table levels to report.

    Returns ``{"levels", "sigma", "ratio"}``, each ``(L,)``.
    """
    if states.ndim < 3 or states.shape[-1] != states.shape[-2] or states.shape[0] < 2:
        raise ValueError("noise_detectability needs at least 2 square field states (M, ..., N, N), "
                         f"got shape {tuple(states.shape)}")
    S = schedule.n_levels
    lv = _report_levels(levels, S)
    n = states.shape[-1]
    x = states.detach().to("cpu", torch.float64).reshape(states.shape[0], -1, n, n)
    power = (torch.fft.fft2(x).abs() / n) ** 2  # Parseval: mean(x^2) = sum(power) / n^2 per channel
    k = torch.fft.fftfreq(n, 1 / n, dtype=torch.float64)
    kk = torch.hypot(k[:, None], k[None, :])
    abar = schedule.abar.detach().to("cpu", torch.float64)[lv]
    sigma = ((1 - abar) / abar).sqrt()
    ratio = torch.zeros(len(lv), dtype=torch.float64)
    for band in (kk >= n / 4, kk >= 3 * n / 8, kk > n / 2):
        spread = (power[..., band].sum(-1) / n**2).std(0).mean()  # state-to-state, pooled over channels
        ratio = torch.maximum(ratio, sigma**2 * band.double().mean() / spread)
    return {"levels": lv, "sigma": sigma, "ratio": ratio}


@torch.no_grad()
def calibrate_proposal_sigma(surrogate: nn.Module | Callable[[Tensor], Tensor], x_prev: Tensor, x_next: Tensor,
                             factor: float = 2**0.5, batch: int = 8192) -> float:
    """Proposal noise sized to the surrogate's error: ``factor`` x its one-step RMSE on the given
    pairs (normalised units, e.g. the valid split; the surrogate must map normalised states).

    Why ``sqrt(2)``: if the truth is ``x_t = F(x_{t-1}) + r`` with an error ``r`` of variance ``d^2``
    (a deterministic surrogate's error, or the spread of an uncertain next state around the
    conditional mean that ``F`` predicts), the proposal ``F(x_{t-1}) + sigma_p z`` with
    ``sigma_p^2 = 2 d^2`` has the law of ``x_t + sigma e`` at ``sigma = d`` (Gaussian case): a
    sample of the truth noised at the level of the surrogate's error, which is what the level
    heads were trained to read and the reverse process to undo.  Without it, a surrogate that
    predicts the conditional mean offers the most *central* point, which a noise-level head reads
    as clean, so estimated levels never engage (benchmarks/RESULTS.md, issue 14).
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    if x_prev.shape != x_next.shape or x_prev.shape[0] < 1:
        raise ValueError(f"need non-empty pairs of equal shape, got {tuple(x_prev.shape)} and {tuple(x_next.shape)}")
    sq = sum(float(((surrogate(x_prev[k:k + batch]) - x_next[k:k + batch]).double() ** 2).sum())
             for k in range(0, len(x_prev), batch))
    return factor * (sq / x_next.numel()) ** 0.5


@torch.no_grad()
def calibrate_x0_variance(surrogate: nn.Module | Callable[[Tensor], Tensor], x_prev: Tensor, x_next: Tensor,
                          spatial_dims: int = 0, batch: int = 8192) -> ModeVariance:
    """The law of ``x_t`` given ``x_{t-1}`` per mode, for :class:`SNSRefiner`'s ``x0_var``: the
    per-mode second moment of the surrogate's residuals ``x_t - F(x_{t-1})`` on the given pairs
    (normalised units, e.g. the valid split; :meth:`ModeVariance.from_samples`).

    It is the conditional variance if ``F`` is the conditional mean, and an upper bound otherwise
    (the surrogate's own error counts as spread).  ``spatial_dims = 2`` for fields ``(B, C, H, W)``
    (per Fourier mode), 0 for vector states (per coordinate).
    """
    if x_prev.shape != x_next.shape or x_prev.shape[0] < 2:
        raise ValueError(f"need at least 2 pairs of equal shape, got {tuple(x_prev.shape)} and {tuple(x_next.shape)}")
    res = torch.cat([x_next[k:k + batch] - surrogate(x_prev[k:k + batch]) for k in range(0, len(x_prev), batch)])
    return ModeVariance.from_samples(res, spatial_dims)


class NearestStateGuard:
    """A floor on the refinement levels from how far ``x_{t-1}`` lies from the data.

    The level heads read a *pair*; a surrogate that slowly collapses (each step locally
    consistent) produces pairs they read as clean even when the state is far from every data
    state (measured on Lorenz-63: states collapsed onto a fixed point, 0.44 normalised units
    from the nearest valid state, read i2 = 0, like clean data; benchmarks/RESULTS.md, issue
    14).  This guard measures that distance directly, with a KD-tree over reference states (the
    train split, normalised units), and returns for each sample

    * 0 where the distance is within ``threshold`` (the ``quantile`` of held-out data's own
      nearest-reference distances: data looks like this);
    * otherwise the level whose *noised held-out data* lies that far from the reference: the
      table ``distances[i]`` is the median nearest-reference distance of held-out states noised
      to level ``i`` (measured, so it accounts for the manifold's dimension and the sampling
      floor), and the level is the highest ``i`` with ``distances[i] <= d``.

    :class:`SNSRefiner` (``state_guard=``) raises both estimated levels to at least this floor, so
    a drifting state is re-noised at the level of its distance and pulled back by the reverse
    process.  Nearest neighbours mean something for low-dimensional states (Lorenz systems); for
    fields the distance is dominated by the sampling floor and the guard is not meant for them.

    Build it with :meth:`calibrate`; calling it maps ``(B, *state)`` normalised states to levels
    ``(B,)`` (long, on the states' device).
    """

    def __init__(self, reference: Tensor, distances: Tensor, threshold: float) -> None:
        from scipy.spatial import cKDTree

        ref = torch.as_tensor(reference).detach().reshape(len(reference), -1).double().cpu().numpy()
        if ref.shape[0] < 1:
            raise ValueError("the guard needs at least one reference state")
        d = torch.as_tensor(distances, dtype=torch.float64).flatten()
        if d.numel() < 1 or not bool(torch.isfinite(d).all()):
            raise ValueError("distances must be a non-empty finite table (one entry per level)")
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}")
        self.tree = cKDTree(ref)
        self.dim = ref.shape[1]
        self.distances = torch.cummax(d, 0).values  # monotone in the level
        self.threshold = float(threshold)

    @classmethod
    @torch.no_grad()
    def calibrate(cls, schedule: Schedule, reference: Tensor, held_out: Tensor, quantile: float = 0.999,
                  n_probe: int = 2000, seed: int = 0) -> NearestStateGuard:
        """The guard for ``schedule`` from ``reference`` states (e.g. the train split) and
        ``held_out`` states (e.g. the valid split; never the evaluation split), normalised units:
        ``threshold`` = the ``quantile`` of the held-out states' nearest-reference distances,
        ``distances[i]`` = the median of those distances after noising ``n_probe`` held-out states
        to level ``i`` (:func:`sns.diffusion.noising.noise_state`)."""
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
        reference, held_out = torch.as_tensor(reference), torch.as_tensor(held_out)
        if held_out.shape[0] < 1 or held_out.shape[1:] != reference.shape[1:]:
            raise ValueError(f"held_out states {tuple(held_out.shape)} do not match the reference "
                             f"{tuple(reference.shape)}")
        guard = cls(reference, torch.zeros(1), 0.0)
        g = torch.Generator().manual_seed(seed)
        threshold = float(torch.quantile(guard.distance(held_out), quantile))
        probe = held_out[torch.randperm(len(held_out), generator=g)[:n_probe]].float()
        table = []
        for i in range(schedule.n_levels):
            noisy, _ = noise_state(schedule, probe, torch.full((len(probe),), i, dtype=torch.long), generator=g)
            table.append(float(guard.distance(noisy).median()))
        return cls(reference, torch.tensor(table), threshold)

    def distance(self, x: Tensor) -> Tensor:
        """Euclidean distance of each state ``(B, *state)`` to its nearest reference state, ``(B,)``."""
        flat = x.detach().reshape(len(x), -1).double().cpu().numpy()
        if flat.shape[1] != self.dim:
            raise ValueError(f"states of {flat.shape[1]} values, but the reference has {self.dim}")
        return torch.from_numpy(self.tree.query(flat)[0])

    def __call__(self, x: Tensor) -> Tensor:
        d = self.distance(x)
        level = (torch.searchsorted(self.distances, d, right=True) - 1).clamp(min=0)
        return torch.where(d > self.threshold, level, torch.zeros_like(level)).to(x.device)


class SNSRefiner(nn.Module):
    """A refined stepper ``x_{n-1} -> x_n`` wrapping any surrogate with a pair denoiser.

    Args:
        denoiser: the trained pair denoiser ``D_theta`` (in normalised units, see ``shift``).
        schedule: the schedule it was trained with (``S == denoiser.n_levels``).
        surrogate: any ``nn.Module`` or callable mapping ``x_{t-1} -> x_t`` (batched, same
            shape); ``None`` generates ``x_t`` from pure noise (standalone SNS).
        path: ``"A"`` (default), ``"B"``, ``"C"``, ``"fix_s2"``, or a function
            ``(s1, s2, S) -> Path`` of the start coordinates; it must end with ``s1 = 0``.
        proposal_sigma: std of Gaussian noise added to the proposal (normalised units); see
            :func:`calibrate_proposal_sigma` for the size that makes estimated levels engage.
        skip_threshold: keep the proposal where both estimated levels are ``<= k`` (the QG
            reference run uses 5), or ``i2 <= k2`` and ``i1 <= k1`` for a pair ``(k2, k1)`` (e.g.
            from :func:`calibrate_skip_threshold`); ``None`` refines always.  A skipped sample keeps
            the proposal *with* its proposal noise, so combine the two with care.
        fixed_levels: force the table levels ``(i2, i1)`` for every sample instead of
            estimating them (``(0, 0)``: minimal refinement, best on Lorenz-63 in the
            CPU study); saves the estimation call.
        clamp: clamp ``x0_hat`` to ``[-clamp, clamp]`` in every reverse step (normalised units).
            Set one for generation (``surrogate=None``) and for high estimated levels: at the
            top of the cosine schedule ``abar`` is ~1e-7 (S = 100), so the ``x0`` estimate
            multiplies the network's noise error by ``1/sqrt(abar)`` (~2000); 1.5x the data's
            largest ``|state|`` is the bound the benchmarks use.
        shift, scale: the denoiser works on ``(x - shift) / scale``; the surrogate and the
            returned states are in the caller's units.  Scalars or tensors broadcasting to
            one state.
        n_moves: strided path legs (:mod:`sns.diffusion.paths`): each leg takes at most this many
            moves (posterior steps over several levels), so a step costs at most
            ``1 + 2 n_moves`` calls whatever the levels; ``None``: unit steps (the paper).
        eta: stochasticity of each reverse move (1: DDPM posterior; 0: DDIM, deterministic).
        couple_levels: start ``x_t`` at least as high as ``x_{t-1}``: ``i1 = max(i1_hat, i2_hat)``.
            The proposal was computed from the *unrefined* ``x_{t-1}``, so if the ``i2`` head reads
            ``x_{t-1}`` off the data manifold at level ``i2``, ``x_t`` inherits (at least) that
            error even when the pair is locally consistent and the ``i1`` head reads it as clean;
            path A then cleans ``x_{t-1}`` and regenerates ``x_t`` from level ``i2`` given it, so
            a slow drift of the *state* (each step locally consistent) can trigger refinement
            -- if the ``i2`` head sees the drift.  Measured on Lorenz-63 it did not (the head
            measures distance to the data's support, and the collapsing states stay near it),
            and coupling made rollouts worse (benchmarks/RESULTS.md, issue 14).
        state_guard: a callable mapping the normalised ``x_{t-1}`` ``(B, *state)`` to a floor on
            both levels ``(B,)`` (e.g. :class:`NearestStateGuard`): where it is positive the sample
            is refined from at least that level, whatever the heads read and ``skip_threshold``.
        x0_var: variance-corrected moves of ``x_t`` (:class:`~sns.diffusion.sampling.ModeVariance`
            in the denoiser's normalised units, e.g. :func:`calibrate_x0_variance`): a strided
            move returns the posterior mean of the small scales its start level hid, i.e. a
            smoothed ``x_t``; this adds back that spread under a Gaussian law per mode.

    Attributes after each call: ``last_levels`` (``(i2, i1)``, each ``(B,)``),
    ``last_calls`` (``(B,)`` denoiser calls per sample), ``last_refined`` (``(B,)`` bool);
    running ``n_steps``, ``total_calls`` (the per-step means over samples, summed over
    steps) and ``calls_per_step``.
    """

    def __init__(
        self,
        denoiser: PairDenoiser,
        schedule: Schedule,
        surrogate: nn.Module | Callable[[Tensor], Tensor] | None = None,
        path: str | PathFn = "A",
        proposal_sigma: float = 0.0,
        skip_threshold: int | None = None,
        fixed_levels: tuple[int, int] | None = None,
        clamp: float | None = None,
        shift: float | Tensor = 0.0,
        scale: float | Tensor = 1.0,
        n_moves: int | None = None,
        eta: float = 1.0,
        couple_levels: bool = False,
        state_guard: Callable[[Tensor], Tensor] | None = None,
        x0_var: ModeVariance | None = None,
    ) -> None:
        super().__init__()
        S = schedule.n_levels
        if denoiser.n_levels != S:
            raise ValueError(f"denoiser has n_levels={denoiser.n_levels} but the schedule has S={S}")
        if isinstance(path, str) and path not in PATHS:
            raise ValueError(f"unknown path {path!r}; choose one of {sorted(PATHS)} or pass a path constructor")
        if not callable(path) and not isinstance(path, str):
            raise TypeError(f"path must be a name or a callable (s1, s2, S) -> Path, got {type(path).__name__}")
        if surrogate is not None and not callable(surrogate):
            raise TypeError(f"surrogate must be an nn.Module or a callable, got {type(surrogate).__name__}")
        if not proposal_sigma >= 0:
            raise ValueError(f"proposal_sigma must be >= 0, got {proposal_sigma!r}")
        if skip_threshold is not None:
            pair = tuple(skip_threshold) if isinstance(skip_threshold, (tuple, list)) else (skip_threshold,) * 2
            if len(pair) != 2 or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in pair):
                raise ValueError(f"skip_threshold must be a non-negative integer, a pair (k2, k1) of them, or None, "
                                 f"got {skip_threshold!r}")
            skip_threshold = pair
        if fixed_levels is not None and (
                len(fixed_levels) != 2 or not all(isinstance(v, int) and 0 <= v < S for v in fixed_levels)):
            raise ValueError(f"fixed_levels must be two integer levels (i2, i1) in [0, {S}), got {fixed_levels!r}")
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be positive or None, got {clamp!r}")
        if n_moves is not None and (not isinstance(n_moves, int) or n_moves < 1):
            raise ValueError(f"n_moves must be a positive integer or None (unit steps), got {n_moves!r}")
        if n_moves is not None and not isinstance(path, str):
            raise ValueError("n_moves applies to the named paths; a path constructor makes its own strides")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        self.denoiser = denoiser
        self.schedule = schedule
        self.surrogate = surrogate  # an nn.Module is registered (moves with .to()); a callable is kept as is
        self.path = path
        self.proposal_sigma = float(proposal_sigma)
        self.skip_threshold = skip_threshold
        self.fixed_levels = fixed_levels
        self.clamp = clamp
        self.n_moves = n_moves
        self.eta = float(eta)
        self.couple_levels = bool(couple_levels)
        if state_guard is not None and not callable(state_guard):
            raise TypeError(f"state_guard must be callable (states -> levels), got {type(state_guard).__name__}")
        self.state_guard = state_guard
        if x0_var is not None and not isinstance(x0_var, ModeVariance):
            raise TypeError(f"x0_var must be a sns.diffusion.ModeVariance or None, got {type(x0_var).__name__}")
        self.x0_var = x0_var
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
        if not bool((self.scale > 0).all()):
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.last_levels: tuple[Tensor, Tensor] | None = None
        self.last_calls: Tensor | None = None
        self.last_refined: Tensor | None = None
        self.n_steps = 0
        self.total_calls = 0

    #: ``units`` of :meth:`from_file`: what the surrogate and the states are measured in.
    UNITS = ("normalised", "physical")

    @classmethod
    def from_file(
        cls,
        denoiser_path: str | os.PathLike,
        surrogate: nn.Module | Callable[[Tensor], Tensor] | str | os.PathLike | None = None,
        *,
        units: str | None = None,
        device: str | torch.device = "cpu",
        **options,
    ) -> SNSRefiner:
        """The refiner of an exported SNS pair denoiser file (``sns-train task=denoiser``, or
        :func:`sns.export.save_model`), its schedule and normalisation read from the file.

        Args:
            denoiser_path: the ``.safetensors`` file; its metadata must say ``task="denoiser"``
                and ``method="sns"`` (files written before the baselines existed record no
                method and are SNS).  The network and the schedule are rebuilt from it alone
                (:func:`sns.export.load_model`, :func:`sns.export.load_schedule`).
            surrogate: as for :class:`SNSRefiner` (``None``: generate from noise), or what
                :func:`sns.surrogates.loading.load_surrogate` loads: an sns surrogate export
                (``.safetensors``; refused if it was trained on other data than the denoiser),
                a ``.pt2`` torch.export program, a TorchScript file, or an import path
                ``package.module:factory``.
            units: what the surrogate maps and the refined states are measured in (``None``:
                the surrogate's own declaration, i.e. ``"normalised"`` for an sns export, its
                attribute ``units`` for any other model; a model that declares nothing needs
                ``units``; given units that contradict the model's declaration are refused;
                without a surrogate, ``None`` means normalised):

                * ``"normalised"``: the denoiser's own units, ``(x - norm_offset) / norm_scale``
                  of its training data (``shift=0, scale=1``), e.g. a surrogate trained by
                  ``sns-train`` on the same data set;
                * ``"physical"``: the data's units; ``shift``/``scale`` are the file's
                  ``norm_offset``/``norm_scale`` (shaped ``(C, 1, 1)`` for fields, ``(D,)`` or
                  ``(1,)`` for vectors), so the denoiser sees normalised states and the refiner
                  returns physical ones.  A file without the normalisation is refused.
            device: where the denoiser (and the refiner, with a surrogate module) is put.
            **options: the other :class:`SNSRefiner` arguments (``path``, ``proposal_sigma``,
                ``skip_threshold``, ``fixed_levels``, ``clamp``, ``n_moves``, ``eta``,
                ``couple_levels``, ``state_guard``); ``proposal_sigma`` and ``clamp`` stay in
                normalised units whatever ``units`` is.  ``shift``/``scale`` come from ``units``.

        Raises ``ValueError`` naming the file for a file that is not an SNS denoiser, an unknown
        ``units``, a surrogate whose units are unknown or contradict ``units``, a surrogate file
        trained on another data set, or ``units="physical"`` without (or with malformed)
        normalisation metadata;
        ``TypeError`` for ``shift``/``scale`` in ``options``.
        """
        from sns.export import load_model, load_schedule
        from sns.surrogates.loading import load_surrogate, norm_tensors

        if units is not None and units not in cls.UNITS:
            raise ValueError(f"units must be one of {cls.UNITS}, got {units!r}")
        clash = sorted({"shift", "scale", "denoiser", "schedule"} & set(options))
        if clash:
            raise TypeError(f"from_file sets {', '.join(clash)} itself (from the file and units=); "
                            "build SNSRefiner(...) directly to choose them")
        model, extra = load_model(denoiser_path, device)
        from sns.methods import method_of

        task, method = extra.get("task"), method_of(extra).name
        if task != "denoiser" or method != "sns":
            raise ValueError(f"{denoiser_path} holds a model with task={task!r}, method={method!r}; SNSRefiner "
                             "needs an SNS pair denoiser (task='denoiser', method='sns'): "
                             "sns-train task=denoiser (baselines roll out with sns-rollout)")
        if not isinstance(model, PairDenoiser):
            raise ValueError(f"{denoiser_path} holds a {type(model).__name__}, not a pair denoiser")  # noqa: TRY004 - a bad file
        if surrogate is not None:  # a file / import path is loaded; any surrogate's declared units are checked
            loaded = load_surrogate(surrogate, units=units, device=device)
            if loaded.extra is not None:  # an sns export: trained on the denoiser's data set?
                mine, theirs = extra.get("data") or {}, loaded.extra.get("data") or {}
                for key in ("system", "norm_offset", "norm_scale"):
                    if key in mine and key in theirs and mine[key] != theirs[key]:
                        raise ValueError(f"surrogate {surrogate} was trained on data with {key}={theirs[key]!r} "
                                         f"but denoiser {denoiser_path} on {key}={mine[key]!r}: train both on "
                                         "the same data set")
            surrogate, units = loaded.model, loaded.units
        units = units or "normalised"
        shift: float | Tensor = 0.0
        scale: float | Tensor = 1.0
        if units == "physical":
            data = extra.get("data") or {}
            norm = {k: data.get(k, extra.get(k)) for k in ("norm_offset", "norm_scale")}
            missing = [k for k, v in norm.items() if v is None]
            if missing:
                raise ValueError(f"{denoiser_path} records no data normalisation ({' and '.join(missing)} missing "
                                 "from its metadata), so units='physical' cannot be honoured: use "
                                 "units='normalised' with a surrogate on the denoiser's normalised states")
            shift, scale = norm_tensors(norm["norm_offset"], norm["norm_scale"], model.state_shape,
                                        str(denoiser_path), device)
        try:
            schedule = load_schedule(extra)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{denoiser_path}: cannot rebuild the noise schedule: {err}") from None
        refiner = cls(model, schedule, surrogate=surrogate, shift=shift, scale=scale, **options)
        return refiner.to(device)

    @property
    def calls_per_step(self) -> float:
        """Mean denoiser calls per sample and step since construction (or :meth:`reset_counts`)."""
        return self.total_calls / self.n_steps if self.n_steps else float("nan")

    def reset_counts(self) -> None:
        self.n_steps, self.total_calls = 0, 0

    def _path(self, s1: Tensor, s2: Tensor) -> Path:
        S = self.schedule.n_levels
        path = make_path(self.path, s1, s2, S, self.n_moves) if isinstance(self.path, str) else self.path(s1, s2, S)
        if not isinstance(path, Path):
            raise TypeError(f"the path constructor returned {type(path).__name__}, expected a Path")
        if bool((path.end[:, 0] != 0).any()):
            raise ValueError(f"the refinement path must end with s1 = 0 (a clean x_t), got ends {path.end.tolist()}")
        return path

    def _propose(self, x: Tensor) -> Tensor:
        x_hat = self.surrogate(x)
        if not isinstance(x_hat, Tensor) or x_hat.shape != x.shape:
            got = tuple(x_hat.shape) if isinstance(x_hat, Tensor) else type(x_hat).__name__
            raise ValueError(f"the surrogate must return a tensor of the state's shape {tuple(x.shape)}, got {got}")
        return x_hat

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One refined step: ``(B, *state_shape)`` states ``x_{n-1}`` -> ``x_n`` (same shape)."""
        S = self.schedule.n_levels
        x_prev = (x - self.shift) / self.scale
        self.denoiser.check_pair(x_prev, x_prev)
        B = x.shape[0]
        if self.surrogate is None:
            x_hat = randn_like(x_prev, generator)  # pure noise: x_t at the top coordinate S
        else:
            x_hat = (self._propose(x) - self.shift) / self.scale
            if self.proposal_sigma > 0:
                x_hat = x_hat + self.proposal_sigma * randn_like(x_hat, generator)
        calls = torch.zeros(B, dtype=torch.long, device=x.device)
        if self.fixed_levels is not None:
            i2 = torch.full((B,), self.fixed_levels[0], dtype=torch.long, device=x.device)
            i1 = torch.full((B,), self.fixed_levels[1], dtype=torch.long, device=x.device)
        else:
            i2, i1 = estimate_levels(self.denoiser, x_prev, x_hat)
            calls += 1
        if self.surrogate is None:
            i1 = torch.full_like(i1, S - 1)
        refine = torch.ones(B, dtype=torch.bool, device=x.device)
        if self.skip_threshold is not None and self.surrogate is not None:  # on the raw estimates
            refine = (i2 > self.skip_threshold[0]) | (i1 > self.skip_threshold[1])
        if self.couple_levels and self.surrogate is not None:
            i1 = torch.maximum(i1, i2)
        if self.state_guard is not None and self.surrogate is not None:
            floor = torch.as_tensor(self.state_guard(x_prev), device=x.device).long().clamp(0, S - 1)
            if floor.shape != (B,):
                raise ValueError(f"state_guard must return one level per sample, shape ({B},), got {tuple(floor.shape)}")
            i2, i1 = torch.maximum(i2, floor), torch.maximum(i1, floor)
            refine = refine | (floor > 0)
        out = x_hat.clone()
        idx = refine.nonzero().squeeze(1)
        if idx.numel():
            xp, _ = noise_state(self.schedule, x_prev[idx], i2[idx], generator=generator)
            xn = x_hat[idx]
            if self.surrogate is not None:
                xn, _ = noise_state(self.schedule, xn, i1[idx], generator=generator)
            path = self._path(level_to_coord(i1[idx].cpu()), level_to_coord(i2[idx].cpu()))
            result = traverse(self.denoiser, self.schedule, xp, xn, path, self.clamp, generator, eta=self.eta,
                              x0_var=self.x0_var)
            out[idx] = result.x_next
            calls[idx] += result.calls.to(calls.device)
        self.last_levels, self.last_calls, self.last_refined = (i2, i1), calls, refine
        self.n_steps += 1
        self.total_calls += int(calls.sum()) / B
        return out * self.scale + self.shift


#: Options of ``sns-rollout refiner.*`` (conf/rollout.yaml documents each).
DEFAULTS: dict[str, Any] = {"path": "A", "proposal_sigma": 0.0, "skip_threshold": None, "n_moves": None, "eta": 1.0,
                            "couple_levels": False, "fixed_levels": None, "clamp": None, "state_guard": False,
                            "x0_var": None}


def from_settings(model: PairDenoiser, extra: dict[str, Any], surrogate: Any, settings: dict[str, Any],
                  context: Any) -> tuple[SNSRefiner, dict[str, Any]]:
    """Registry builder of ``sns`` (:mod:`sns.methods`): :class:`SNSRefiner` from ``refiner.*``
    options (:data:`DEFAULTS` where silent).  Data-calibrated options read the data set through
    ``context`` (:class:`sns.methods.StepperContext`): ``proposal_sigma: auto`` is sqrt(2) x the
    surrogate's one-step RMSE on up to 4096 valid pairs (:func:`calibrate_proposal_sigma`);
    ``state_guard: true`` (or a quantile in (0, 1]) is :class:`NearestStateGuard` calibrated on
    the train split (reference) and the valid split (threshold, level table); ``x0_var:
    residual`` is the surrogate's residual spectrum on up to 4096 valid pairs
    (:func:`calibrate_x0_variance`), ``x0_var: table`` the denoiser's per-level x0 error spectrum
    on up to 256 valid pairs (:meth:`~sns.diffusion.sampling.ModeVariance.from_denoiser`, S calls
    per pair).  The recorded settings add ``proposal_sigma_auto`` and ``state_guard_threshold``
    where they apply."""
    from sns.export import load_schedule

    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown refiner option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    r = {**DEFAULTS, **settings}
    try:
        fixed = tuple(int(v) for v in r["fixed_levels"]) if r["fixed_levels"] is not None else None
    except (TypeError, ValueError):
        raise ValueError(f"refiner.fixed_levels must be two integer table levels [i2, i1] or null, got "
                         f"{r['fixed_levels']!r}") from None
    skip = r["skip_threshold"]
    skip = tuple(int(v) for v in skip) if isinstance(skip, (list, tuple)) else skip
    if isinstance(r["proposal_sigma"], str):
        if r["proposal_sigma"] != "auto":
            raise ValueError(f"refiner.proposal_sigma must be a number or 'auto', got {r['proposal_sigma']!r}")
        r["proposal_sigma"] = calibrate_proposal_sigma(surrogate, *context.pairs("valid"))
        r["proposal_sigma_auto"] = True  # sqrt(2) x the surrogate's one-step RMSE on the valid split
    schedule = load_schedule(extra)
    guard = None
    if r["state_guard"] not in (None, False):
        guard = _state_guard(schedule, r["state_guard"], context)
        r["state_guard_threshold"] = guard.threshold  # recorded: the distance beyond which it fires
    x0_var = _x0_variance(model, schedule, surrogate, r["x0_var"], context)
    step = SNSRefiner(model, schedule, surrogate=surrogate, path=r["path"], proposal_sigma=float(r["proposal_sigma"]),
                      skip_threshold=skip, fixed_levels=fixed, clamp=r["clamp"], n_moves=r["n_moves"],
                      eta=float(r["eta"]), couple_levels=bool(r["couple_levels"]), state_guard=guard, x0_var=x0_var)
    return step, r


def _x0_variance(model: PairDenoiser, schedule: Schedule, surrogate: Any, setting: Any,
                 context: Any) -> ModeVariance | None:
    """``refiner.x0_var``: None, ``residual`` or ``table``, calibrated on the valid split."""
    if setting is None:
        return None
    if setting not in ("residual", "table"):
        raise ValueError(f"refiner.x0_var must be null, 'residual' or 'table', got {setting!r}")
    shape = context.state_shape("valid")
    spatial_dims = len(shape) - 1 if len(shape) > 1 else 0  # (C, H, W) fields: per Fourier mode
    if setting == "residual":
        if surrogate is None:
            raise ValueError("refiner.x0_var=residual needs a surrogate (its residual spectrum)")
        return calibrate_x0_variance(surrogate, *context.pairs("valid"), spatial_dims=spatial_dims, batch=256)
    x_prev, x_next = context.pairs("valid", max_pairs=256)
    return ModeVariance.from_denoiser(model, schedule, x_prev, x_next, spatial_dims=spatial_dims, batch=128,
                                      generator=torch.Generator(device=x_next.device).manual_seed(0))


def _state_guard(schedule: Schedule, setting: Any, context: Any, max_states: int = 100_000) -> NearestStateGuard:
    if setting is True:
        quantile = 0.999
    elif isinstance(setting, (int, float)) and not isinstance(setting, bool) and 0.0 < float(setting) <= 1.0:
        quantile = float(setting)
    else:
        raise ValueError(f"refiner.state_guard must be true, false or a quantile in (0, 1], got {setting!r}")
    if len(context.state_shape("train")) > 1:  # (C, H, W): any field; refused before the split is loaded
        raise ValueError("refiner.state_guard is for vector systems (nearest neighbours of field states "
                         "measure the sampling floor, not a drift); set refiner.state_guard=false")
    reference = context.states("train", max_states)
    held_out = context.states("valid", max_states)
    return NearestStateGuard.calibrate(schedule, reference, held_out, quantile=quantile)


#: Options of ``sns-rollout clean_conditioning.*``.
CLEAN_CONDITIONING_DEFAULTS: dict[str, Any] = {"clamp": None, "n_moves": None, "eta": 1.0}


def clean_conditioning_from_settings(model: PairDenoiser, extra: dict[str, Any], surrogate: Any,
                                     settings: dict[str, Any], context: Any) -> tuple[SNSRefiner, dict[str, Any]]:
    """Registry builder of ``clean_conditioning`` (:mod:`sns.methods`): the SNS pair denoiser as a
    generator, ``x_t`` from pure noise (the top level) given the clean ``x_{t-1}`` (level 0), no
    surrogate; ``S`` calls per step with unit moves.  Set ``clamp`` (e.g. 1.5x the data's largest
    |state|): from the top of a cosine schedule ``x0_hat`` multiplies the network's error by up to
    ``1/sqrt(abar_S)`` (DDPM's sampler clips it the same way)."""
    from sns.export import load_schedule

    unknown = sorted(set(settings) - set(CLEAN_CONDITIONING_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown clean_conditioning option(s) {unknown}; valid: {sorted(CLEAN_CONDITIONING_DEFAULTS)}")
    c = {**CLEAN_CONDITIONING_DEFAULTS, **settings}
    schedule = load_schedule(extra)
    step = SNSRefiner(model, schedule, None, fixed_levels=(0, schedule.n_levels - 1), clamp=c["clamp"],
                      n_moves=c["n_moves"], eta=float(c["eta"]))
    return step, c
