"""Embeddings of noise levels (or times) and small MLP helpers shared by the backbones.

The sinusoidal embedding of Vaswani et al. (2017), as used for diffusion time
steps by Ho et al. (2020, "Denoising Diffusion Probabilistic Models"): a scalar
level ``t`` becomes

    e(t) = [cos(t w_0), ..., cos(t w_{h-1}), sin(t w_0), ..., sin(t w_{h-1})],
    w_k = max_period^(-k / h),  h = dim // 2,

zero-padded by one entry when ``dim`` is odd.  The frequencies span
``[1/max_period, 1]`` geometrically, so integer levels ``0..S-1`` with
``S <= max_period`` get distinct, smoothly varying codes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LevelEmbedding", "mlp", "sinusoidal_embedding"]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of the scalars ``t`` (see module docstring).

    Args:
        t: levels or times, shape ``(B,)``, any real or integer dtype.
        dim: embedding width (>= 1).
        max_period: the longest period ``1 / w_{min}`` of the frequency ladder (> 1).

    Returns:
        ``(B, dim)`` float tensor (float32 unless ``t`` is float64) on ``t``'s device.
    """
    if t.ndim != 1:
        raise ValueError(
            f"sinusoidal_embedding expects t of shape (B,), got shape {tuple(t.shape)}"
        )
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"sinusoidal_embedding dim must be a positive integer, got {dim!r}")
    if not max_period > 1:
        raise ValueError(f"sinusoidal_embedding max_period must be > 1, got {max_period!r}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    k = torch.arange(half, dtype=dtype, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))
    args = t.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    n_layers: int = 2,
    activation: type[nn.Module] = nn.SiLU,
    final_activation: bool = False,
) -> nn.Sequential:
    """A plain MLP ``Linear -> act -> ... -> Linear [-> act]`` with ``n_layers`` linear maps.

    Args:
        in_dim, hidden_dim, out_dim: widths; hidden layers all have ``hidden_dim`` units.
        n_layers: number of ``nn.Linear`` layers (>= 1; 1 means a single affine map).
        activation: activation class placed between linear layers.
        final_activation: also apply the activation after the last layer (used when the
            output feeds further affine maps, e.g. per-block conditioning projections).
    """
    for name, value in (
        ("in_dim", in_dim),
        ("hidden_dim", hidden_dim),
        ("out_dim", out_dim),
        ("n_layers", n_layers),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"mlp {name} must be a positive integer, got {value!r}")
    widths = [in_dim] + [hidden_dim] * (n_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < n_layers - 1 or final_activation:
            layers.append(activation())
    return nn.Sequential(*layers)


class LevelEmbedding(nn.Module):
    """Integer noise level -> conditioning vector: ``MLP(sinusoidal_embedding(s, dim))``.

    The MLP is ``Linear(dim, hidden) -> SiLU -> Linear(hidden, out_dim) -> SiLU`` (the
    trailing activation because the output feeds per-block affine projections).

    Shapes: ``s`` ``(B,)`` (integer or float) -> ``(B, out_dim)``.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        hidden_dim: int | None = None,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        hidden_dim = out_dim if hidden_dim is None else hidden_dim
        self.dim = dim
        self.out_dim = out_dim
        self.max_period = max_period
        self.net = mlp(dim, hidden_dim, out_dim, n_layers=2, final_activation=True)

    def forward(self, s: Tensor) -> Tensor:
        emb = sinusoidal_embedding(s, self.dim, self.max_period)
        return self.net(emb.to(self.net[0].weight.dtype))
