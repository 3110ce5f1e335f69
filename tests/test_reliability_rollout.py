"""sns-rollout resume safety (issue 16): the run identity holds the model files' content hashes
and every setting that changes the states, so a store is never resumed by another run."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sns.data.generate import generate_dataset
from sns.export import save_model
from sns.rollout import open_rollout
from sns.training import build_model

SMALL = {"n_frames": 40, "spinup_steps": 50, "trajectories": {"train": 2, "valid": 2, "test": 2}}
SPEC = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 8}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("roll")
    data = generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    files = []
    for seed in (0, 1):  # two surrogates of the same architecture, different weights
        torch.manual_seed(seed)
        model = build_model(SPEC)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        files.append(save_model(model, SPEC, root / f"s{seed}.safetensors",
                                {"task": "surrogate", "data": {"system": "lorenz63"}}))
    return root, data, files


def compose(overrides):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return hcompose(config_name="rollout", overrides=overrides)


def _roll(setup, out, *extra, surrogate=0):
    from sns.cli.rollout import run_rollout

    _, data, files = setup
    return run_rollout(compose([f"surrogate={files[surrogate]}", f"data_dir={data}", "n_steps=12", "chunk=4",
                                "trajectories=2", "torch_threads=1", f"out={out}", *extra]))


def test_resume_with_another_model_file_is_refused(setup, tmp_path):
    out = tmp_path / "mix.zarr"
    first = _roll(setup, out, "max_wall_time=0")
    assert first.status == "time_limit" and first.steps_done < 12
    with pytest.raises(ValueError, match=r"identity\.surrogate_sha256: store '[0-9a-f]{64}' vs now '[0-9a-f]{64}'"):
        _roll(setup, out, surrogate=1)
    ds = open_rollout(out)
    assert ds.attrs["rollout_status"] == "time_limit"  # untouched
    from sns.export import file_sha256

    assert ds.attrs["rollout_config"]["identity"]["surrogate_sha256"] == file_sha256(setup[2][0])
    # the same command resumes, and ends where an uninterrupted run ends
    done = _roll(setup, out)
    assert done.status == "completed" and done.resumed_from == first.steps_done
    ref = _roll(setup, tmp_path / "ref.zarr")
    np.testing.assert_array_equal(open_rollout(out)["state"].values, open_rollout(tmp_path / "ref.zarr")["state"].values)
    assert ref.resumed_from is None


def test_same_weights_under_another_name_resume(setup, tmp_path):
    """Identity is the content, not the file name."""
    out = tmp_path / "r.zarr"
    _roll(setup, out, "max_wall_time=0")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(setup[2][0].read_bytes())
    from sns.cli.rollout import run_rollout

    res = run_rollout(compose([f"surrogate={copy}", f"data_dir={setup[1]}", "n_steps=12", "chunk=4",
                               "trajectories=2", "torch_threads=1", f"out={out}"]))
    assert res.status == "completed" and res.resumed_from is not None


def test_resume_with_other_noise_is_refused(setup, tmp_path):
    out = tmp_path / "noise.zarr"
    _roll(setup, out, "max_wall_time=0")
    with pytest.raises(ValueError, match=r"identity\.gaussian\.sigma: store 0\.0 vs now 0\.1"):
        _roll(setup, out, "gaussian.sigma=0.1")
    with pytest.raises(ValueError, match=r"identity\.conserve_mean: store False vs now True"):
        _roll(setup, out, "conserve_mean=true")
    with pytest.raises(ValueError, match=r"seed: store 0 vs now 3"):
        _roll(setup, out, "seed=3")


def test_failed_start_store_does_not_feed_another_run(setup, tmp_path, monkeypatch):
    """A start that failed before its first commit leaves an empty 'running' store; a run of
    another model refuses it (and says it is empty) instead of filling it."""
    from sns.baselines import GaussianApproximation

    out = tmp_path / "failed.zarr"

    def boom(self, x, generator=None):
        raise RuntimeError("simulated failure at the first step")

    with monkeypatch.context() as m:
        m.setattr(GaussianApproximation, "forward", boom)
        with pytest.raises(RuntimeError, match="simulated failure"):
            _roll(setup, out)
    assert open_rollout(out).attrs["rollout_checkpoint"] is None
    with pytest.raises(ValueError, match="surrogate_sha256.*no committed step"):
        _roll(setup, out, surrogate=1)
    assert _roll(setup, out).status == "completed"  # the same run starts it afresh


def test_cli_error_names_what_differs(setup, tmp_path):
    out = tmp_path / "cli.zarr"
    _roll(setup, out, "max_wall_time=0")
    _, data, files = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "sns.cli.rollout", f"surrogate={files[1]}", f"data_dir={data}",
                           "n_steps=12", "chunk=4", "trajectories=2", "torch_threads=1", f"out={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sns-rollout: error:" in proc.stderr and "surrogate_sha256" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_default_out_is_a_function_of_the_inputs(setup, tmp_path):
    from sns.cli.rollout import run_rollout

    _, data, files = setup
    base = [f"surrogate={files[0]}", f"data_dir={data}", "n_steps=12", "chunk=4", "trajectories=2",
            "torch_threads=1", f"out_root={tmp_path / 'outs'}"]
    first = run_rollout(compose([*base, "max_wall_time=0"]))
    assert first.status == "time_limit" and first.path.parent == tmp_path / "outs"
    assert first.path.name.startswith("surrogate-test-") and first.path.suffix == ".zarr"
    again = run_rollout(compose(base))  # the same command: the same store, resumed
    assert again.path == first.path and again.status == "completed" and again.resumed_from == first.steps_done
    other = run_rollout(compose([*base, "gaussian.sigma=0.01"]))
    assert other.path != first.path and other.resumed_from is None
    assert run_rollout(compose([*base, "seed=1"])).path not in (first.path, other.path)


def test_overwrite_never_deletes_a_data_split(setup, tmp_path):
    from sns.data.io import check_store

    data = setup[1]
    split = data / "test.zarr"
    with pytest.raises(ValueError, match=r"refuses to delete .*test\.zarr: it is a data-set split"):
        _roll(setup, split, "overwrite=true")
    with pytest.raises(ValueError, match="not written by sns.rollout"):
        _roll(setup, split)
    check_store(split)  # intact
    assert (data / "test.zarr" / "zarr.json").is_file()
