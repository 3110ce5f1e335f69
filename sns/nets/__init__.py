"""Backbones: periodic U-Nets (pair denoisers, plain) and the MLP pair denoiser."""

from sns.nets.base import DenoiserOutput, PairDenoiser
from sns.nets.embeddings import sinusoidal_embedding
from sns.nets.mlp import MLPPairDenoiser
from sns.nets.unet import (
    UNET_CONFIG_NAMES,
    BlindPairUNet,
    ExplicitPairUNet,
    UNet,
    surrogate_unet_config,
    unet_config,
)

__all__ = [
    "UNET_CONFIG_NAMES",
    "BlindPairUNet",
    "DenoiserOutput",
    "ExplicitPairUNet",
    "MLPPairDenoiser",
    "PairDenoiser",
    "UNet",
    "sinusoidal_embedding",
    "surrogate_unet_config",
    "unet_config",
]
