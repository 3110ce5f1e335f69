"""Deterministic surrogates: steppers ``x_{n-1} -> x_n`` that SNS refines."""

from sns.surrogates.residual import ResidualSurrogate, VectorMLP, last_layer

__all__ = ["ResidualSurrogate", "VectorMLP", "last_layer"]
