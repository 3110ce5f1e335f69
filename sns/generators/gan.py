"""GAN with an adversarial divergence discriminator (seed 000's second generator).

The seed asks for a generator of trajectory windows and a discriminator that judges real against
generated windows *on divergence features* (the local phase-space volume expansion rate along
the window, estimated by the same estimator on both) as well as on the raw window, with the plain
GAN (raw window only) as the control.

**Generator: autoregressive.** ``x_{k+1} = x_k + g(x_k, z_k)``, ``z_k ~ N(0, I)`` fresh at every
step, ``g`` a residual MLP of the normalised state and the noise (:class:`StepGenerator`).  A
window is the unroll of ``window - 1`` steps from a real initial state.  Why not a whole-window
generator: a trace generator is asked for traces of any length from any initial state; a
whole-window generator makes windows of the training length only, and stitching windows leaves
seams that no discriminator of single windows sees.  The unroll is differentiated end to end,
so the discriminator's judgement of the window (its multi-step statistics, its divergence
features) reaches every step.  The cost is the usual one of autoregressive models: errors
compound beyond the training window, which is why the validation of a GAN measures long traces
(:func:`coverage_report`), not windows.

**Supervised term.**  As in TimeGAN (Yoon et al. 2019), the generator also minimises the
one-step error on real pairs, ``supervised * E |x_k + g(x_k, z) - x_{k+1}|^2`` (normalised
units): the adversarial signal alone is weak and slow for a small dynamical model, and without
it the step map wanders early in training.  Both GANs (plain and divergence) use the same term,
so the comparison isolates the discriminator's features.

**Divergence features** (:func:`window_divergence`): at every pair ``(x_j, x_{j+1})`` of every
window, the one-frame map is fitted by ridge least squares on the ``k`` nearest pairs of the
*other* windows of the batch, and the feature is ``log |det M| / dt``, the volume expansion rate
of the fitted flow map: a local estimate of the divergence of the vector field.  For a linear
flow sampled exactly it is ``tr A`` (tested); on Lorenz-63 its median is within 3% of the true
-13.67.  The *same* estimator runs on real and on generated batches, so matching its
distribution constrains the generator's volume expansion.  The features are centred and scaled
by their median and interquartile spread over real training batches and softly clipped
(``3 tanh(f / 3)``: the estimate has heavy tails) before the discriminator sees them.

**Stabiliser: spectral normalisation** (Miyato et al. 2018) of every linear layer of the
discriminator, with the hinge loss.  Chosen over a gradient penalty because the penalty needs a
second backward pass through the discriminator *and* through the least-squares features (linear
solves and log-determinants at every pair), about 2-3x the cost of a step, while spectral
normalisation costs one power iteration per layer; it bounds the Lipschitz constant of the
discriminator in its inputs (the window and the standardised features).  Adam with
``betas = (0.5, 0.9)``, the usual GAN setting.

**Mode collapse is reported, not hidden** (:func:`coverage_report`): the reference states are
clustered (k-means, ``n_clusters``), and a long generated trace must visit the clusters with the
reference's frequencies: ``coverage`` is the fraction of clusters the traces visit at least at a
tenth of their reference frequency, ``occupancy_tv`` the total-variation distance between the
two occupation histograms, and ``w1`` the per-coordinate Wasserstein-1 distances of the
marginals.  ``collapsed`` is ``coverage < 0.75`` (on Lorenz-63 a trace stuck in one lobe visits
about half the clusters).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "StepGenerator",
    "WindowDiscriminator",
    "WindowGAN",
    "coverage_report",
    "window_divergence",
]


def window_divergence(windows: Tensor, dt: float, k: int = 16, ridge: float = 1e-5) -> Tensor:
    """Local volume expansion rate at every pair of a batch of windows ``(B, L, D) -> (B, L - 1)``.

    For each pair ``(x_j, x_{j+1})`` of every window, the one-frame map is fitted on its ``k``
    nearest pairs (Euclidean distance of ``x``) taken from the *other* windows of the batch,
    ``x'_{n+1} - m_+ = M (x'_n - m)`` (``m``, ``m_+`` the neighbours' means), by least squares
    with a ridge ``lambda |M - I|^2``, ``lambda = ridge * tr(Xc^T Xc) / D``; the estimate is
    ``log |det M| / dt``, the volume expansion rate of the fitted flow map.  Neighbours from the
    pair's own window are excluded: along one trajectory the states lie near a curve and the
    directions across it are not excited (a fit along the trajectory alone reads Lorenz-63's
    divergence -13.7 as -4 to -6 at frames of 0.05).  For a linear flow ``dx/dt = A x`` sampled
    exactly the estimate is ``tr A`` (tested); on Lorenz-63 (frames 0.05, 128 windows of 16, k 16)
    the median is -13.3 (truth -13.67) with a wide spread (std ~14): it is a noisy local estimate,
    which is why the discriminator sees it per pair and standardised.  Differentiable (linear solves
    and ``slogdet``), so the generator's gradient sees it.  Needs ``B >= 2`` and ``k <= (B - 1)(L - 1)``.
    """
    if windows.ndim != 3:
        raise ValueError(f"windows must have shape (B, L, D), got {tuple(windows.shape)}")
    B, L, D = windows.shape
    if B < 2 or L < 2:
        raise ValueError(f"need at least 2 windows of at least 2 frames, got shape {tuple(windows.shape)}")
    if not 1 <= k <= (B - 1) * (L - 1):
        raise ValueError(f"k must be in [1, {(B - 1) * (L - 1)}] for {B} windows of {L} frames, got {k}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x, y = windows[:, :-1].reshape(-1, D), windows[:, 1:].reshape(-1, D)
    win = torch.arange(B, device=windows.device).repeat_interleave(L - 1)
    with torch.no_grad():  # the neighbour sets are a selection, not differentiated
        d2 = torch.cdist(x.detach(), x.detach()).masked_fill(win[:, None] == win[None, :], float("inf"))
        idx = d2.topk(k, largest=False).indices  # (n, k)
    xn, yn = x[idx], y[idx]  # (n, k, D)
    xc, yc = xn - xn.mean(1, keepdim=True), yn - yn.mean(1, keepdim=True)
    gram = xc.transpose(1, 2) @ xc
    eye = torch.eye(D, dtype=windows.dtype, device=windows.device)
    spread = gram.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] / D
    fi = torch.finfo(windows.dtype)  # floors keep a degenerate neighbour set (e.g. a collapsed generator) solvable
    lam = (ridge + fi.eps) * spread + fi.tiny ** 0.5
    mt = torch.linalg.solve(gram + lam * eye, xc.transpose(1, 2) @ yc + lam * eye)  # M^T
    return (torch.linalg.slogdet(mt).logabsdet / dt).reshape(B, L - 1)


class StepGenerator(nn.Module):
    """``x -> x + g(x, z)``: a residual MLP step of the normalised state with fresh noise ``z``."""

    def __init__(self, dim: int, noise_dim: int | None = None, hidden: int = 64, depth: int = 3) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be >= 1, got {dim}, {hidden}, {depth}")
        self.hparams = {"dim": int(dim), "noise_dim": int(noise_dim if noise_dim is not None else dim),
                        "hidden": int(hidden), "depth": int(depth)}
        layers: list[nn.Module] = []
        width = dim + self.hparams["noise_dim"]
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        nn.init.zeros_(layers[-1].weight), nn.init.zeros_(layers[-1].bias)  # starts as persistence
        self.net = nn.Sequential(*layers)

    @property
    def noise_dim(self) -> int:
        return self.hparams["noise_dim"]

    def forward(self, x: Tensor, z: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        if z is None:
            z = torch.randn(x.shape[0], self.noise_dim, dtype=x.dtype, device=x.device, generator=generator)
        return x + self.net(torch.cat([x, z], -1))

    def unroll(self, x0: Tensor, n_steps: int, generator: torch.Generator | None = None) -> Tensor:
        """``(B, n_steps + 1, D)``: ``x0`` and ``n_steps`` generated steps."""
        out = [x0]
        for _ in range(n_steps):
            out.append(self(out[-1], generator=generator))
        return torch.stack(out, 1)


class WindowDiscriminator(nn.Module):
    """Hinge-loss critic of windows ``(B, L, D)``: spectrally normalised MLP of the flattened window
    and, with ``n_features > 0``, of ``n_features`` standardised divergence features."""

    def __init__(self, window: int, dim: int, n_features: int = 0, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.hparams = {"window": int(window), "dim": int(dim), "n_features": int(n_features),
                        "hidden": int(hidden), "depth": int(depth)}
        layers: list[nn.Module] = []
        width = window * dim + n_features
        for _ in range(depth):
            layers += [spectral_norm(nn.Linear(width, hidden)), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(spectral_norm(nn.Linear(width, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, windows: Tensor, features: Tensor | None = None) -> Tensor:
        x = windows.flatten(1)
        if self.hparams["n_features"]:
            if features is None:
                raise ValueError("this discriminator judges divergence features: pass them")
            x = torch.cat([x, features], -1)
        return self.net(x).squeeze(-1)


def _as_trajectories(data: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(np.asarray(data) if not isinstance(data, Tensor) else data)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"trajectories must have shape (N, T, D) or (T, D), got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"trajectories must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("trajectories contain NaN or inf")
    return x.to(torch.float64)


@dataclass
class GANHistory:
    """Per-logging-interval training curves (means over the interval)."""

    step: list[int] = field(default_factory=list)
    loss_d: list[float] = field(default_factory=list)
    loss_g: list[float] = field(default_factory=list)
    supervised: list[float] = field(default_factory=list)
    wall_s: float = 0.0


class WindowGAN:
    """A trained autoregressive window GAN: normalisation, generator, discriminator, settings.

    Build with :meth:`fit`; generate traces with :meth:`generate` (physical units in and out);
    :meth:`save` / :meth:`load` round-trip through ``torch.save`` of plain containers
    (``weights_only=True`` reads them).
    """

    def __init__(self, generator: StepGenerator, discriminator: WindowDiscriminator, mean: Tensor, std: Tensor,
                 frame_dt: float, window: int, k: int, divergence_features: bool,
                 feature_mean: Tensor | None = None, feature_std: Tensor | None = None, ridge: float = 1e-5) -> None:
        self.generator, self.discriminator = generator, discriminator
        self.mean, self.std = mean.to(torch.float64), std.to(torch.float64)
        self.frame_dt, self.window, self.k = float(frame_dt), int(window), int(k)
        self.divergence_features, self.ridge = bool(divergence_features), float(ridge)
        self.feature_mean, self.feature_std = feature_mean, feature_std

    # ---- features

    def features(self, windows_n: Tensor) -> Tensor | None:
        """Standardised divergence features of normalised windows, or ``None`` for the plain GAN."""
        if not self.divergence_features:
            return None
        f = window_divergence(windows_n * self.std.to(windows_n.dtype), self.frame_dt, self.k, self.ridge)
        f = (f - self.feature_mean.to(f.dtype)) / self.feature_std.to(f.dtype)
        return 3.0 * torch.tanh(f / 3.0)  # heavy tails: a soft clip at 3 robust spreads

    # ---- training

    @classmethod
    def fit(cls, trajectories: Tensor | np.ndarray, frame_dt: float, *, window: int = 16,
            divergence_features: bool = True, k: int = 16, ridge: float = 1e-5, steps: int = 2000,
            batch: int = 128, lr: float = 5e-4, supervised: float = 10.0, hidden_g: int = 64,
            hidden_d: int = 128, noise_dim: int | None = None, n_critic: int = 1, seed: int = 0,
            log_every: int = 100, progress: Callable[[int, int], None] | None = None) -> tuple[WindowGAN, GANHistory]:
        """Train on every window of ``window`` frames of ``trajectories`` ``(N, T, D)``
        (physical units, frames every ``frame_dt``).

        ``divergence_features=False`` is the plain GAN (the control).  ``n_critic``
        discriminator updates per generator update.  Seeded: initial weights, batches and noise.
        """
        import time

        x = _as_trajectories(trajectories)
        _, T, D = x.shape
        if not frame_dt > 0:
            raise ValueError(f"frame_dt must be > 0, got {frame_dt}")
        if not 3 <= window <= T:
            raise ValueError(f"window must be in [3, trajectory length {T}], got {window}")
        if divergence_features and not 1 <= k <= (batch - 1) * (window - 1):
            raise ValueError(f"k must be in [1, (batch - 1) * (window - 1) = {(batch - 1) * (window - 1)}], got {k}")
        for name, v in (("steps", steps), ("batch", batch), ("n_critic", n_critic), ("log_every", log_every)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if supervised < 0:
            raise ValueError(f"supervised must be >= 0, got {supervised}")
        flat = x.reshape(-1, D)
        mean, std = flat.mean(0), flat.std(0)
        if not (std > 0).all():
            raise ValueError(f"a coordinate of the trajectories is constant (std {std.tolist()})")
        xn = ((x - mean) / std).to(torch.float32)
        wins = xn.unfold(1, window, 1).permute(0, 1, 3, 2).reshape(-1, window, D).contiguous()
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        n_feat = window - 1 if divergence_features else 0
        gen = StepGenerator(D, noise_dim, hidden_g)
        disc = WindowDiscriminator(window, D, n_feat, hidden_d)
        fmean = fstd = None
        if divergence_features:
            with torch.no_grad():  # robust centre and spread over real batches of the training size
                f = torch.cat([window_divergence(wins[torch.randint(len(wins), (batch,), generator=g)].double()
                                                 * std, frame_dt, k, ridge).reshape(-1) for _ in range(8)])
            q1, q2, q3 = torch.quantile(f, torch.tensor([0.25, 0.5, 0.75], dtype=f.dtype))
            fmean, fstd = q2.float(), ((q3 - q1) / 1.349).clamp_min(1e-8).float()
        gan = cls(gen, disc, mean, std, frame_dt, window, k, divergence_features, fmean, fstd, ridge)
        opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
        hist, acc = GANHistory(), {"d": 0.0, "g": 0.0, "s": 0.0, "n": 0}
        t0 = time.perf_counter()
        for it in range(1, steps + 1):
            for _ in range(n_critic):
                real = wins[torch.randint(len(wins), (batch,), generator=g)]
                with torch.no_grad():
                    fake = gen.unroll(real[:, 0], window - 1, generator=g)
                loss_d = (torch.relu(1 - disc(real, gan.features(real))).mean()
                          + torch.relu(1 + disc(fake, gan.features(fake))).mean())
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            real = wins[torch.randint(len(wins), (batch,), generator=g)]
            fake = gen.unroll(real[:, 0], window - 1, generator=g)
            adv = -disc(fake, gan.features(fake)).mean()
            prev, nxt = real[:, :-1].reshape(-1, D), real[:, 1:].reshape(-1, D)
            sup = ((gen(prev, generator=g) - nxt) ** 2).mean()
            loss_g = adv + supervised * sup
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            acc["d"] += float(loss_d.detach())
            acc["g"] += float(adv.detach())
            acc["s"] += float(sup.detach())
            acc["n"] += 1
            if it % log_every == 0 or it == steps:
                hist.step.append(it)
                hist.loss_d.append(acc["d"] / acc["n"]), hist.loss_g.append(acc["g"] / acc["n"])
                hist.supervised.append(acc["s"] / acc["n"])
                acc = {"d": 0.0, "g": 0.0, "s": 0.0, "n": 0}
            if progress is not None:
                progress(it, steps)
        hist.wall_s = time.perf_counter() - t0
        gen.eval(), disc.eval()
        return gan, hist

    # ---- generation

    @torch.no_grad()
    def generate(self, x0: Tensor | np.ndarray, n_frames: int, seed: int = 0) -> Tensor:
        """Traces ``(M, n_frames, D)`` in physical units from initial states ``x0`` ``(M, D)``
        (the first frame is ``x0``).  A trace that leaves the finite numbers keeps NaN from then on."""
        x = torch.as_tensor(np.asarray(x0) if not isinstance(x0, Tensor) else x0).to(torch.float64)
        D = self.mean.numel()
        if x.ndim != 2 or x.shape[1] != D:
            raise ValueError(f"x0 must have shape (M, {D}), got {tuple(x.shape)}")
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        g = torch.Generator().manual_seed(seed)
        cur = ((x - self.mean) / self.std).to(torch.float32)
        out = torch.empty(x.shape[0], n_frames, D, dtype=torch.float32)
        out[:, 0] = cur
        for k in range(1, n_frames):
            cur = self.generator(cur, generator=g)
            out[:, k] = cur
        return out.double() * self.std + self.mean

    # ---- persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only (``torch.load(weights_only=True)`` reads it)."""
        return {"generator_hparams": dict(self.generator.hparams), "generator": self.generator.state_dict(),
                "discriminator_hparams": dict(self.discriminator.hparams),
                "discriminator": self.discriminator.state_dict(), "mean": self.mean, "std": self.std,
                "frame_dt": self.frame_dt, "window": self.window, "k": self.k,
                "divergence_features": self.divergence_features, "ridge": self.ridge,
                "feature_mean": self.feature_mean, "feature_std": self.feature_std}

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic write of :meth:`state_dict` (:func:`sns.generators._io.save_state`)."""
        from sns.generators._io import save_state

        return save_state(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WindowGAN:
        from sns.generators._io import load_state

        sd = load_state(path)
        gen = StepGenerator(**sd["generator_hparams"])
        gen.load_state_dict(sd["generator"])
        disc = WindowDiscriminator(**sd["discriminator_hparams"])
        disc.load_state_dict(sd["discriminator"])
        gen.eval(), disc.eval()
        return cls(gen, disc, sd["mean"], sd["std"], sd["frame_dt"], sd["window"], sd["k"],
                   sd["divergence_features"], sd["feature_mean"], sd["feature_std"], sd["ridge"])


def coverage_report(generated: Tensor | np.ndarray, reference: Tensor | np.ndarray, n_clusters: int = 16,
                    seed: int = 0, max_points: int = 20_000) -> dict[str, Any]:
    """Mode-collapse report of generated states against reference states (both ``(..., D)``).

    k-means (scipy's ``kmeans2``, ``++`` init, seeded) on at most ``max_points`` reference
    states; each state is assigned to its nearest centre.  Returns ``coverage`` (fraction of
    clusters that the generated states visit at >= 1/10 of the reference frequency),
    ``occupancy_tv`` (total-variation distance of the two occupation histograms, 0..1),
    ``w1`` (per-coordinate Wasserstein-1 of the marginals, physical units), ``nonfinite``
    (fraction of generated states that are NaN/inf, left out of the rest) and ``collapsed``
    (``coverage < 0.75`` or more than half the states non-finite).
    """
    from scipy.cluster.vq import kmeans2, vq

    from sns.metrics import wasserstein1_per_coordinate

    gen = np.asarray(generated, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if gen.shape[-1] != ref.shape[-1]:
        raise ValueError(f"generated and reference states differ in dimension: {gen.shape[-1]} vs {ref.shape[-1]}")
    gen, ref = gen.reshape(-1, gen.shape[-1]), ref.reshape(-1, ref.shape[-1])
    if n_clusters < 2:
        raise ValueError(f"n_clusters must be >= 2, got {n_clusters}")
    ok = np.isfinite(gen).all(-1)
    nonfinite = float(1.0 - ok.mean()) if len(gen) else 1.0
    gen = gen[ok]
    rng = np.random.default_rng(seed)
    sub = ref[rng.choice(len(ref), min(len(ref), max_points), replace=False)]
    mu, sd = sub.mean(0), sub.std(0) + 1e-12
    centres, _ = kmeans2((sub - mu) / sd, n_clusters, minit="++", seed=seed)
    p_ref = np.bincount(vq((sub - mu) / sd, centres)[0], minlength=n_clusters) / len(sub)
    if len(gen) == 0:
        return {"coverage": 0.0, "occupancy_tv": 1.0, "w1": [math.nan] * ref.shape[-1], "nonfinite": nonfinite,
                "collapsed": True}
    g = gen[rng.choice(len(gen), min(len(gen), max_points), replace=False)]
    p_gen = np.bincount(vq((g - mu) / sd, centres)[0], minlength=n_clusters) / len(g)
    live = p_ref > 0
    coverage = float(np.mean(p_gen[live] >= 0.1 * p_ref[live]))
    return {"coverage": coverage, "occupancy_tv": float(0.5 * np.abs(p_gen - p_ref).sum()),
            "w1": [float(v) for v in wasserstein1_per_coordinate(g, sub)], "nonfinite": nonfinite,
            "collapsed": bool(coverage < 0.75 or nonfinite > 0.5)}
