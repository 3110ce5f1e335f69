"""Noise reduction before delay embedding (seed 000, step 1): wavelet shrinkage with PyWavelets.

Measurement noise fills every dimension of a delay embedding: it inflates the correlation
dimension ``D2`` at small radii and shifts the mutual-information delay.  The seed's remedy is a
noise-reduction filter before embedding, e.g. wavelet denoising; :func:`wavelet_denoise` is the
standard one (discrete wavelet transform, shrinkage of the detail coefficients, inverse
transform), with the transforms from PyWavelets.

Threshold rules (``rule``), with the noise level ``sigma`` estimated as ``median(|d_1|) / 0.6745``
(the median absolute deviation of the finest detail coefficients ``d_1``, Donoho & Johnstone
1994) unless given:

* ``"bayes"`` (default; BayesShrink, Chang, Yu & Vetterli 2000): soft threshold per detail level
  ``j``, ``T_j = sigma^2 / sigma_x,j`` with ``sigma_x,j = sqrt(max(mean(d_j^2) - sigma^2, 0))``
  the signal's spread in that level (a level with no signal above the noise, ``sigma_x,j = 0``,
  is zeroed);
* ``"universal"`` (VisuShrink, Donoho & Johnstone 1994): one threshold
  ``T = sigma sqrt(2 ln n)`` for every level, ``mode`` ``"hard"`` or ``"soft"``.

Why BayesShrink by default (measured on Lorenz-63 x sampled every 0.01, 8000 samples, Gaussian
noise of 5-20% of the series' std, benchmarks/wavelet_denoising.py): it leaves 0.33-0.37 of the
noise RMS at the deepest decomposition (0.34-0.38 at every depth tried in a pilot); the universal
threshold leaves 0.51-0.57 (hard) and 1.05-1.33 (soft: it shrinks the large coarse coefficients
of the signal by ``T`` too, so it adds error) when all levels are thresholded.  BayesShrink also
recovers ``D2`` and the delay best of the three (the benchmark's table, in RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["RULES", "noise_sigma", "wavelet_denoise"]

RULES = ("bayes", "universal")


def _pywt() -> Any:
    try:
        import pywt
    except ImportError as err:  # a core dependency; only a broken install lacks it
        raise ImportError("wavelet denoising needs PyWavelets (pip install PyWavelets)") from err
    return pywt


def _series(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64) if not hasattr(x, "detach") else x.detach().cpu().numpy().astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"wavelet_denoise takes a 1-D series, got shape {arr.shape} (denoise each column separately)")
    if arr.size < 16:
        raise ValueError(f"wavelet_denoise needs at least 16 samples, got {arr.size}")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"the series has a non-finite value at index {bad} ({arr[bad]}); remove or fill it first")
    return arr


def noise_sigma(x: Any, wavelet: str = "sym8") -> float:
    """The noise level of a series: ``median(|d_1|) / 0.6745`` of its finest detail coefficients
    (exact in expectation for white Gaussian noise on a signal smooth at the sampling scale)."""
    pywt = _pywt()
    arr = _series(x)
    _, d1 = pywt.dwt(arr, wavelet, mode="symmetric")
    return float(np.median(np.abs(d1)) / 0.6745)


def wavelet_denoise(x: Any, wavelet: str = "sym8", level: int | None = None, rule: str = "bayes",
                    mode: str = "soft", sigma: float | None = None, return_info: bool = False
                    ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """The series ``x`` with its noise shrunk in a wavelet basis (see the module docstring).

    Args:
        x: a 1-D series (array or tensor), at least 16 finite samples.
        wavelet: a PyWavelets discrete wavelet name (``pywt.wavelist(kind="discrete")``).
        level: decomposition depth (``None``: the deepest, ``pywt.dwt_max_level``); the ``level``
            detail bands are thresholded, the approximation is kept.
        rule: ``"bayes"`` (level-wise BayesShrink, soft) or ``"universal"`` (VisuShrink).
        mode: ``"soft"`` or ``"hard"`` (``"universal"`` only; BayesShrink is soft by definition).
        sigma: the noise std if known (``None``: estimated, :func:`noise_sigma`).
        return_info: also return ``{"sigma", "thresholds" (finest first), "level", "wavelet", "rule"}``.

    Returns the denoised series (float64, the length of ``x``).  Raises ``ValueError`` for a
    series that is not 1-D, too short or not finite, an unknown wavelet, rule or mode, a level out
    of range, or a negative ``sigma``.
    """
    pywt = _pywt()
    arr = _series(x)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    if rule == "bayes" and mode != "soft":
        raise ValueError("BayesShrink (rule='bayes') is a soft threshold; use rule='universal' for mode='hard'")
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"unknown discrete wavelet {wavelet!r}; choices: pywt.wavelist(kind='discrete')")
    w = pywt.Wavelet(wavelet)
    deepest = pywt.dwt_max_level(arr.size, w.dec_len)
    if deepest < 1:
        raise ValueError(f"a series of {arr.size} samples is too short for wavelet {wavelet!r} "
                         f"(filter length {w.dec_len})")
    level = deepest if level is None else int(level)
    if not 1 <= level <= deepest:
        raise ValueError(f"level must be in [1, {deepest}] for {arr.size} samples and {wavelet!r}, got {level}")
    coeffs = pywt.wavedec(arr, w, mode="symmetric", level=level)  # [a_L, d_L, ..., d_1]
    if sigma is None:
        sigma = float(np.median(np.abs(coeffs[-1])) / 0.6745)
    elif not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    thresholds = []
    out = [coeffs[0]]
    for d in coeffs[1:]:
        if rule == "universal":
            t = sigma * math.sqrt(2.0 * math.log(arr.size))
        else:
            spread = math.sqrt(max(float(np.mean(d**2)) - sigma**2, 0.0))
            t = sigma**2 / spread if spread > 0 else float(np.abs(d).max())
        thresholds.append(t)
        out.append(pywt.threshold(d, t, mode=mode))
    y = pywt.waverec(out, w, mode="symmetric")[: arr.size]
    if not return_info:
        return y
    return y, {"sigma": sigma, "thresholds": thresholds[::-1], "level": level, "wavelet": wavelet, "rule": rule}
