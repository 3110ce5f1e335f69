"""The deterministic residual surrogate ``F(x) = x + f_theta(x)`` (the paper's "Gaussian
approximation" baseline and the proposal of SNS).

A surrogate is a *stepper*: it maps a batch of states ``x_{n-1}`` to ``x_n`` with the
same shape (fields ``(B, C, H, W)``, vector states ``(B, D)``), so it plugs into
:func:`sns.rollout.rollout` and into :class:`sns.refine.SNSRefiner` directly.

Training (see :class:`sns.training.SurrogateModule`) regresses the *increment*
``f_theta(x_{n-1}) ~ x_n - x_{n-1}`` (MSE).  The last layer of ``f_theta`` is zero
initialised, so an untrained surrogate is exactly the identity (persistence), the
natural starting point for small time steps.

Reference: Liu, Zanna & Bruna (arXiv:2603.17750), baseline "Gaussian approximation":
residual U-Net, width 64, multipliers (2, 2, 2), 2 blocks, no attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ResidualSurrogate", "VectorMLP", "last_layer"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "relu": nn.ReLU}


def last_layer(net: nn.Module) -> nn.Module:
    """The last registered ``nn.Linear`` / ``nn.Conv*d`` of ``net`` (its output layer for
    :class:`VectorMLP` and :class:`sns.nets.unet.UNet`, whose output conv is registered last)."""
    found = None
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            found = m
    if found is None:
        raise ValueError(f"{type(net).__name__} has no Linear or Conv layer to zero-initialise")
    return found


class VectorMLP(nn.Module):
    """Plain MLP ``(B, D) -> (B, D)`` for vector states: ``n_layers`` linear maps of
    ``width`` hidden units with ``activation`` in between.

    Args:
        dim: D, the state dimension (input and output width).
        width: hidden units.
        n_layers: number of linear maps (>= 2).
        activation: one of ``silu``, ``gelu``, ``tanh``, ``relu``.
    """

    def __init__(self, dim: int, width: int = 128, n_layers: int = 3, activation: str = "silu") -> None:
        super().__init__()
        for name, value in (("dim", dim), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VectorMLP {name} must be a positive integer, got {value!r}")
        if not isinstance(n_layers, int) or n_layers < 2:
            raise ValueError(f"VectorMLP n_layers must be an integer >= 2, got {n_layers!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid choices: {sorted(_ACTIVATIONS)}")
        widths = [dim] + [width] * (n_layers - 1) + [dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < n_layers - 1:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"VectorMLP expects states of shape (B, {self.dim}), got {tuple(x.shape)}")
        return self.net(x)


class ResidualSurrogate(nn.Module):
    """Stepper ``x_n = x_{n-1} + f_theta(x_{n-1})`` around any shape-preserving ``net``.

    Args:
        net: ``f_theta``, a module mapping ``(B, *state_shape)`` to the same shape
            (e.g. :class:`sns.nets.unet.UNet` with ``in_channels == out_channels`` for
            fields, :class:`VectorMLP` for vectors).
        zero_init: zero the weights and bias of the last layer of ``net`` (see
            :func:`last_layer`), so the untrained surrogate is the identity.
        state_shape: optional ``(C, H, W)`` / ``(D,)`` recorded for users and checks.
        conserve_mean: remove the spatial mean (over the last two axes, per channel) of the
            increment, so every step conserves each channel's spatial mean exactly.  For
            systems that conserve it (the vorticity of Kolmogorov flow and QG's eddy PV have
            zero domain mean, constant in normalised units too), this removes a drift a
            minutes-trained surrogate otherwise accumulates step by step.  Field states only.
    """

    def __init__(self, net: nn.Module, zero_init: bool = True, state_shape: Sequence[int] | None = None,
                 conserve_mean: bool = False) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        self.net = net
        self.conserve_mean = bool(conserve_mean)
        self.state_shape = tuple(state_shape) if state_shape is not None else None
        if zero_init:
            layer = last_layer(net)
            with torch.no_grad():
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()

    def increment(self, x: Tensor) -> Tensor:
        """``f_theta(x) ~ x_n - x_{n-1}``, shape of ``x``."""
        dx = self.net(x)
        if dx.shape != x.shape:
            raise ValueError(
                f"ResidualSurrogate: net maps {tuple(x.shape)} to {tuple(dx.shape)}; it must preserve the shape"
            )
        if self.conserve_mean:
            if dx.ndim < 4:
                raise ValueError(f"conserve_mean needs field states (B, C, H, W), got {tuple(x.shape)}")
            dx = dx - dx.mean(dim=(-2, -1), keepdim=True)
        return dx

    def forward(self, x: Tensor) -> Tensor:
        """One step ``(B, *state_shape) -> (B, *state_shape)``."""
        return x + self.increment(x)
