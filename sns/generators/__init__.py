"""Synthetic-trace generators of seed 000 beyond the Neural ODE (``sns.surrogates.neural_ode``).

``hmc``: Hamiltonian Monte Carlo with a learned potential, for conservative systems.
``gan``: an autoregressive window GAN whose discriminator can judge divergence features
(:func:`~sns.generators.gan.window_divergence`), with the plain GAN as its control.
``preprocess``: wavelet denoising of a noisy series before delay embedding.
"""

from sns.generators.gan import (
    StepGenerator,
    WindowDiscriminator,
    WindowGAN,
    coverage_report,
    window_divergence,
)
from sns.generators.hmc import (
    HMCGenerator,
    HMCResult,
    LearnedPotential,
    fit_potential,
    hamiltonian,
    hmc_sample,
    potential_error,
    sample_truncated_momenta,
)
from sns.generators.preprocess import noise_sigma, wavelet_denoise

__all__ = [
    "HMCGenerator",
    "HMCResult",
    "LearnedPotential",
    "StepGenerator",
    "WindowDiscriminator",
    "WindowGAN",
    "coverage_report",
    "fit_potential",
    "hamiltonian",
    "hmc_sample",
    "noise_sigma",
    "potential_error",
    "sample_truncated_momenta",
    "wavelet_denoise",
    "window_divergence",
]
