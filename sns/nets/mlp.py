"""MLP pair denoiser for vector states ``(B, D)`` (ODE systems such as Lorenz-63/96).

Two variants share one residual-MLP backbone (``width`` units, pre-LayerNorm residual
blocks ``h + W2 act(W1 act(LN h) + P c)``, where ``P c`` is the block's projection of a
conditioning vector ``c``):

* **blind** (default, the paper's variant): the network is never told the levels.  The
  *encoder* blocks see only the pair ``[x_{t-1}^{i2}, x_t^{i1}]`` (concatenated, ``2D``
  inputs); two S-way heads at the bottleneck estimate ``i2`` and ``i1``; their softmax
  outputs go through two small MLPs whose sum ``c`` conditions only the *decoder*
  blocks.  ``estimate_levels`` runs the encoder and heads (one network call).
* **explicit**: the levels are given; ``c = E2(i2) + E1(i1)`` with sinusoidal level
  embeddings through small MLPs (:class:`sns.nets.embeddings.LevelEmbedding`)
  conditions *every* block.  The levels are estimated by a separate classifier MLP on
  the raw pair (its own "encoder"), trained by the same cross-entropy terms.

Output: ``eps_prev``, ``eps_next`` (each ``(B, D)``) and ``logits_i2``, ``logits_i1``
(each ``(B, S)``).  Inputs should be normalised to unit scale (the noise is ``N(0, I)``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sns.nets.base import DenoiserOutput, PairDenoiser, deprecated_levels
from sns.nets.embeddings import LevelEmbedding, mlp

__all__ = ["MLPPairDenoiser"]


class _Block(nn.Module):
    """Pre-norm residual block ``h + W2 act(W1 act(LN h) + P c)``; ``(B, W) -> (B, W)``."""

    def __init__(self, width: int, cond_dim: int | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.cond = nn.Linear(cond_dim, width) if cond_dim else None
        self.act = nn.SiLU()

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        u = self.fc1(self.act(self.norm(h)))
        if self.cond is not None:
            u = u + self.cond(c)
        return h + self.fc2(self.act(u))


class MLPPairDenoiser(PairDenoiser):
    """Pair denoiser ``D_theta`` for vector states (see module docstring).

    Args:
        dim: D, the state dimension.
        n_levels: S, the number of noise levels (size of each level head).
        width: hidden units of every block.
        n_enc: residual blocks before the level heads (blind) / first half of the trunk.
        n_dec: residual blocks after the heads (conditioned on the level estimates when blind).
        blind: the paper's blind variant (``True``) or the explicit-level variant.
        cond_dim: width of the conditioning vector ``c``.
        head_width: hidden width of the softmax-to-conditioning MLPs (blind) and of the
            separate level classifier (explicit).
    """

    def __init__(
        self,
        dim: int,
        n_levels: int,
        width: int = 256,
        n_enc: int = 2,
        n_dec: int = 2,
        blind: bool = True,
        cond_dim: int = 64,
        head_width: int = 128,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("n_levels", n_levels), ("width", width),
                            ("cond_dim", cond_dim), ("head_width", head_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPPairDenoiser {name} must be a positive integer, got {value!r}")
        for name, value in (("n_enc", n_enc), ("n_dec", n_dec)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"MLPPairDenoiser {name} must be a non-negative integer, got {value!r}")
        self.n_levels = n_levels
        self.state_shape = (dim,)
        self.blind = blind
        self.inp = nn.Linear(2 * dim, width)
        enc_cond = None if blind else cond_dim
        self.enc = nn.ModuleList(_Block(width, enc_cond) for _ in range(n_enc))
        self.dec = nn.ModuleList(_Block(width, cond_dim) for _ in range(n_dec))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 2 * dim)
        if blind:
            self.head_s2 = nn.Linear(width, n_levels)
            self.head_s1 = nn.Linear(width, n_levels)
            self.cond_s2 = mlp(n_levels, head_width, cond_dim, n_layers=2, final_activation=True)
            self.cond_s1 = mlp(n_levels, head_width, cond_dim, n_layers=2, final_activation=True)
        else:
            self.emb_s2 = LevelEmbedding(cond_dim)
            self.emb_s1 = LevelEmbedding(cond_dim)
            self.classifier = mlp(2 * dim, head_width, head_width, n_layers=3, final_activation=True)
            self.head_s2 = nn.Linear(head_width, n_levels)
            self.head_s1 = nn.Linear(head_width, n_levels)

    def _encode(self, x_prev: Tensor, x_next: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.inp(torch.cat([x_prev, x_next], dim=1))
        for block in self.enc:
            h = block(h, c)
        return h

    def _heads(self, x_prev: Tensor, x_next: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.blind:
            return self.head_s2(h), self.head_s1(h)
        g = self.classifier(torch.cat([x_prev, x_next], dim=1))
        return self.head_s2(g), self.head_s1(g)

    def forward(
        self, x_prev: Tensor, x_next: Tensor, i2: Tensor | None = None, i1: Tensor | None = None,
        **deprecated: Any
    ) -> DenoiserOutput:
        i2, i1 = deprecated_levels(i2, i1, deprecated, "MLPPairDenoiser")
        """``(B, D), (B, D)`` noised pair -> :class:`~sns.nets.base.DenoiserOutput`."""
        self.check_pair(x_prev, x_next)
        if self.blind:
            h = self._encode(x_prev, x_next)
            logits_i2, logits_i1 = self._heads(x_prev, x_next, h)
            c = self.cond_s2(logits_i2.softmax(-1)) + self.cond_s1(logits_i1.softmax(-1))
        else:
            if i2 is None or i1 is None:
                raise ValueError("the explicit MLPPairDenoiser needs the levels i2 and i1 (integer (B,) tensors)")
            for name, s in (("i2", i2), ("i1", i1)):
                if s.shape != (x_prev.shape[0],):
                    raise ValueError(f"{name} must have shape ({x_prev.shape[0]},), got {tuple(s.shape)}")
            c = self.emb_s2(i2) + self.emb_s1(i1)
            h = self._encode(x_prev, x_next, c)
            logits_i2, logits_i1 = self._heads(x_prev, x_next, None)
        for block in self.dec:
            h = block(h, c)
        eps_prev, eps_next = self.out(self.out_norm(h)).chunk(2, dim=1)
        return DenoiserOutput(eps_prev, eps_next, logits_i2, logits_i1)

    def estimate_levels(self, x_prev: Tensor, x_next: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits_i2, logits_i1)``, each ``(B, S)``: encoder + heads only (blind) or the
        separate classifier (explicit)."""
        self.check_pair(x_prev, x_next)
        h = self._encode(x_prev, x_next) if self.blind else None
        return self._heads(x_prev, x_next, h)
