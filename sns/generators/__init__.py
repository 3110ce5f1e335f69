"""Synthetic-trace generators of seed 000 beyond the Neural ODE (``sns.surrogates.neural_ode``).

``hmc``: Hamiltonian Monte Carlo with a learned potential, for conservative systems.
"""

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
    "fit_potential",
    "hamiltonian",
    "hmc_sample",
    "potential_error",
    "sample_truncated_momenta",
]
