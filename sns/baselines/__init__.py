"""Baselines of the SNS paper, run through the same data, rollout and evaluation as SNS.

Every baseline is a *stepper* (``state -> state``, :mod:`sns.rollout`) that reports its network
calls per sample in ``last_calls``, so :func:`sns.rollout.rollout` records calls per step for
all methods alike:

=======================  ============================================  =====================
method                   stepper                                       calls per step
=======================  ============================================  =====================
Gaussian approximation   :class:`GaussianApproximation`                1 (the surrogate)
ACDM                     :class:`ACDM` (diagonal path, re-noised        S
                         conditioning)
Thermalizer              :class:`Thermalizer` (vertical path at         1 (+1 for the classifier,
                         ``s2 = S``)                                   + level - stop where refined)
PDE-Refiner              :class:`PDERefiner`                           K + 1
SNS                      :class:`sns.refine.SNSRefiner`                1 + s1 + s2 (+1 surrogate)
=======================  ============================================  =====================

Counting convention: ``last_calls`` counts *diffusion-network* evaluations (denoiser forward
passes and level-classifier passes); the surrogate's own forward pass is not counted, as in
:class:`sns.refine.SNSRefiner`, except for :class:`GaussianApproximation` whose only network
is the surrogate (1 call).  ACDM and PDE-Refiner use no separate surrogate.

ACDM and the Thermalizer are paths in the SNS reverse-process phase space and reuse
:func:`sns.diffusion.paths.traverse`; their networks are pair denoisers trained by
:func:`sns.diffusion.pair_dsm_loss` with ``levels="diagonal"`` / ``"unconditional"``.
"""

from sns.baselines.acdm import ACDM
from sns.baselines.gaussian import GaussianApproximation
from sns.baselines.pde_refiner import PDERefiner, pde_refiner_loss, pde_refiner_schedule
from sns.baselines.thermalizer import Thermalizer

__all__ = [
    "ACDM",
    "GaussianApproximation",
    "PDERefiner",
    "Thermalizer",
    "pde_refiner_loss",
    "pde_refiner_schedule",
]
