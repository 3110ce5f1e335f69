"""sns: long-horizon neural simulation with self-refining neural surrogates.

Entry points for users who wrap their own surrogate::

    from sns import SNSRefiner, rollout
    refiner = SNSRefiner(denoiser, schedule, surrogate=my_model, path="A")
    result = rollout(refiner, x0, n_steps=100_000, store="rollout.zarr")
"""

from sns.refine import SNSRefiner, estimate_levels
from sns.rollout import RolloutResult, open_rollout, rollout

__version__ = "0.1.0"

__all__ = ["RolloutResult", "SNSRefiner", "__version__", "estimate_levels", "open_rollout", "rollout"]
