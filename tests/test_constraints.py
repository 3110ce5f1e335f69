"""Tests of the invariant-enforcing stepper wrappers (sns/constraints.py)."""

from __future__ import annotations

import pytest
import torch

from sns.constraints import ConserveMean
from sns.rollout import counts_calls, rollout


class Drift(torch.nn.Module):
    """x -> x + c (a constant mean drift per step) + sigma z, with a call counter."""

    def __init__(self, c: float, sigma: float = 0.0) -> None:
        super().__init__()
        self.c, self.sigma = c, sigma
        self.last_calls: int | None = None

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.last_calls = 3
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return x + self.c + self.sigma * z


def _field(b=2, c=2, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, n, n, generator=g, dtype=torch.float64)


def test_mean_of_every_channel_is_kept_over_a_rollout():
    """A stepper that adds 0.1 per step drifts the mean by 0.1 n; wrapped, the mean of each
    sample and channel stays at x0's to 1e-12 while the mean-free part is the stepper's."""
    x0 = _field()
    bare = rollout(Drift(0.1, sigma=0.05), x0, 50, seed=1, progress=False, store_dtype="float64")
    kept = rollout(ConserveMean(Drift(0.1, sigma=0.05)), x0, 50, seed=1, progress=False, store_dtype="float64")
    m0 = x0.mean(dim=(-2, -1))
    # drift 50 * 0.1 = 5; the noise moves a mean by 0.05 sqrt(50) / 8 = 0.044 (std): 4.5 std
    assert torch.allclose(bare.states[:, -1].mean(dim=(-2, -1)) - m0, torch.full_like(m0, 5.0), atol=0.2)
    means = kept.states.mean(dim=(-2, -1))  # (B, T, C)
    assert torch.max(torch.abs(means - m0[:, None])).item() < 1e-12
    # one step: only the mean changes (the projection is orthogonal, every k != 0 mode is kept)
    g = torch.Generator().manual_seed(3)
    y = Drift(0.1, sigma=0.05)(x0, generator=g)
    g = torch.Generator().manual_seed(3)
    w = ConserveMean(Drift(0.1, sigma=0.05))(x0, generator=g)
    dy, dw = y - y.mean(dim=(-2, -1), keepdim=True), w - w.mean(dim=(-2, -1), keepdim=True)
    assert torch.allclose(dy, dw, atol=1e-12)


def test_counter_and_generator_are_forwarded():
    """The rollout records the wrapped stepper's calls and draws from the same generator."""
    x0 = _field(b=3)
    assert counts_calls(ConserveMean(Drift(0.0, sigma=0.1)))
    res = rollout(ConserveMean(Drift(0.0, sigma=0.1)), x0, 5, seed=7, progress=False)
    assert res.calls_mean == 3 and res.calls_max == 3
    again = rollout(ConserveMean(Drift(0.0, sigma=0.1)), x0, 5, seed=7, progress=False)
    assert torch.equal(res.states, again.states)  # the generator is passed through: reproducible
    other = rollout(ConserveMean(Drift(0.0, sigma=0.1)), x0, 5, seed=8, progress=False)
    assert not torch.equal(res.states, other.states)


def test_plain_callable_without_counter_or_generator():
    """A plain function works; the wrapper then has no call counter, as the function has none."""
    wrapped = ConserveMean(lambda x: 2.0 * x + 1.0)
    assert not counts_calls(wrapped) and wrapped.last_calls is None
    x0 = _field()
    y = wrapped(x0)
    assert torch.allclose(y.mean(dim=(-2, -1)), x0.mean(dim=(-2, -1)), atol=1e-12)
    res = rollout(wrapped, x0, 3, progress=False)
    assert res.calls_mean is None


def test_one_dimensional_fields():
    """dims=(-1,): one mean per sample and channel of a (B, C, N) state."""
    x0 = torch.randn(2, 3, 16, dtype=torch.float64)
    y = ConserveMean(Drift(1.0), dims=(-1,))(x0)
    assert torch.allclose(y.mean(-1), x0.mean(-1), atol=1e-12)


def test_clear_errors():
    with pytest.raises(ValueError, match="dims"):
        ConserveMean(Drift(0.0), dims=())
    with pytest.raises(ValueError, match="dims"):
        ConserveMean(Drift(0.0), dims=(0, 1))
    with pytest.raises(ValueError, match="dims"):
        ConserveMean(Drift(0.0), dims=(-1, -1))
    with pytest.raises(TypeError, match="callable"):
        ConserveMean(3.0)
    with pytest.raises(ValueError, match="vector states"):
        ConserveMean(Drift(0.0))(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape"):
        ConserveMean(lambda x: x[:, :1])(_field())
