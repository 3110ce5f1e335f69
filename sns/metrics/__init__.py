"""Evaluation metrics: energy spectra, energy and enstrophy of fields
(:mod:`sns.metrics.fields`), and time-series metrics of rollouts (:mod:`sns.metrics.series`).

All functions take numpy arrays or torch tensors and return numpy ``float64`` results.
"""

from sns.metrics.fields import (
    RunningSpectrum,
    energy_spectrum,
    enstrophy,
    kinetic_energy,
    shell_index,
)
from sns.metrics.series import (
    autocorrelation,
    blowup_step,
    correlation_time,
    mse_series,
    pearson_series,
    rate_of_change,
    spatiotemporal_correlation,
    spectrum_distance,
    wasserstein1_per_coordinate,
)

__all__ = [
    "RunningSpectrum",
    "autocorrelation",
    "blowup_step",
    "correlation_time",
    "energy_spectrum",
    "enstrophy",
    "kinetic_energy",
    "mse_series",
    "pearson_series",
    "rate_of_change",
    "shell_index",
    "spatiotemporal_correlation",
    "spectrum_distance",
    "wasserstein1_per_coordinate",
]
