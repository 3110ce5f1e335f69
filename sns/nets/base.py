"""The pair-denoiser interface shared by every backbone.

A pair denoiser ``D_theta`` sees the independently noised pair
``(x_{t-1}^{i2}, x_t^{i1})`` (each of shape ``(B, C, *spatial)``, or ``(B, D)``
for vector states; ``i2``, ``i1`` are 0-based table levels, :mod:`sns.diffusion.schedules`)
and returns

* ``eps_prev``: the predicted noise on ``x_{t-1}^{i2}`` (same shape as the state),
* ``eps_next``: the predicted noise on ``x_t^{i1}``,
* ``logits_i2``, ``logits_i1``: S-way logits estimating the two noise levels
  from the input alone (``(B, S)``).

*Blind* denoisers (the paper's variant) are never told the levels: ``i2`` and
``i1`` passed to ``forward`` are ignored.  *Explicit* denoisers require them
(integer tensors of shape ``(B,)``) and embed them into every block; they
estimate levels with a separate head.  ``estimate_levels`` runs only the part of
the network needed for the level logits (one "network call" in cost counts).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

#: Names: ``i1, i2`` are 0-based table levels (here and in noising, the loss, the nets and the
#: refiner); ``s1, s2`` are only the paper's 1-based phase-space coordinates of
#: :mod:`sns.diffusion.paths` (``s = i + 1``, :func:`sns.diffusion.paths.level_to_coord`).
#: Until sns 0.3 the nets' keywords ``s2=``/``s1=`` and the fields ``logits_s2``/``logits_s1``
#: are accepted with a ``DeprecationWarning``.  (Submodule names such as ``head_s2`` / ``emb_s1``
#: stay: they are the keys of every exported weight file.)


def deprecated_levels(i2: Tensor | None, i1: Tensor | None, old: dict[str, Any], owner: str) -> tuple[Any, Any]:
    """``(i2, i1)`` with the deprecated keywords ``s2``/``s1`` of ``old`` mapped onto them."""
    unknown = sorted(set(old) - {"s2", "s1"})
    if unknown:
        raise TypeError(f"{owner}.forward() got unexpected keyword argument(s) {unknown}")
    for new, key in (("i2", "s2"), ("i1", "s1")):
        if key in old:
            warnings.warn(f"{owner}.forward({key}=...) is deprecated: the table level is {new}= "
                          "(s1, s2 are the 1-based phase-space coordinates of sns.diffusion.paths)",
                          DeprecationWarning, stacklevel=3)
            if (i2 if new == "i2" else i1) is not None:
                raise TypeError(f"{owner}.forward() got both {new}= and its deprecated name {key}=")
    return (old.get("s2", i2), old.get("s1", i1))


@dataclass
class DenoiserOutput:
    eps_prev: Tensor  #: predicted noise on x_{t-1}^{i2}, shape of the state
    eps_next: Tensor  #: predicted noise on x_t^{i1}, shape of the state
    logits_i2: Tensor  #: (B, S) logits of the table level of x_{t-1}
    logits_i1: Tensor  #: (B, S) logits of the table level of x_t

    @property
    def logits_s2(self) -> Tensor:
        """Deprecated name of :attr:`logits_i2`."""
        warnings.warn("DenoiserOutput.logits_s2 is deprecated: use logits_i2", DeprecationWarning, stacklevel=2)
        return self.logits_i2

    @property
    def logits_s1(self) -> Tensor:
        """Deprecated name of :attr:`logits_i1`."""
        warnings.warn("DenoiserOutput.logits_s1 is deprecated: use logits_i1", DeprecationWarning, stacklevel=2)
        return self.logits_i1


class PairDenoiser(nn.Module):
    """Base class: subclasses set the attributes below and implement both methods."""

    n_levels: int  #: S, the number of discrete noise levels
    state_shape: tuple[int, ...]  #: shape of one state without batch: (C, H, W) or (D,)
    blind: bool  #: True if the levels given to ``forward`` are ignored

    def forward(
        self, x_prev: Tensor, x_next: Tensor, i2: Tensor | None = None, i1: Tensor | None = None, **deprecated: Any
    ) -> DenoiserOutput:
        raise NotImplementedError  # abstract

    def estimate_levels(self, x_prev: Tensor, x_next: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits_i2, logits_i1)``, each ``(B, S)``, from the raw pair."""
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
