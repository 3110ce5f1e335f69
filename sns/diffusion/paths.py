"""Paths in the reverse-process phase space, and the one function that executes any path.

**Coordinates.** A path point is ``(s1, s2)``: the phase-space coordinates of the paper
(Fig. 2, Theorem 3.1) for ``x_t`` and ``x_{t-1}``, integers in ``{0, ..., S}``:
``s = 0`` is the clean state, and ``s >= 1`` is a state noised at the 0-based table
level ``i = s - 1`` (``abar[s-1]``, :mod:`sns.diffusion.schedules`).  So ``s`` counts the
reverse steps a state still needs, the top coordinate ``S`` is pure noise (table level
``S - 1``), and a state the level heads put at class ``i`` sits at ``s = i + 1``.
Names: ``s1, s2`` are these coordinates and nothing else; table levels are ``i1, i2``
everywhere (noising, the loss, the nets, the refiner), and :func:`level_to_coord` /
:func:`coord_to_level` are the one conversion.

(The reference code noises with ``abar[i]`` and then starts its reverse loop at ``i - 1``,
i.e. it denoises a state at level ``i`` with the coefficients of level ``i - 1`` and one
step short: an off-by-one.  Here noising at table level ``i`` and reverse steps at
``i, i-1, ..., 0`` are consistent, so a refined step costs ``s1 + s2`` calls with
``s = i + 1``: ``i1 + i2 + 2`` plus one level-estimation pass.)

**A path is data**: a sequence of points, monotone non-increasing in both coordinates,
each move lowering ``s1``, ``s2`` or both by exactly one (one DDPM ancestral step of the
state(s) that move, one network call), ending at ``end`` -- ``(0, 0)`` unless the
constructor says otherwise.  A batch holds one path per sample, shape ``(B, L, 2)``
(``[..., 0] = s1``, ``[..., 1] = s2``), padded by repeating points (a repeated point is
no move and costs nothing).

**Strided paths** (``strided=True``; constructors take ``n_moves``) may lower a coordinate by
several levels in one move: the step ``i -> j`` is the DDPM posterior ``q(x_j | x_i, x0_hat)``
(``eta = 1``) or DDIM (``eta = 0``), :func:`sns.diffusion.sampling.posterior_step`.  A leg of
``n`` levels then costs ``min(n, n_moves)`` calls instead of ``n``: what makes a fine schedule
(many levels near the bottom, e.g. :func:`~sns.diffusion.schedules.log_sigma_schedule`)
affordable.  Like unit steps they are exact only in the continuum limit; the variance lost per
stride is measured in tests/test_oracle.py.

Why ``end`` is explicit: every SNS path must finish with both states clean, so by
default a path that stops elsewhere is a bug and fails validation.  Two methods stop
elsewhere on purpose -- the Thermalizer leaves ``x_t`` at its ``stop`` coordinate and
``x_{t-1}`` at ``S`` (never denoised), and "fix s2" never denoises ``x_{t-1}`` -- so
their constructors state the endpoint, and the path is validated against it.

**Traversal** (:func:`traverse`) executes a batch of heterogeneous paths.  At step ``k``
only the samples whose path moves between points ``k`` and ``k+1`` take part; they are
gathered (compacted) into one sub-batch, so a step costs one network call on the active
subset, not on the whole batch (DESIGN.md section 5, pitfall 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sns.diffusion.noising import randn_like, table
from sns.diffusion.sampling import ModeVariance, posterior_step
from sns.diffusion.schedules import Schedule
from sns.nets.base import PairDenoiser

__all__ = [
    "PATHS",
    "Path",
    "Traversal",
    "acdm_path",
    "clean_conditioning_path",
    "coord_to_level",
    "level_to_coord",
    "make_path",
    "path_A",
    "path_B",
    "path_C",
    "path_fix_s2",
    "thermalizer_path",
    "traverse",
]

IntOrTensor = int | Tensor


def level_to_coord(i: IntOrTensor) -> IntOrTensor:
    """Phase-space coordinate ``s = i + 1`` of a state at 0-based table level ``i``."""
    return i + 1


def coord_to_level(s: IntOrTensor) -> IntOrTensor:
    """Table level ``i = s - 1`` of phase-space coordinate ``s`` (``s = 0``, clean, gives -1)."""
    return s - 1


@dataclass(frozen=True)
class Path:
    """A batch of monotone paths in phase space (see module docstring); validated on construction.

    Attributes:
        points: ``(B, L, 2)`` integer tensor of ``(s1, s2)`` points; a ``(L, 2)`` tensor or a
            sequence of pairs is taken as a batch of one.
        n_levels: S; coordinates lie in ``[0, S]``.
        end: ``(B, 2)`` (or one ``(s1, s2)`` pair for all samples) required last point;
            ``None`` means ``(0, 0)``.
    """

    points: Tensor
    n_levels: int
    end: Tensor | None = None
    strided: bool = False  #: allow moves of several levels per coordinate

    def __post_init__(self) -> None:
        pts = torch.as_tensor(self.points)
        if pts.dtype.is_floating_point or pts.dtype == torch.bool:
            raise ValueError(f"path points must be integers, got dtype {pts.dtype}")
        pts = pts.long().cpu()
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[1] < 1:
            raise ValueError(f"path points must have shape (B, L, 2) or (L, 2), got {tuple(pts.shape)}")
        S = self.n_levels
        if not isinstance(S, int) or S < 1:
            raise ValueError(f"n_levels must be a positive integer, got {S!r}")
        end = torch.zeros(pts.shape[0], 2, dtype=torch.long) if self.end is None else self.end
        end = torch.as_tensor(end).long().cpu().expand(pts.shape[0], 2).clone()
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "end", end)
        _validate(pts, end, S, self.strided)

    @property
    def batch_size(self) -> int:
        return int(self.points.shape[0])

    @property
    def start(self) -> Tensor:
        """``(B, 2)`` first points ``(s1, s2)``."""
        return self.points[:, 0]

    @property
    def moves(self) -> Tensor:
        """``(B, L-1)`` bool: does sample b move between points k and k+1 (one network call)."""
        return (self.points[:, 1:] != self.points[:, :-1]).any(-1)

    @property
    def n_calls(self) -> Tensor:
        """``(B,)`` network calls each sample's path costs."""
        return self.moves.sum(1)

    def __getitem__(self, index: int | slice | Tensor) -> Path:
        """The sub-batch ``index`` (an int keeps a batch of one), trailing padding trimmed."""
        if isinstance(index, int):
            index = [index]
        pts, end = self.points[index], self.end[index]
        moving = (pts[:, 1:] != pts[:, :-1]).any(-1).any(0).nonzero()
        length = int(moving[-1]) + 2 if len(moving) else 1
        return Path(pts[:, :length], self.n_levels, end, self.strided)

    @staticmethod
    def n_calls_of(points: Tensor) -> Tensor:
        return (points[:, 1:] != points[:, :-1]).any(-1).sum(1)


def _validate(pts: Tensor, end: Tensor, S: int, strided: bool = False) -> None:
    names = ("s1", "s2")
    bad = ((pts < 0) | (pts > S)).nonzero()
    if len(bad):
        b, k, c = (int(v) for v in bad[0])
        raise ValueError(f"path of sample {b}: point {k} has {names[c]} = {int(pts[b, k, c])}, "
                         f"outside [0, S] = [0, {S}]")
    step = pts[:, 1:] - pts[:, :-1]
    bad = ((step > 0) | (step < -1)).nonzero() if not strided else (step > 0).nonzero()
    if len(bad):
        b, k, c = (int(v) for v in bad[0])
        what = "increases" if step[b, k, c] > 0 else f"jumps by {int(step[b, k, c])}"
        raise ValueError(
            f"path of sample {b}: {names[c]} {what} from point {k} {tuple(pts[b, k].tolist())} to "
            f"point {k + 1} {tuple(pts[b, k + 1].tolist())}; a path must be non-increasing with "
            f"moves of at most one level per coordinate unless strided=True (S = {S})"
        )
    bad = (pts[:, -1] != end).any(-1).nonzero()
    if len(bad):
        b = int(bad[0])
        raise ValueError(
            f"path of sample {b} ends at (s1, s2) = {tuple(pts[b, -1].tolist())}, expected "
            f"{tuple(end[b].tolist())} (S = {S}); pass `end` for paths that deliberately stop early"
        )


# --------------------------------------------------------------------------- constructors


def _starts(S: int, **levels: IntOrTensor) -> tuple[Tensor, ...]:
    """Broadcast start coordinates to ``(B,)`` long tensors and check them against ``[0, S]``."""
    out = torch.broadcast_tensors(*(torch.as_tensor(v).long().cpu().reshape(-1) for v in levels.values()))
    for name, v in zip(levels, out):
        bad = ((v < 0) | (v > S)).nonzero()
        if len(bad):
            j = int(bad[0])
            raise ValueError(f"start {name}[{j}] = {int(v[j])} is outside the coordinates [0, S] = [0, {S}]")
    return tuple(o.clone() for o in out)


def _steps(total: Tensor) -> Tensor:
    """``(1, L)`` step indices ``k = 0..L-1`` with ``L = max(total) + 1``."""
    return torch.arange(int(total.max()) + 1 if total.numel() else 1)[None]


def _leg(start: Tensor, n_moves: int) -> Tensor:
    """``(B, n_moves + 1)`` coordinates from ``start`` down to 0 in ``n_moves`` near-even strides
    (``ceil(start (n - k) / n)``; starts below ``n_moves`` repeat points, i.e. take fewer moves)."""
    k = torch.arange(n_moves + 1)[None]
    return (start[:, None] * (n_moves - k) + n_moves - 1) // n_moves


def _check_moves(n_moves: int | None) -> None:
    if n_moves is not None and (not isinstance(n_moves, int) or n_moves < 1):
        raise ValueError(f"n_moves must be a positive integer or None (unit steps), got {n_moves!r}")


def _two_legs(first: Tensor, second: Tensor, n_moves: int) -> tuple[Tensor, Tensor]:
    """Strided "first coordinate to 0, then the second": ``(B, 2 n + 1)`` sequences of each."""
    a, b = _leg(first, n_moves), _leg(second, n_moves)
    pa = torch.cat([a, a[:, -1:].expand(-1, n_moves)], 1)
    pb = torch.cat([second[:, None].expand(-1, n_moves + 1), b[:, 1:]], 1)
    return pa, pb


def path_A(s1: IntOrTensor, s2: IntOrTensor, n_levels: int, n_moves: int | None = None) -> Path:
    """Path A (the paper's choice): left, then down.

    Denoise ``x_{t-1}`` from ``s2`` to 0 while ``x_t`` waits at ``s1``, then ``x_t`` from ``s1``
    to 0 conditioned on the clean ``x_{t-1}``.  ``s1 + s2`` calls; with ``n_moves`` each leg
    takes at most ``n_moves`` strided moves (a strided path).
    """
    s1, s2 = _starts(n_levels, s1=s1, s2=s2)
    _check_moves(n_moves)
    if n_moves is not None:
        p2, p1 = _two_legs(s2, s1, n_moves)
        return Path(torch.stack([p1, p2], -1), n_levels, strided=True)
    k = _steps(s1 + s2)
    p2 = (s2[:, None] - k).clamp(min=0)
    p1 = s1[:, None] - (k - s2[:, None]).clamp(min=0).minimum(s1[:, None])
    return Path(torch.stack([p1, p2], -1), n_levels)


def path_B(s1: IntOrTensor, s2: IntOrTensor, n_levels: int, n_moves: int | None = None) -> Path:
    """Path B: down, then left (``x_t`` to 0 first, conditioned on the noised ``x_{t-1}``)."""
    s1, s2 = _starts(n_levels, s1=s1, s2=s2)
    _check_moves(n_moves)
    if n_moves is not None:
        p1, p2 = _two_legs(s1, s2, n_moves)
        return Path(torch.stack([p1, p2], -1), n_levels, strided=True)
    k = _steps(s1 + s2)
    p1 = (s1[:, None] - k).clamp(min=0)
    p2 = s2[:, None] - (k - s1[:, None]).clamp(min=0).minimum(s2[:, None])
    return Path(torch.stack([p1, p2], -1), n_levels)


def path_C(s1: IntOrTensor, s2: IntOrTensor, n_levels: int, n_moves: int | None = None) -> Path:
    """Path C: straight to the diagonal (the higher coordinate comes down to the lower),
    then along it with both states denoised together.  ``max(s1, s2)`` calls (strided: at most
    ``n_moves`` for each of the two legs)."""
    s1, s2 = _starts(n_levels, s1=s1, s2=s2)
    _check_moves(n_moves)
    if n_moves is not None:
        hi, lo = torch.maximum(s1, s2), torch.minimum(s1, s2)
        down = lo[:, None] + _leg(hi - lo, n_moves)  # the higher coordinate: hi -> lo
        diag = _leg(lo, n_moves)[:, 1:]  # then both together: lo -> 0
        top = torch.cat([down, diag], 1)
        low = torch.cat([lo[:, None].expand(-1, n_moves + 1), diag], 1)
        p1 = torch.where((s1 >= s2)[:, None], top, low)
        p2 = torch.where((s1 >= s2)[:, None], low, top)
        return Path(torch.stack([p1, p2], -1), n_levels, strided=True)
    hi = torch.maximum(s1, s2)[:, None]
    k = _steps(hi[:, 0])
    p1 = (hi - k).minimum(s1[:, None]).clamp(min=0)
    p2 = (hi - k).minimum(s2[:, None]).clamp(min=0)
    return Path(torch.stack([p1, p2], -1), n_levels)


def path_fix_s2(s1: IntOrTensor, s2: IntOrTensor, n_levels: int, n_moves: int | None = None) -> Path:
    """"Fix s2": only ``x_t`` is denoised (``s1 -> 0``); ``x_{t-1}`` stays at ``s2``.

    Ends at ``(0, s2)`` (explicit ``end``): the conditioning state is never cleaned.
    """
    s1, s2 = _starts(n_levels, s1=s1, s2=s2)
    _check_moves(n_moves)
    p1 = (s1[:, None] - _steps(s1)).clamp(min=0) if n_moves is None else _leg(s1, n_moves)
    p2 = s2[:, None].expand_as(p1)
    return Path(torch.stack([p1, p2], -1), n_levels, end=torch.stack([torch.zeros_like(s2), s2], -1),
                strided=n_moves is not None)


def clean_conditioning_path(n_levels: int, batch: int = 1, s1: IntOrTensor | None = None) -> Path:
    """Plain conditional diffusion: ``s2 = 0`` (clean ``x_{t-1}``), ``s1`` from ``S`` (pure
    noise, table level ``S - 1``) -- or the given start -- down to 0.  ``S`` calls."""
    (s1,) = _starts(n_levels, s1=_batched(n_levels if s1 is None else s1, batch))
    return path_B(s1, torch.zeros_like(s1), n_levels)


def acdm_path(n_levels: int, batch: int = 1, start: IntOrTensor | None = None) -> Path:
    """ACDM: the diagonal ``s1 = s2`` from ``S`` (or ``start``) to 0, both states denoised
    together (the conditioning is re-noised to the same level).  ``S`` calls."""
    (s,) = _starts(n_levels, start=_batched(n_levels if start is None else start, batch))
    return path_C(s, s, n_levels)


def _batched(start: IntOrTensor, batch: int) -> Tensor:
    start = torch.as_tensor(start).long().reshape(-1)
    return start.expand(batch) if start.numel() == 1 else start


def thermalizer_path(start: IntOrTensor, stop: IntOrTensor, n_levels: int) -> Path:
    """Thermalizer: ``s2 = S`` fixed (conditioning fully noised: the model is unconditional),
    ``x_t`` denoised from coordinate ``start`` down to ``stop`` (``0 <= stop <= start``).

    Ends at ``(stop, S)`` (explicit ``end``): the Thermalizer stops before the clean state
    on purpose, and ``x_{t-1}`` is never denoised.  ``start - stop`` calls.
    """
    start, stop = _starts(n_levels, start=start, stop=stop)
    bad = (stop > start).nonzero()
    if len(bad):
        j = int(bad[0])
        raise ValueError(f"thermalizer stop[{j}] = {int(stop[j])} exceeds start[{j}] = {int(start[j])}")
    k = _steps(start - stop)
    p1 = (start[:, None] - k).maximum(stop[:, None])
    p2 = torch.full_like(p1, n_levels)
    end = torch.stack([stop, torch.full_like(stop, n_levels)], -1)
    return Path(torch.stack([p1, p2], -1), n_levels, end=end)


PATHS = {"A": path_A, "B": path_B, "C": path_C, "fix_s2": path_fix_s2}


def make_path(name: str, s1: IntOrTensor, s2: IntOrTensor, n_levels: int, n_moves: int | None = None) -> Path:
    """Refinement path by name: ``"A"``, ``"B"``, ``"C"`` or ``"fix_s2"`` (``n_moves``: strided legs)."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose one of {sorted(PATHS)}")
    return PATHS[name](s1, s2, n_levels, n_moves)


# --------------------------------------------------------------------------- traversal


@dataclass
class Traversal:
    """Result of :func:`traverse`."""

    x_prev: Tensor  #: x_{t-1} at the path's end coordinate s2 (clean for paths ending at s2 = 0)
    x_next: Tensor  #: x_t at the path's end coordinate s1
    calls: Tensor  #: (B,) network calls per sample (= moves of its path)
    network_calls: int  #: forward passes made (each on the compacted active subset)


@torch.no_grad()
def traverse(
    denoiser: PairDenoiser,
    schedule: Schedule,
    x_prev: Tensor,
    x_next: Tensor,
    path: Path,
    clamp: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    condition: Tensor | None = None,
    eta: float = 1.0,
    x0_var: ModeVariance | None = None,
) -> Traversal:
    """Execute ``path`` with DDPM ancestral steps (:func:`sns.diffusion.sampling.posterior_step`;
    for unit moves the same as :func:`~sns.diffusion.sampling.ddpm_step`).

    Args:
        denoiser: the pair denoiser ``D_theta``; it sees the pair at table levels
            ``(s2 - 1, s1 - 1)``.  A clean state (``s = 0``) is shown as level 0, the
            nearest level the network was trained on (matters only to explicit denoisers).
        x_prev, x_next: ``(B, ...)`` states already at the path's start: ``x_{t-1}`` at ``s2``,
            ``x_t`` at ``s1`` (noised with ``abar[s - 1]``, or clean where ``s = 0``).
        path: one path per sample (``path.batch_size == B``), or a batch-of-one path shared
            by all samples (cheaper: no ``(B, L, 2)`` table).
        clamp: clamp ``x0_hat`` in every step (state units).
        generator: one generator for the whole batch (fast), or one per sample (each sample
            then draws its own noise, so a batch gives exactly the samples run one by one).
        condition: the clean ``x_{t-1}`` (``x_prev``'s shape).  When given, ``x_{t-1}`` is not
            denoised by the network: every move of ``s2`` *re-noises* the condition to the new
            coordinate with fresh noise (``sqrt(abar) c + sqrt(1 - abar) z``; clean at
            ``s2 = 0``).  This is ACDM's sampler (Kohl et al. 2023), where the conditioning
            part of the diffusion state is replaced by a forward-noised copy at every level.
        eta: stochasticity of each move (1: DDPM posterior, 0: DDIM); matters for strided moves
            and, for unit moves, makes them deterministic (``eta < 1``).
        x0_var: variance-corrected moves of ``x_t`` (:class:`~sns.diffusion.sampling.ModeVariance`,
            the law of ``x_t`` given ``x_{t-1}`` per mode): each move of ``s1`` adds the spread
            of ``x0`` that its ``x0_hat`` lacks (:func:`~sns.diffusion.sampling.posterior_step`),
            which matters for strided moves; ``x_{t-1}``'s moves are plain.  ``None``: plain moves
            (and the same random stream as before this option existed).

    Returns:
        :class:`Traversal` with the states at the path's end and the call counts.
    """
    B = x_prev.shape[0]
    if x_next.shape[0] != B:
        raise ValueError(f"batch sizes differ: x_prev {B}, x_next {x_next.shape[0]}")
    if path.n_levels != schedule.n_levels:
        raise ValueError(f"path has S={path.n_levels} but the schedule has S={schedule.n_levels}")
    if path.batch_size not in (1, B):
        raise ValueError(f"path holds {path.batch_size} sample paths for a batch of {B}")
    per_sample = generator is not None and not isinstance(generator, torch.Generator)
    if per_sample and len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for a batch of {B}")
    if condition is not None and condition.shape != x_prev.shape:
        raise ValueError(f"condition shape {tuple(condition.shape)} differs from x_prev {tuple(x_prev.shape)}")
    x_prev, x_next = x_prev.clone(), x_next.clone()
    device = x_prev.device
    points = path.points.to(device)  # (B, L, 2), or (1, L, 2) shared by all samples
    moves = points[:, 1:] != points[:, :-1]  # (B or 1, L-1, 2)
    network_calls = 0
    for k in range(moves.shape[1]):
        move_k = moves[:, k].expand(B, 2)
        idx = move_k.any(-1).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        s = points[:, k].expand(B, 2)[idx]  # (n, 2) coordinates (s1, s2) before the move
        s_new = points[:, k + 1].expand(B, 2)[idx]  # ... and after it
        level = coord_to_level(s).clamp(min=0)  # a clean state (s = 0) is shown as level 0
        out = denoiser(x_prev[idx], x_next[idx], level[:, 1], level[:, 0])  # (i2, i1), positional
        network_calls += 1
        z_next, z_prev = _noise(x_next, x_prev, idx, generator if per_sample else None,
                                None if per_sample else generator)
        for c, x, eps, z in ((0, x_next, out.eps_next, z_next), (1, x_prev, out.eps_prev, z_prev)):
            m = move_k[idx, c]
            if not m.any():
                continue
            rows = idx[m]
            if c == 1 and condition is not None:  # re-noise the clean condition to the new s2
                new = s_new[m, c]
                abar = table(schedule.abar, coord_to_level(new).clamp(min=0), x[rows])
                noised = abar.sqrt() * condition[rows] + (1 - abar).sqrt() * z[m]
                clean = (new == 0).reshape(-1, *([1] * (x.ndim - 1)))
                x[rows] = torch.where(clean, condition[rows], noised)
            else:
                corr = x0_var if c == 0 else None
                z_x0 = None
                if corr is not None:
                    z_x0 = (torch.stack([randn_like(x[b], generator[b]) for b in rows.tolist()]) if per_sample
                            else randn_like(x[rows], generator))
                x[rows] = posterior_step(schedule, x[rows], eps[m], coord_to_level(s[m, c]),
                                         coord_to_level(s_new[m, c]), z[m], clamp, eta, x0_var=corr, z_x0=z_x0)
    calls = moves.any(-1).sum(1).expand(B)
    return Traversal(x_prev, x_next, calls, network_calls)


def _noise(x_next: Tensor, x_prev: Tensor, idx: Tensor,
           generators: Sequence[torch.Generator] | None,
           generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Noise ``z`` for the active rows: one draw for the subset, or per sample from its own generator."""
    if generators is None:
        return randn_like(x_next[idx], generator), randn_like(x_prev[idx], generator)
    zs_next, zs_prev = [], []
    for b in idx.tolist():
        zs_next.append(randn_like(x_next[b], generators[b]))
        zs_prev.append(randn_like(x_prev[b], generators[b]))
    return torch.stack(zs_next), torch.stack(zs_prev)
