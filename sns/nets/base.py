"""The pair-denoiser interface shared by every backbone.

A pair denoiser ``D_theta`` sees the independently noised pair
``(x_{t-1}^{s2}, x_t^{s1})`` (each of shape ``(B, C, *spatial)``, or ``(B, D)``
for vector states) and returns

* ``eps_prev``: the predicted noise on ``x_{t-1}^{s2}`` (same shape as the state),
* ``eps_next``: the predicted noise on ``x_t^{s1}``,
* ``logits_s2``, ``logits_s1``: S-way logits estimating the two noise levels
  from the input alone (``(B, S)``).

*Blind* denoisers (the paper's variant) are never told the levels: ``s2`` and
``s1`` passed to ``forward`` are ignored.  *Explicit* denoisers require them
(integer tensors of shape ``(B,)``) and embed them into every block; they
estimate levels with a separate head.  ``estimate_levels`` runs only the part of
the network needed for the level logits (one "network call" in cost counts).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class DenoiserOutput:
    eps_prev: Tensor  #: predicted noise on x_{t-1}^{s2}, shape of the state
    eps_next: Tensor  #: predicted noise on x_t^{s1}, shape of the state
    logits_s2: Tensor  #: (B, S) logits of the level on x_{t-1}
    logits_s1: Tensor  #: (B, S) logits of the level on x_t


class PairDenoiser(nn.Module):
    """Base class: subclasses set the attributes below and implement both methods."""

    n_levels: int  #: S, the number of discrete noise levels
    state_shape: tuple[int, ...]  #: shape of one state without batch: (C, H, W) or (D,)
    blind: bool  #: True if the levels given to ``forward`` are ignored

    def forward(
        self, x_prev: Tensor, x_next: Tensor, s2: Tensor | None = None, s1: Tensor | None = None
    ) -> DenoiserOutput:
        raise NotImplementedError  # abstract

    def estimate_levels(self, x_prev: Tensor, x_next: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits_s2, logits_s1)``, each ``(B, S)``, from the raw pair."""
        raise NotImplementedError  # abstract

    def check_pair(self, x_prev: Tensor, x_next: Tensor) -> None:
        """Raise ``ValueError`` naming the shapes if the pair does not fit this denoiser."""
        want = tuple(self.state_shape)
        for name, x in (("x_prev", x_prev), ("x_next", x_next)):
            if tuple(x.shape[1:]) != want:
                raise ValueError(
                    f"{type(self).__name__} expects states of shape (B, {', '.join(map(str, want))}),"
                    f" got {name} of shape {tuple(x.shape)}"
                )
        if x_prev.shape[0] != x_next.shape[0]:
            raise ValueError(f"batch sizes differ: x_prev {x_prev.shape[0]}, x_next {x_next.shape[0]}")
