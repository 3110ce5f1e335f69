"""Plug-in losses: terms ``term(module, batch, outputs) -> (value, logs)`` for any training module."""

from sns.losses.divergence import (
    DivergenceRegularizer,
    WarmupSchedule,
    divergence,
    estimate_divergence,
    flow_map_divergence,
)

__all__ = ["DivergenceRegularizer", "WarmupSchedule", "divergence", "estimate_divergence", "flow_map_divergence"]
