"""Plug-in losses: terms ``term(module, batch, outputs) -> (value, logs)`` for any training module."""

from sns.losses.divergence import (
    DivergenceRegularizer,
    ResolvedTarget,
    WarmupSchedule,
    divergence,
    estimate_divergence,
    flow_map_divergence,
    resolve_target,
)

__all__ = ["DivergenceRegularizer", "ResolvedTarget", "WarmupSchedule", "divergence", "estimate_divergence",
           "flow_map_divergence", "resolve_target"]
