"""Synthetic-trace generators of seed 000 beyond the Neural ODE (``sns.surrogates.neural_ode``).

``hmc``: Hamiltonian Monte Carlo with a learned potential, for conservative systems.
``gan``: an autoregressive window GAN whose discriminator can judge divergence features
(:func:`~sns.generators.gan.window_divergence`), with the plain GAN as its control.
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
    "potential_error",
    "sample_truncated_momenta",
    "window_divergence",
]
