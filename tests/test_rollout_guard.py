"""sns-rollout refiner.state_guard: NearestStateGuard calibrated on the data set's train and valid
splits (issue 14), recorded in the store, refused for bad settings."""

import pytest
import torch
from _hydra import compose as compose_config

from sns.data.generate import generate_dataset
from sns.export import save_model
from sns.training import build_model

SMALL = {"n_frames": 60, "spinup_steps": 100, "trajectories": {"train": 3, "valid": 2, "test": 2}}
S = 10


def compose(overrides):
    return compose_config("rollout", overrides)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    data = generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    torch.manual_seed(0)
    sur_spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16, "n_layers": 2}}
    den_spec = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": S, "width": 32}}
    sur = save_model(build_model(sur_spec).eval(), sur_spec, root / "sur.safetensors", {"task": "surrogate"})
    den = save_model(build_model(den_spec).eval(), den_spec, root / "den.safetensors",
                     {"task": "denoiser", "method": "sns",
                      "schedule": {"name": "cosine", "n_levels": S, "kwargs": {}}})
    return root, data, sur, den


def test_state_guard_is_calibrated_on_the_data_set(files, tmp_path):
    from sns.cli.rollout import run_rollout
    from sns.data.windows import WindowDataset
    from sns.diffusion.schedules import make_schedule
    from sns.refine import NearestStateGuard
    from sns.rollout import open_rollout

    root, data, sur, den = files
    base = [f"surrogate={sur}", f"denoiser={den}", f"data_dir={data}", "n_steps=5", "trajectories=2",
            "refiner.n_moves=1", "refiner.clamp=3.0"]
    run_rollout(compose([*base, "refiner.state_guard=true", f"out={tmp_path}/guard.zarr"]))
    r = open_rollout(tmp_path / "guard.zarr").attrs["refiner"]
    assert r["state_guard"] is True
    states = lambda split: torch.stack([w[0] for w in WindowDataset(f"{data}/{split}.zarr", 1, 1)])
    expected = NearestStateGuard.calibrate(make_schedule("cosine", S), states("train"), states("valid"))
    assert r["state_guard_threshold"] == pytest.approx(expected.threshold, rel=1e-6)
    # a looser quantile is a lower threshold; it is part of the run identity (another store)
    run_rollout(compose([*base, "refiner.state_guard=0.5", f"out={tmp_path}/half.zarr"]))
    assert open_rollout(tmp_path / "half.zarr").attrs["refiner"]["state_guard_threshold"] < expected.threshold
    with pytest.raises(ValueError, match="identity|differ"):
        run_rollout(compose([*base, "refiner.state_guard=0.5", f"out={tmp_path}/guard.zarr"]))


@pytest.mark.parametrize("bad", ["1.5", "big", "-0.1"])
def test_state_guard_refuses_bad_settings(files, tmp_path, bad):
    from sns.cli.rollout import run_rollout

    root, data, sur, den = files
    with pytest.raises(ValueError, match="refiner.state_guard must be"):
        run_rollout(compose([f"surrogate={sur}", f"denoiser={den}", f"data_dir={data}", "n_steps=2",
                             f"refiner.state_guard={bad}", f"out={tmp_path}/bad.zarr"]))
    assert not (tmp_path / "bad.zarr").exists()


def test_state_guard_refuses_a_field_before_loading_a_split():
    """A field system is refused from one window's shape: the split itself is never read."""
    from sns.diffusion import cosine_schedule
    from sns.refine import _state_guard

    class FieldContext:
        def state_shape(self, split):
            return (1, 8, 8)

        def states(self, split, max_states=100_000):
            raise AssertionError(f"the {split} split was loaded before the refusal")

    with pytest.raises(ValueError, match="for vector systems"):
        _state_guard(cosine_schedule(10), True, FieldContext())
