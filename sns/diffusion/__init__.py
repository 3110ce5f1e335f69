"""Diffusion core of SNS: schedules, independent pair noising, the multi-noise-level
loss, the DDPM ancestral step and paths in the reverse-process phase space."""

from sns.diffusion.loss import emphasis_weights, pair_dsm_loss
from sns.diffusion.noising import noise_pair, noise_state
from sns.diffusion.paths import (
    PATHS,
    Path,
    Traversal,
    acdm_path,
    clean_conditioning_path,
    make_path,
    path_A,
    path_B,
    path_C,
    path_fix_s2,
    thermalizer_path,
    traverse,
)
from sns.diffusion.sampling import ModeVariance, ddpm_step, posterior_step, predict_x0
from sns.diffusion.schedules import (
    Schedule,
    cosine_schedule,
    linear_schedule,
    log_sigma_schedule,
    make_schedule,
)

__all__ = [
    "PATHS",
    "ModeVariance",
    "Path",
    "Schedule",
    "Traversal",
    "acdm_path",
    "clean_conditioning_path",
    "cosine_schedule",
    "ddpm_step",
    "emphasis_weights",
    "linear_schedule",
    "log_sigma_schedule",
    "make_path",
    "make_schedule",
    "noise_pair",
    "noise_state",
    "pair_dsm_loss",
    "path_A",
    "path_B",
    "path_C",
    "path_fix_s2",
    "posterior_step",
    "predict_x0",
    "thermalizer_path",
    "traverse",
]
