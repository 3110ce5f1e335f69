"""Evaluation metrics: energy spectra, energy and enstrophy of fields
(:mod:`sns.metrics.fields`), time-series metrics of rollouts (:mod:`sns.metrics.series`), ensemble
scores (:mod:`sns.metrics.ensemble`: RMSE of the ensemble mean, spread, spread-skill ratio, CRPS), and the
chaos / delay-embedding toolkit (:mod:`sns.metrics.chaos`: mutual-information delay, false nearest
neighbours, correlation dimension, Lyapunov exponents, PSD, divergence error, interspike intervals).

All functions take numpy arrays or torch tensors and return numpy ``float64`` results.
"""

from sns.metrics.chaos import (
    DelayEmbedding,
    correlation_dimension,
    correlation_sum,
    delay_embed,
    divergence_error,
    embed,
    false_nearest_neighbours,
    fnn_dimension,
    interspike_intervals,
    isi_error,
    largest_lyapunov_qr,
    local_divergence,
    lyapunov_qr,
    lyapunov_rosenstein,
    mi_delay,
    mutual_information,
    power_spectral_density,
    rosenstein_divergence,
)
from sns.metrics.ensemble import (
    crps_ensemble,
    crps_gaussian,
    ensemble_mean_rmse,
    ensemble_scores,
    ensemble_spread,
    spread_skill_from_moments,
    spread_skill_ratio,
)
from sns.metrics.fields import (
    RunningSpaceTimeCorrelation,
    RunningSpectrum,
    energy_spectrum,
    enstrophy,
    kinetic_energy,
    radial_correlation,
    shell_index,
    space_time_correlation,
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
    "DelayEmbedding",
    "RunningSpaceTimeCorrelation",
    "RunningSpectrum",
    "autocorrelation",
    "blowup_step",
    "correlation_dimension",
    "correlation_sum",
    "correlation_time",
    "crps_ensemble",
    "crps_gaussian",
    "delay_embed",
    "divergence_error",
    "embed",
    "energy_spectrum",
    "ensemble_mean_rmse",
    "ensemble_scores",
    "ensemble_spread",
    "enstrophy",
    "false_nearest_neighbours",
    "fnn_dimension",
    "interspike_intervals",
    "isi_error",
    "kinetic_energy",
    "largest_lyapunov_qr",
    "local_divergence",
    "lyapunov_qr",
    "lyapunov_rosenstein",
    "mi_delay",
    "mse_series",
    "mutual_information",
    "pearson_series",
    "power_spectral_density",
    "radial_correlation",
    "rate_of_change",
    "rosenstein_divergence",
    "shell_index",
    "space_time_correlation",
    "spatiotemporal_correlation",
    "spectrum_distance",
    "spread_skill_from_moments",
    "spread_skill_ratio",
    "wasserstein1_per_coordinate",
]
