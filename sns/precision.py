"""Mixed precision for rollouts: run a stepper's networks under ``torch.autocast``.

:class:`MixedPrecision` wraps any stepper of :mod:`sns.rollout`'s contract (the bare surrogate,
:class:`sns.refine.SNSRefiner`, a baseline, :class:`sns.constraints.ConserveMean`) and calls it
inside ``torch.autocast(device_type, dtype)``: matrix products and convolutions run in bfloat16
(or float16), while everything autocast leaves alone -- the noise draws, the reverse-process
arithmetic of the refiner, additions of residuals -- stays in the state's dtype.  The output is
cast back to the input's dtype, so the rollout, its store and its checkpoints are unchanged
(states stay float32).  Training has its own switch, Lightning's ``trainer.precision``
(``bf16-mixed``; ``sns-train trainer.precision=bf16-mixed``).

What it costs in accuracy is measured, not assumed: ``tests/test_precision.py`` bounds the
one-step and the rollout-statistics differences of a refined rollout, and
``benchmarks/mixed_precision.py`` times it against fp32 on trained models.  **On a CPU without
native bfloat16 (AVX2 only, no AVX512-BF16 / AMX) bf16 autocast is much slower than fp32**
(measured here: a 3x3 convolution 58x, the cpu Kolmogorov models 14-31x): oneDNN falls back to
emulation.  :class:`MixedPrecision` warns in that case; use it on GPUs and on CPUs whose
``torch.backends.cpu.get_cpu_capability()`` reports AVX512 or AMX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "MixedPrecision", "autocast_dtype", "slow_cpu_autocast"]

#: names accepted by :func:`autocast_dtype` (``sns-rollout precision=...``)
PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``None`` for ``"fp32"``: no autocast)."""
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return table[precision]


def slow_cpu_autocast() -> bool:
    """Whether this CPU lacks native reduced-precision matrix units (torch reports AVX2 or less),
    so that CPU autocast is emulated and slower than fp32."""
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    return not any(k in cap for k in ("AVX512", "AMX"))


class MixedPrecision(nn.Module):
    """Stepper ``x -> step(x)`` computed under ``torch.autocast(x.device.type, dtype)``, returned
    in ``x.dtype``.

    Args:
        step: the stepper to wrap (``nn.Module`` or callable, with or without ``generator``).
        precision: ``"bf16"`` (default) or ``"fp16"``.  float16 autocast needs a device that
            supports it (CUDA; recent CPUs through oneDNN); bfloat16 works on CPU and recent GPUs.

    The generator argument and the network-call counter (``last_calls``) are the wrapped
    stepper's, as for :class:`sns.constraints.ConserveMean`.
    """

    def __init__(self, step: nn.Module | Callable[..., Tensor], precision: str = "bf16") -> None:
        super().__init__()
        if not callable(step):
            raise TypeError(f"step must be an nn.Module or a callable, got {type(step).__name__}")
        dtype = autocast_dtype(precision)
        if dtype is None:
            raise ValueError("MixedPrecision needs precision 'bf16' or 'fp16' (fp32 needs no wrapper)")
        from sns.rollout.stepper import accepts_generator, counts_calls

        self.step = step
        self.precision = precision
        self._warned = False
        self.dtype = dtype
        self._pass_generator = accepts_generator(step)
        self.counts_calls = counts_calls(step)

    @property
    def last_calls(self) -> Any:
        """The wrapped stepper's ``last_calls`` (None when it has no counter)."""
        return getattr(self.step, "last_calls", None)

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        from sns.rollout.stepper import call_step, check_step_output

        if x.device.type == "cpu" and not self._warned and slow_cpu_autocast():
            import warnings

            warnings.warn(f"{self.precision} autocast on this CPU ({torch.backends.cpu.get_cpu_capability()}, no "
                          "native bfloat16/float16) is emulated and much slower than fp32 (sns.precision)", stacklevel=2)
            self._warned = True
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            y = call_step(self.step, x, generator, self._pass_generator)
        return check_step_output(x, y, "the wrapped stepper").to(x.dtype)
