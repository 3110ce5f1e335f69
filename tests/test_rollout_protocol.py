"""The stepper protocol (sns.rollout.stepper): every stepper and wrapper the library ships states
its optional parts (generator, call counter) the way the rollout reads them, and the one shape
check names what went wrong."""

import pytest
import torch

from sns.baselines import ACDM, GaussianApproximation, PDERefiner, Thermalizer
from sns.constraints import ConserveMean
from sns.diffusion import cosine_schedule
from sns.nets.mlp import MLPPairDenoiser
from sns.precision import MixedPrecision
from sns.refine import SNSRefiner
from sns.rollout import (
    CountingStepper,
    Stepper,
    StochasticStepper,
    accepts_generator,
    call_step,
    check_step_output,
    counts_calls,
    rollout,
)
from sns.surrogates.residual import ResidualSurrogate, VectorMLP

S = 10


def library_steppers():
    """(name, stepper, stochastic, counting) for each stepper class of the library, tiny sizes."""
    torch.manual_seed(0)
    sch = cosine_schedule(S)
    blind = MLPPairDenoiser(3, S, width=16, blind=True)
    explicit = MLPPairDenoiser(3, S, width=16, blind=False)
    sur = ResidualSurrogate(VectorMLP(3, width=16), zero_init=False)
    return [
        ("ResidualSurrogate", sur, False, False),
        ("GaussianApproximation", GaussianApproximation(sur, sigma=0.1), True, True),
        ("SNSRefiner", SNSRefiner(blind, sch, sur), True, True),
        ("SNSRefiner fixed", SNSRefiner(blind, sch, sur, fixed_levels=(2, 2)), True, True),
        ("ACDM", ACDM(explicit, sch), True, True),
        ("Thermalizer", Thermalizer(blind, sch, sur, limit=None), True, True),
        ("PDERefiner", PDERefiner(MLPPairDenoiser(3, 3, width=16, blind=False), 2), True, True),
        ("ConserveMean(SNSRefiner)", ConserveMean(SNSRefiner(blind, sch, sur), dims=(-1,)), True, True),
        # a wrapper always takes the generator and passes it on only to a stepper that takes it
        ("ConserveMean(surrogate)", ConserveMean(sur, dims=(-1,)), True, False),
        ("MixedPrecision(SNSRefiner)", MixedPrecision(SNSRefiner(blind, sch, sur)), True, True),
        ("MixedPrecision(surrogate)", MixedPrecision(sur), True, False),
    ]


@pytest.mark.parametrize("name,step,stochastic,counting", library_steppers(),
                         ids=[r[0] for r in library_steppers()])
def test_library_steppers_declare_their_protocol(name, step, stochastic, counting):
    assert isinstance(step, Stepper)
    assert accepts_generator(step) is stochastic
    assert isinstance(step, StochasticStepper)  # structural: any callable qualifies at runtime
    assert counts_calls(step) is counting
    if counting:
        assert isinstance(step, CountingStepper)
    x = torch.randn(4, 3)
    before = x.clone()
    y = call_step(step, x, torch.Generator().manual_seed(1))
    check_step_output(x, y, name, dtype=True)
    torch.testing.assert_close(x, before)  # the previous state is left intact
    if counting:
        calls = torch.as_tensor(step.last_calls)
        assert calls.numel() in (1, 4) and bool((calls >= 1).all())
    # the rollout reads the same contract: calls recorded exactly when the stepper counts them
    res = rollout(step, x, 3, seed=0)
    assert res.status == "completed"
    assert (res.calls_mean is not None) is counting


def test_stochastic_stepper_is_reproducible_from_the_generator():
    name, step, *_ = library_steppers()[2]
    x = torch.randn(4, 3)
    a = call_step(step, x, torch.Generator().manual_seed(5))
    b = call_step(step, x, torch.Generator().manual_seed(5))
    c = call_step(step, x, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c), name


def test_counts_calls_prefers_the_declared_attribute():
    class Declares:
        counts_calls = False
        last_calls = None

        def __call__(self, x):
            return x

    class Has:
        last_calls = None

        def __call__(self, x):
            return x

    assert not counts_calls(Declares())
    assert counts_calls(Has())
    assert not counts_calls(lambda x: x)


def test_check_step_output_names_the_culprit():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"the surrogate must return a tensor of the state's shape \(2, 3\), got \(2, 2\)"):
        check_step_output(x, torch.zeros(2, 2), "the surrogate")
    with pytest.raises(ValueError, match="got ndarray at step 7"):
        check_step_output(x, x.numpy(), "stepper", step=7)
    with pytest.raises(ValueError, match="dtype torch.float32, got \\(2, 3\\) torch.float64"):
        check_step_output(x, x.double(), dtype=True)
    assert check_step_output(x, x + 1) is not x
