"""Periodic U-Nets: the SNS pair denoiser (blind and explicit) and a plain conditional U-Net.

Every convolution pads circularly, so on a doubly periodic grid the networks are
translation equivariant: rolling the input by ``(a, b)`` pixels with ``a, b``
multiples of the total stride ``2^(L-1)`` (``L = len(dim_mults)`` levels) rolls
every output field by the same amount and leaves the level logits unchanged.
The pieces that make this exact are

* ``Downsample``: 3x3 convolution with stride 2 and circular padding;
* ``Upsample``: nearest-neighbour doubling then a circular 3x3 convolution (the
  reference code's ``ConvTranspose2d`` is zero padded at the borders, hence not periodic);
* ``GroupNorm`` (spatial statistics are shift invariant), global self-attention
  without positional encoding (permutation equivariant);
* ``LevelHead``: mean and standard-deviation pooling over space before the MLP
  (the reference flattens the bottleneck into a linear layer, which is not shift
  invariant).

Topology (as in the authors' code, github QiLiu6/SNS ``CT/Models/Unet.py``, a
DDPM-style U-Net): a 3x3 stem to ``dim`` channels; level ``i`` has
``n_blocks`` residual blocks at ``C_i = dim * prod(dim_mults[:i+1])`` channels
(**cumulative** multipliers: ``dim=64, dim_mults=(2, 2, 2)`` gives 128, 256, 512),
optionally followed by self-attention, then a ``Downsample`` except after the
last level; a middle block ``res -> [attn] -> res``; the decoder mirrors it with
``n_blocks + 1`` blocks per level, each concatenating one skip connection, the
last one reducing to the next finer width, and ``Upsample`` between levels; a
``GroupNorm -> SiLU -> conv3x3`` output layer.

Residual block with an optional conditioning vector ``c`` (shape ``(B, E)``):

    h = conv1(SiLU(GN(x))) + W1 c          (added per channel)
    h = conv2(Dropout(SiLU(GN(h)))) + W2 c
    out = h + skip(x)                       (skip = 1x1 conv if widths differ)

Pair denoisers (``sns.nets.base.PairDenoiser``) see ``cat(x_prev, x_next)``
on channels, ``(B, 2C, H, W)``, and return the noise for both states.

* ``BlindPairUNet`` (the paper's variant): the encoder sees only the pair; two
  S-way ``LevelHead`` s at the bottleneck give ``logits_i2, logits_i1``; the
  softmax of each goes through an MLP ``Linear(S, E) -> SiLU -> Linear(E, E) -> SiLU``
  and the concatenation ``c = [m2(p2), m1(p1)]`` conditions only the decoder blocks.
* ``ExplicitPairUNet``: ``c = [emb(i2), emb(i1)]`` (sinusoidal embedding + MLP)
  conditions every block; a separate small encoder with two heads estimates the
  levels from the raw pair.

Differences from the reference code, on purpose: GroupNorm and SiLU in every block
(the paper runs had no normalisation and GELU), periodic upsampling and pooled
heads (for exact shift equivariance, see above), one linear map on the
concatenated embeddings instead of two summed maps with an activation in between,
and no third clean "long-lag" input channel.  Parameter counts of the
``paper-*`` configurations stay within 5% of the reference (79.25M Kolmogorov,
238.5M QG; see ``unet_config``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sns.nets.base import DenoiserOutput, PairDenoiser, deprecated_levels
from sns.nets.embeddings import LevelEmbedding, mlp

__all__ = [
    "UNET_CONFIG_NAMES",
    "BlindPairUNet",
    "Downsample",
    "ExplicitPairUNet",
    "LevelEstimator",
    "LevelHead",
    "ResBlock",
    "SelfAttention2d",
    "UNet",
    "UNetDecoder",
    "UNetEncoder",
    "Upsample",
    "periodic_conv",
    "surrogate_unet_config",
    "unet_config",
]


# ----------------------------------------------------------------------------- building blocks


def periodic_conv(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
) -> nn.Conv2d:
    """``nn.Conv2d`` with circular ("periodic") padding ``kernel_size // 2`` on both axes."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        padding_mode="circular",
    )


def _group_norm(channels: int, norm_groups: int) -> nn.GroupNorm:
    """GroupNorm with ``gcd(channels, norm_groups)`` groups (so any width is valid)."""
    return nn.GroupNorm(math.gcd(channels, norm_groups), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block with per-channel additive conditioning (module docstring).

    Shapes: ``x`` ``(B, in_channels, H, W)``, ``cond`` ``(B, cond_dim)``
    -> ``(B, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int | None = None,
        norm_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.norm1 = _group_norm(in_channels, norm_groups)
        self.conv1 = periodic_conv(in_channels, out_channels)
        self.norm2 = _group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = periodic_conv(out_channels, out_channels)
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )
        if cond_dim is not None:
            self.cond1 = nn.Linear(cond_dim, out_channels)  # W1: added after conv1
            self.cond2 = nn.Linear(cond_dim, out_channels)  # W2: added after conv2

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.cond_dim is not None:
            h = h + self.cond1(cond)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.cond_dim is not None:
            h = h + self.cond2(cond)[:, :, None, None]
        return h + self.skip(x)


class SelfAttention2d(nn.Module):
    """Global multi-head self-attention over the ``H*W`` positions, pre-norm, residual.

    ``out = x + W_o softmax(Q K^T / sqrt(d)) V`` with ``Q, K, V = W_qkv GN(x)`` per position,
    ``d = channels / n_heads``.  No positional encoding: permutation (hence shift) equivariant.
    """

    def __init__(self, channels: int, n_heads: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"attention channels {channels} not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.norm = _group_norm(channels, norm_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (
            self.qkv(tokens)
            .view(b, h * w, 3, self.n_heads, c // self.n_heads)
            .permute(2, 0, 3, 1, 4)
        )
        att = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        att = att.transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(att).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Halve the resolution: circular 3x3 conv, stride 2. ``(B, C, H, W) -> (B, C, H/2, W/2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = periodic_conv(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Upsample x2: nearest, then circular 3x3 conv. ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = periodic_conv(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    """A residual block optionally followed by self-attention (one U-Net "block")."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        attention: bool,
        cond_dim: int | None,
        attn_heads: int,
        norm_groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, cond_dim, norm_groups, dropout)
        self.attn = SelfAttention2d(out_channels, attn_heads, norm_groups) if attention else None

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        x = self.res(x, cond)
        return x if self.attn is None else self.attn(x)


class LevelHead(nn.Module):
    """S-way noise-level classifier on a feature map, invariant to periodic shifts.

    ``GN -> SiLU -> conv3x3 -> SiLU -> conv1x1 (features) -> [mean, std] over space
    -> Linear(2 features, hidden) -> SiLU -> Linear(hidden, S)``.

    The spatial standard deviation is the natural statistic for a noise level (white
    noise raises the variance of every feature); mean and std pooling replace the
    reference's position-dependent flattening.  Shapes: ``(B, C, h, w) -> (B, S)``.
    """

    def __init__(
        self, in_channels: int, n_levels: int, features: int, hidden: int, norm_groups: int = 32
    ) -> None:
        super().__init__()
        self.norm = _group_norm(in_channels, norm_groups)
        self.conv1 = periodic_conv(in_channels, in_channels, 3)
        self.conv2 = nn.Conv2d(in_channels, features, 1)
        self.fc1 = nn.Linear(2 * features, hidden)
        self.fc2 = nn.Linear(hidden, n_levels)

    def forward(self, h: Tensor) -> Tensor:
        h = self.conv2(F.silu(self.conv1(F.silu(self.norm(h)))))
        mean = h.mean(dim=(2, 3))
        std = torch.sqrt(h.var(dim=(2, 3), unbiased=False) + 1e-6)
        return self.fc2(F.silu(self.fc1(torch.cat([mean, std], dim=1))))


# ----------------------------------------------------------------------------- encoder / decoder


def _level_channels(dim: int, dim_mults: Sequence[int]) -> list[int]:
    """Widths of the levels: ``C_i = dim * prod(dim_mults[:i+1])`` (cumulative multipliers)."""
    widths, c = [], dim
    for m in dim_mults:
        c *= m
        widths.append(c)
    return widths


def _check_arch(
    dim: int, dim_mults: Sequence[int], n_blocks: int, attn_levels: Sequence[int]
) -> None:
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"U-Net dim must be a positive integer, got {dim!r}")
    if len(dim_mults) < 1 or any((not isinstance(m, int)) or m < 1 for m in dim_mults):
        raise ValueError(
            f"U-Net dim_mults must be a non-empty sequence of positive integers, got {dim_mults!r}"
        )
    if not isinstance(n_blocks, int) or n_blocks < 1:
        raise ValueError(f"U-Net n_blocks must be a positive integer, got {n_blocks!r}")
    bad = [a for a in attn_levels if a not in range(len(dim_mults))]
    if bad:
        raise ValueError(
            f"U-Net attn_levels {tuple(attn_levels)!r} holds {bad}: valid level indices are "
            f"0..{len(dim_mults) - 1} (0 = finest, {len(dim_mults) - 1} = coarsest)"
        )


class UNetEncoder(nn.Module):
    """Stem, down path and middle block.

    ``forward(x, cond) -> (h, skips)``: ``h`` is the bottleneck ``(B, C_{L-1}, H/s, W/s)``
    with ``s = stride = 2^(L-1)``; ``skips`` lists every intermediate output (stem first),
    whose widths are ``skip_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        dim_mults: Sequence[int],
        n_blocks: int,
        attn_levels: Sequence[int] = (),
        mid_attn: bool = False,
        cond_dim: int | None = None,
        attn_heads: int = 1,
        norm_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_arch(dim, dim_mults, n_blocks, attn_levels)
        widths = _level_channels(dim, dim_mults)
        self.level_channels = widths
        self.stride = 2 ** (len(widths) - 1)
        self.out_channels = widths[-1]
        self.stem = periodic_conv(in_channels, dim, 3)
        self.skip_channels = [dim]
        down: list[nn.Module] = []
        c = dim
        for i, w in enumerate(widths):
            for _ in range(n_blocks):
                down.append(
                    _Stage(c, w, i in attn_levels, cond_dim, attn_heads, norm_groups, dropout)
                )
                c = w
                self.skip_channels.append(c)
            if i < len(widths) - 1:
                down.append(Downsample(c))
                self.skip_channels.append(c)
        self.down = nn.ModuleList(down)
        self.mid1 = ResBlock(c, c, cond_dim, norm_groups, dropout)
        self.mid_attn = SelfAttention2d(c, attn_heads, norm_groups) if mid_attn else None
        self.mid2 = ResBlock(c, c, cond_dim, norm_groups, dropout)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        x = self.stem(x)
        skips = [x]
        for m in self.down:
            x = m(x) if isinstance(m, Downsample) else m(x, cond)
            skips.append(x)
        x = self.mid1(x, cond)
        if self.mid_attn is not None:
            x = self.mid_attn(x)
        return self.mid2(x, cond), skips


class UNetDecoder(nn.Module):
    """Up path and output layer, consuming the encoder's skips in reverse order.

    ``forward(h, skips, cond) -> (B, out_channels, H, W)``.
    """

    def __init__(
        self,
        out_channels: int,
        dim: int,
        dim_mults: Sequence[int],
        n_blocks: int,
        skip_channels: Sequence[int],
        attn_levels: Sequence[int] = (),
        cond_dim: int | None = None,
        attn_heads: int = 1,
        norm_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_arch(dim, dim_mults, n_blocks, attn_levels)
        widths = _level_channels(dim, dim_mults)
        skips = list(skip_channels)
        up: list[nn.Module] = []
        c = widths[-1]
        for i in reversed(range(len(widths))):
            finer = widths[i - 1] if i > 0 else dim
            for j in range(n_blocks + 1):
                out = widths[i] if j < n_blocks else finer
                up.append(
                    _Stage(
                        c + skips.pop(),
                        out,
                        i in attn_levels,
                        cond_dim,
                        attn_heads,
                        norm_groups,
                        dropout,
                    )
                )
                c = out
            if i > 0:
                up.append(Upsample(c))
        if skips:  # the encoder and decoder were built with different architectures
            raise ValueError(
                f"UNetDecoder: {len(skips)} skip connections left unused, check the architecture"
            )
        self.up = nn.ModuleList(up)
        self.out_norm = _group_norm(c, norm_groups)
        self.out_conv = periodic_conv(c, out_channels, 3)

    def forward(self, h: Tensor, skips: list[Tensor], cond: Tensor | None = None) -> Tensor:
        skips = list(skips)
        for m in self.up:
            h = m(h) if isinstance(m, Upsample) else m(torch.cat([h, skips.pop()], dim=1), cond)
        return self.out_conv(F.silu(self.out_norm(h)))


def _check_spatial(owner: str, shape: Sequence[int], stride: int) -> None:
    """Raise if the spatial size ``shape = (H, W)`` is not divisible by the total stride."""
    h, w = shape
    if h % stride or w % stride:
        raise ValueError(
            f"{owner}: spatial size {h}x{w} is not divisible by the total downsampling factor "
            f"{stride} (2^(number of levels - 1)); use a multiple of {stride} or fewer levels"
        )


def _check_cond(owner: str, cond: Tensor | None, cond_dim: int | None, batch: int) -> None:
    if cond_dim is None:
        if cond is not None:
            raise ValueError(
                f"{owner} was built without conditioning (cond_dim=None) but got a cond tensor"
            )
        return
    if cond is None:
        raise ValueError(
            f"{owner} was built with cond_dim={cond_dim} and needs cond of shape (B, {cond_dim})"
        )
    if tuple(cond.shape) != (batch, cond_dim):
        raise ValueError(
            f"{owner} expects cond of shape ({batch}, {cond_dim}), got {tuple(cond.shape)}"
        )


class UNet(nn.Module):
    """Plain periodic U-Net ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    Optional conditioning vector ``cond`` ``(B, cond_dim)`` added per channel after
    each convolution of every block (``cond_in_encoder=True``) or of the decoder
    blocks only.  Used as the deterministic residual surrogate ``x + f(x)`` (reference:
    ``dim=64, dim_mults=(2, 2, 2), n_blocks=2``, no attention, ~45.8M parameters) and
    as the backbone of the pair denoisers and baselines.

    Args:
        in_channels, out_channels: channels of input and output fields.
        dim: stem width; dim_mults: cumulative per-level multipliers (module docstring).
        n_blocks: residual blocks per level in the encoder (decoder: ``n_blocks + 1``).
        attn_levels: level indices (0 = finest) with self-attention after each block.
        mid_attn: self-attention in the middle block.
        cond_dim: width of the conditioning vector, ``None`` for none.
        cond_in_encoder: condition the encoder and middle blocks too (else decoder only).
        attn_heads, norm_groups, dropout: attention heads, GroupNorm groups (gcd with the
            width), dropout inside residual blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dim: int = 64,
        dim_mults: Sequence[int] = (2, 2, 2),
        n_blocks: int = 2,
        attn_levels: Sequence[int] = (),
        mid_attn: bool = False,
        cond_dim: int | None = None,
        cond_in_encoder: bool = True,
        attn_heads: int = 1,
        norm_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet {name} must be a positive integer, got {value!r}")
        if cond_dim is not None and (not isinstance(cond_dim, int) or cond_dim < 1):
            raise ValueError(f"UNet cond_dim must be a positive integer or None, got {cond_dim!r}")
        self.in_channels, self.out_channels, self.cond_dim = in_channels, out_channels, cond_dim
        self.cond_in_encoder = cond_in_encoder
        attn_levels = tuple(attn_levels)
        self.encoder = UNetEncoder(
            in_channels,
            dim,
            dim_mults,
            n_blocks,
            attn_levels,
            mid_attn,
            cond_dim if cond_in_encoder else None,
            attn_heads,
            norm_groups,
            dropout,
        )
        self.decoder = UNetDecoder(
            out_channels,
            dim,
            dim_mults,
            n_blocks,
            self.encoder.skip_channels,
            attn_levels,
            cond_dim,
            attn_heads,
            norm_groups,
            dropout,
        )

    @property
    def stride(self) -> int:
        """Total downsampling factor ``2^(L-1)``; H and W must be multiples of it."""
        return self.encoder.stride

    @property
    def bottleneck_channels(self) -> int:
        return self.encoder.out_channels

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, H, W)``, H and W multiples of
        ``stride``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        _check_spatial("UNet", x.shape[-2:], self.stride)

    def encode(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Encoder + middle -> ``(bottleneck, skips)``; uses ``cond`` if ``cond_in_encoder``."""
        return self.encoder(x, cond if self.cond_in_encoder else None)

    def decode(self, h: Tensor, skips: list[Tensor], cond: Tensor | None = None) -> Tensor:
        return self.decoder(h, skips, cond)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        self.check_input(x)
        _check_cond("UNet", cond, self.cond_dim, x.shape[0])
        h, skips = self.encode(x, cond)
        return self.decode(h, skips, cond)


class LevelEstimator(nn.Module):
    """Periodic encoder + two ``LevelHead`` s: ``(B, C_in, H, W) -> (logits_i2, logits_i1)``."""

    def __init__(
        self,
        in_channels: int,
        n_levels: int,
        dim: int = 32,
        dim_mults: Sequence[int] = (2, 2),
        n_blocks: int = 1,
        head_features: int = 256,
        head_hidden: int = 256,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, dim, dim_mults, n_blocks, norm_groups=norm_groups)
        c = self.encoder.out_channels
        self.head_s2 = LevelHead(c, n_levels, head_features, head_hidden, norm_groups)
        self.head_s1 = LevelHead(c, n_levels, head_features, head_hidden, norm_groups)

    @property
    def stride(self) -> int:
        return self.encoder.stride

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, _ = self.encoder(x)
        return self.head_s2(h), self.head_s1(h)


# ----------------------------------------------------------------------------- pair denoisers


class _PairUNetBase(PairDenoiser):
    """Shared validation of a field pair denoiser: state shape ``(C, H, W)``, ``S`` levels."""

    def _init_pair(self, state_shape: Sequence[int], n_levels: int) -> int:
        """Validate and store ``state_shape`` and ``n_levels``; return the state channels ``C``."""
        state_shape = tuple(int(s) for s in state_shape)
        if len(state_shape) != 3 or min(state_shape) < 1:
            raise ValueError(
                f"{type(self).__name__} needs state_shape (C, H, W) of positive sizes, "
                f"got {state_shape!r}"
            )
        if not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(
                f"{type(self).__name__} n_levels must be an integer >= 2, got {n_levels!r}"
            )
        self.state_shape = state_shape
        self.n_levels = n_levels
        return state_shape[0]

    def _pair(self, x_prev: Tensor, x_next: Tensor) -> Tensor:
        self.check_pair(x_prev, x_next)
        return torch.cat([x_prev, x_next], dim=1)

    def _split(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        c = self.state_shape[0]
        return eps[:, :c], eps[:, c:]


class BlindPairUNet(_PairUNetBase):
    """The paper's blind pair denoiser (module docstring): levels are estimated, never given.

    ``forward(x_prev, x_next)`` with states ``(B, C, H, W)``: the encoder sees
    ``cat(x_prev, x_next)``; ``logits_i2, logits_i1 = heads(bottleneck)``; the decoder is
    conditioned on ``c = [m2(softmax(logits_i2)), m1(softmax(logits_i1))]`` and outputs
    ``(eps_prev, eps_next)``.  Levels passed to ``forward`` are ignored (``blind = True``).

    Args:
        state_shape: ``(C, H, W)`` of one state; H, W multiples of ``2^(len(dim_mults)-1)``.
        n_levels: S, the number of noise levels (classes of each head).
        dim, dim_mults, n_blocks, attn_levels, mid_attn, attn_heads, norm_groups, dropout: U-Net
            architecture (see ``UNet``).
        emb_dim: width E of each level-probability embedding (decoder conditioning is ``2E``).
        head_features, head_hidden: widths of the pooled features and of the hidden layer of
            each head.
    """

    blind = True

    def __init__(
        self,
        state_shape: Sequence[int],
        n_levels: int,
        dim: int = 64,
        dim_mults: Sequence[int] = (2, 2, 2),
        n_blocks: int = 2,
        attn_levels: Sequence[int] = (),
        mid_attn: bool = True,
        emb_dim: int = 256,
        head_features: int = 256,
        head_hidden: int = 256,
        attn_heads: int = 1,
        norm_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c = self._init_pair(state_shape, n_levels)
        self.unet = UNet(
            2 * c,
            2 * c,
            dim,
            dim_mults,
            n_blocks,
            attn_levels,
            mid_attn,
            cond_dim=2 * emb_dim,
            cond_in_encoder=False,
            attn_heads=attn_heads,
            norm_groups=norm_groups,
            dropout=dropout,
        )
        _check_spatial(type(self).__name__, self.state_shape[1:], self.unet.stride)
        bottleneck = self.unet.bottleneck_channels
        self.head_s2 = LevelHead(bottleneck, n_levels, head_features, head_hidden, norm_groups)
        self.head_s1 = LevelHead(bottleneck, n_levels, head_features, head_hidden, norm_groups)
        self.prob_mlp_s2 = mlp(n_levels, emb_dim, emb_dim, n_layers=2, final_activation=True)
        self.prob_mlp_s1 = mlp(n_levels, emb_dim, emb_dim, n_layers=2, final_activation=True)

    def _encode(
        self, x_prev: Tensor, x_next: Tensor
    ) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        h, skips = self.unet.encode(self._pair(x_prev, x_next))
        return h, skips, self.head_s2(h), self.head_s1(h)

    def forward(
        self, x_prev: Tensor, x_next: Tensor, i2: Tensor | None = None, i1: Tensor | None = None,
        **deprecated: Any
    ) -> DenoiserOutput:
        i2, i1 = deprecated_levels(i2, i1, deprecated, "BlindPairUNet")
        h, skips, logits_i2, logits_i1 = self._encode(x_prev, x_next)
        cond = torch.cat(
            [
                self.prob_mlp_s2(logits_i2.softmax(dim=1)),
                self.prob_mlp_s1(logits_i1.softmax(dim=1)),
            ],
            dim=1,
        )
        eps_prev, eps_next = self._split(self.unet.decode(h, skips, cond))
        return DenoiserOutput(eps_prev, eps_next, logits_i2, logits_i1)

    def estimate_levels(self, x_prev: Tensor, x_next: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder + heads only (no decoder): ``(logits_i2, logits_i1)``, each ``(B, S)``."""
        _, _, logits_i2, logits_i1 = self._encode(x_prev, x_next)
        return logits_i2, logits_i1


class ExplicitPairUNet(_PairUNetBase):
    """Pair denoiser told its levels: ``c = [emb(i2), emb(i1)]`` conditions every block.

    ``emb(s) = MLP(sinusoidal_embedding(s, E))`` (separate MLPs for ``i2`` and ``i1``).
    Level estimation uses a separate ``LevelEstimator`` on the raw pair; ``forward``
    runs it too and returns its logits, so a single loss trains both.

    Args: as ``BlindPairUNet``, plus ``estimator_dim``, ``estimator_mults``,
    ``estimator_blocks`` (architecture of the estimator's encoder).  ``forward`` requires
    ``i2`` and ``i1``: integer tensors of shape ``(B,)`` with values in ``0..S-1``.
    """

    blind = False

    def __init__(
        self,
        state_shape: Sequence[int],
        n_levels: int,
        dim: int = 64,
        dim_mults: Sequence[int] = (2, 2, 2),
        n_blocks: int = 2,
        attn_levels: Sequence[int] = (),
        mid_attn: bool = True,
        emb_dim: int = 256,
        head_features: int = 256,
        head_hidden: int = 256,
        estimator_dim: int = 32,
        estimator_mults: Sequence[int] = (2, 2),
        estimator_blocks: int = 1,
        attn_heads: int = 1,
        norm_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c = self._init_pair(state_shape, n_levels)
        self.unet = UNet(
            2 * c,
            2 * c,
            dim,
            dim_mults,
            n_blocks,
            attn_levels,
            mid_attn,
            cond_dim=2 * emb_dim,
            cond_in_encoder=True,
            attn_heads=attn_heads,
            norm_groups=norm_groups,
            dropout=dropout,
        )
        self.estimator = LevelEstimator(
            2 * c,
            n_levels,
            estimator_dim,
            estimator_mults,
            estimator_blocks,
            head_features,
            head_hidden,
            norm_groups,
        )
        _check_spatial(
            type(self).__name__, self.state_shape[1:], max(self.unet.stride, self.estimator.stride)
        )
        self.emb_s2 = LevelEmbedding(emb_dim, max_period=max(10000.0, 10.0 * n_levels))
        self.emb_s1 = LevelEmbedding(emb_dim, max_period=max(10000.0, 10.0 * n_levels))

    def _check_levels(self, s: Tensor | None, name: str, batch: int) -> None:
        if s is None:
            raise ValueError(
                "ExplicitPairUNet is not blind: forward needs both levels i2 and i1 "
                f"(integer tensors of shape "
                f"({batch},)), got {name}=None; use estimate_levels to estimate them"
            )
        if (
            s.dtype.is_floating_point
            or s.dtype.is_complex
            or s.dtype == torch.bool
            or tuple(s.shape) != (batch,)
        ):
            raise ValueError(
                f"ExplicitPairUNet expects {name} as an integer tensor of shape ({batch},), "
                f"got dtype {s.dtype} and shape {tuple(s.shape)}"
            )
        if bool(((s < 0) | (s >= self.n_levels)).any()):
            raise ValueError(
                f"ExplicitPairUNet {name} must lie in 0..{self.n_levels - 1}, "
                f"got values in [{int(s.min())}, {int(s.max())}]"
            )

    def forward(
        self, x_prev: Tensor, x_next: Tensor, i2: Tensor | None = None, i1: Tensor | None = None,
        **deprecated: Any
    ) -> DenoiserOutput:
        i2, i1 = deprecated_levels(i2, i1, deprecated, "ExplicitPairUNet")
        x = self._pair(x_prev, x_next)
        self._check_levels(i2, "i2", x.shape[0])
        self._check_levels(i1, "i1", x.shape[0])
        cond = torch.cat([self.emb_s2(i2), self.emb_s1(i1)], dim=1)
        eps_prev, eps_next = self._split(self.unet(x, cond))
        logits_i2, logits_i1 = self.estimator(x)
        return DenoiserOutput(eps_prev, eps_next, logits_i2, logits_i1)

    def estimate_levels(self, x_prev: Tensor, x_next: Tensor) -> tuple[Tensor, Tensor]:
        """The separate estimator on the raw pair: ``(logits_i2, logits_i1)``, each ``(B, S)``."""
        return self.estimator(self._pair(x_prev, x_next))


# ----------------------------------------------------------------------------- named configurations

# Reference values (github QiLiu6/SNS, CT/Training/Train_SNS_{NS,QG}_config.py, model
# "ModernUnetDoubleRegressor_plus"): Kolmogorov hidden_channels=64, dim_mults=[2,2,2]
# (cumulative), n_blocks=2, is_attn=(F,F,T), mid_attn=True, first/second_embedding_dim=1000,
# regression_output_dim=1000, 1000 diffusion steps, 64x64, 79,249,442 parameters (with its
# third input channel); QG hidden_channels=128, the same multipliers and blocks, no level
# attention (is_attn=(F,F,F,T) with three levels), mid_attn=True, 238,509,540 parameters.
# The reference heads are conv3x3 -> conv1x1(16) -> flatten(4096) -> Linear(4096, 1000) ->
# Linear(1000, 1000); ours pool 2 x 2048 statistics into Linear(4096, 1000).
_PAIR_CONFIGS: dict[str, dict[str, Any]] = {
    "paper-kolmogorov": {
        "state_shape": (1, 64, 64),
        "n_levels": 1000,
        "dim": 64,
        "dim_mults": (2, 2, 2),
        "n_blocks": 2,
        "attn_levels": (2,),
        "mid_attn": True,
        "emb_dim": 1000,
        "head_features": 2048,
        "head_hidden": 1000,
        "estimator": {"estimator_dim": 32, "estimator_mults": (2, 2, 2), "estimator_blocks": 1},
    },
    "paper-qg": {
        "state_shape": (2, 64, 64),
        "n_levels": 1000,
        "dim": 128,
        "dim_mults": (2, 2, 2),
        "n_blocks": 2,
        "attn_levels": (),
        "mid_attn": True,
        "emb_dim": 1000,
        "head_features": 2048,
        "head_hidden": 1000,
        "estimator": {"estimator_dim": 32, "estimator_mults": (2, 2, 2), "estimator_blocks": 1},
    },
    # CPU scale (DESIGN section 5: a ~2.4M-parameter pair denoiser with S = 100 on 32^2 fields).
    "cpu-kolmogorov": {
        "state_shape": (1, 32, 32),
        "n_levels": 100,
        "dim": 32,
        "dim_mults": (2, 2),
        "n_blocks": 1,
        "attn_levels": (),
        "mid_attn": True,
        "emb_dim": 128,
        "head_features": 128,
        "head_hidden": 128,
        "estimator": {"estimator_dim": 16, "estimator_mults": (2, 2), "estimator_blocks": 1},
    },
    "cpu-qg": {
        "state_shape": (2, 32, 32),
        "n_levels": 100,
        "dim": 32,
        "dim_mults": (2, 2),
        "n_blocks": 1,
        "attn_levels": (),
        "mid_attn": True,
        "emb_dim": 128,
        "head_features": 128,
        "head_hidden": 128,
        "estimator": {"estimator_dim": 16, "estimator_mults": (2, 2), "estimator_blocks": 1},
    },
    "tiny": {
        "state_shape": (1, 16, 16),
        "n_levels": 10,
        "dim": 8,
        "dim_mults": (1, 2),
        "n_blocks": 1,
        "attn_levels": (1,),
        "mid_attn": True,
        "emb_dim": 16,
        "head_features": 16,
        "head_hidden": 32,
        "estimator": {"estimator_dim": 8, "estimator_mults": (1, 2), "estimator_blocks": 1},
    },
}

# Reference deterministic surrogate (Emulator/Training/Train_{emulator,qg_emulator}_config.py,
# "ModernUnet"): hidden_channels=64, dim_mults=[2,2,2], n_blocks=2, no attention, GELU, no
# norm; 45,820,801 (Kolmogorov) / 45,821,954 (QG) parameters.
_SURROGATE_CONFIGS: dict[str, dict[str, Any]] = {
    "paper-kolmogorov": {
        "in_channels": 1,
        "out_channels": 1,
        "dim": 64,
        "dim_mults": (2, 2, 2),
        "n_blocks": 2,
    },
    "paper-qg": {
        "in_channels": 2,
        "out_channels": 2,
        "dim": 64,
        "dim_mults": (2, 2, 2),
        "n_blocks": 2,
    },
    "cpu-kolmogorov": {
        "in_channels": 1,
        "out_channels": 1,
        "dim": 16,
        "dim_mults": (2, 2),
        "n_blocks": 1,
    },
    "cpu-qg": {"in_channels": 2, "out_channels": 2, "dim": 16, "dim_mults": (2, 2), "n_blocks": 1},
    "tiny": {"in_channels": 1, "out_channels": 1, "dim": 8, "dim_mults": (1, 2), "n_blocks": 1},
}

UNET_CONFIG_NAMES: tuple[str, ...] = tuple(_PAIR_CONFIGS)
_VARIANTS = ("blind", "explicit")


def _lookup(table: dict[str, dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    if name not in table:
        raise ValueError(
            f"unknown {what} configuration {name!r}; valid choices: {', '.join(table)}"
        )
    return table[name]


def unet_config(name: str, variant: str = "blind") -> dict[str, Any]:
    """Keyword arguments of ``BlindPairUNet`` (``variant="blind"``) or ``ExplicitPairUNet``.

    Names: ``paper-kolmogorov`` / ``paper-qg`` (GPU-sized, the paper's 64^2 fields with S = 1000;
    blind parameter counts within 5% of the reference's 79.25M / 238.5M), ``cpu-kolmogorov`` /
    ``cpu-qg`` (32^2 fields, S = 100, ~1-3M parameters, trainable on a CPU in minutes),
    ``tiny`` (16^2, S = 10, for tests).  Returns a fresh dict; override ``state_shape`` or
    ``n_levels`` to match a data set, e.g.
    ``BlindPairUNet(**{**unet_config("cpu-qg"), "n_levels": 50})``.
    """
    if variant not in _VARIANTS:
        raise ValueError(
            f"unknown pair U-Net variant {variant!r}; valid choices: {', '.join(_VARIANTS)}"
        )
    cfg = dict(_lookup(_PAIR_CONFIGS, name, "pair U-Net"))
    estimator = cfg.pop("estimator")
    if variant == "explicit":
        cfg.update(estimator)
    return cfg


def surrogate_unet_config(name: str) -> dict[str, Any]:
    """Keyword arguments of the plain ``UNet`` used as the deterministic surrogate ``x + f(x)``.

    Same names as ``unet_config``; ``paper-*`` reproduce the reference surrogate (~45.8M
    parameters).
    """
    return dict(_lookup(_SURROGATE_CONFIGS, name, "surrogate U-Net"))
