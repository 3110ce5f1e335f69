"""Entry points end to end: sns-train (single run + export, multirun, submitit local launcher),
sns-rollout on the exported models, and the optuna search script."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sns.data.generate import generate_dataset
from sns.export import load_model
from sns.rollout import open_rollout


def _installed(module: str) -> bool:
    """``find_spec`` that also says False when a parent package is missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


SMALL = {"n_frames": 80, "spinup_steps": 100, "trajectories": {"train": 3, "valid": 2, "test": 2}}
REPO = Path(__file__).resolve().parents[1]
FAST = ["experiment=lorenz63_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "data.batch_size=32",
        "data.max_val_windows=8", "torch_threads=1", "model.surrogate.val_horizon=5"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    return root


def run(module, *args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", module, *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def compose(config, overrides):
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


def test_train_export_and_rollout(data_root, tmp_path):
    from sns.cli.rollout import run_rollout
    from sns.cli.train import train

    run("sns.cli.train", *FAST, f"paths.data_dir={data_root}", f"paths.run_dir={tmp_path}/sur", cwd=tmp_path)
    n = torch.get_num_threads()
    try:  # the denoiser in-process (the entry point itself is covered above)
        train(compose("train", [*FAST, "task=denoiser", "diffusion.n_levels=10", f"paths.data_dir={data_root}",
                                f"paths.run_dir={tmp_path}/den", f"paths.output_dir={tmp_path}/den",
                                "model.denoiser.module.level_emphasis={low:2,high:5,factor:3.0}"]))
    finally:
        torch.set_num_threads(n)
    sur, extra = load_model(tmp_path / "sur" / "surrogate.safetensors")
    assert extra["task"] == "surrogate" and extra["data"]["system"] == "lorenz63"
    assert extra["global_step"] == 4
    _, dextra = load_model(tmp_path / "den" / "denoiser.safetensors")
    assert dextra["schedule"] == {"name": "cosine", "n_levels": 10, "kwargs": {}}
    ckpt = torch.load(tmp_path / "den" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert dict(ckpt["hyper_parameters"]["level_emphasis"]) == {"low": 2, "high": 5, "factor": 3.0}
    assert (tmp_path / "sur" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "sur" / ".hydra" / "config.yaml").exists()
    metrics = next((tmp_path / "sur" / "csv").glob("version_*/metrics.csv")).read_text()
    assert "val/rollout_rmse" in metrics.splitlines()[0]
    # refined rollout from the exported files alone; the plain surrogate rollout matches the model
    data = str(data_root / "lorenz63-cpu")
    run_rollout(compose("rollout", [f"surrogate={tmp_path}/sur/surrogate.safetensors", f"data_dir={data}",
                                    "n_steps=12", "trajectories=2", f"out={tmp_path}/plain.zarr", "chunk=5"]))
    run("sns.cli.rollout", f"surrogate={tmp_path}/sur/surrogate.safetensors",
        f"denoiser={tmp_path}/den/denoiser.safetensors", f"data_dir={data}", "n_steps=6", "trajectories=2",
        "refiner.fixed_levels=[0,0]", f"out={tmp_path}/sns.zarr", cwd=tmp_path)
    plain = open_rollout(tmp_path / "plain.zarr")
    assert plain.attrs["rollout_status"] == "completed" and plain["state"].shape == (2, 13, 3)
    x = torch.from_numpy(plain["state"].values)
    with torch.no_grad():
        np.testing.assert_allclose(sur(x[:, 0]).numpy(), x[:, 1].numpy(), rtol=1e-6, atol=1e-6)
    refined = open_rollout(tmp_path / "sns.zarr")
    assert refined.attrs["rollout_status"] == "completed"
    assert refined.attrs["refiner"]["fixed_levels"] == [0, 0]
    # fixed levels (0, 0) on path A: 1 (left) + 1 (down) calls per step, no estimation call
    assert (refined["calls"].values[:, 1:] == 2).all()
    np.testing.assert_array_equal(refined["state"].values[:, 0], plain["state"].values[:, 0])
    # estimated levels with strided legs, coupled levels and a per-head leave-it threshold
    run_rollout(compose("rollout", [f"surrogate={tmp_path}/sur/surrogate.safetensors",
                                    f"denoiser={tmp_path}/den/denoiser.safetensors", f"data_dir={data}",
                                    "n_steps=6", "trajectories=2", "refiner.n_moves=2", "refiner.couple_levels=true",
                                    "refiner.skip_threshold=[1,2]", "refiner.eta=0.0", "refiner.clamp=3.0",
                                    f"out={tmp_path}/strided.zarr"]))
    strided = open_rollout(tmp_path / "strided.zarr")
    # (a 4-step denoiser reads high levels: x0_hat is clamped, and only the costs are checked)
    assert strided.attrs["refiner"]["n_moves"] == 2 and strided.attrs["refiner"]["skip_threshold"] == [1, 2]
    calls = strided["calls"].values[:, 1:]
    assert calls.size and (calls >= 1).all() and (calls <= 1 + 2 * 2).all()  # estimation + <= 2 moves per leg
    # proposal noise from the valid split: sqrt(2) x the surrogate's one-step RMSE there
    run_rollout(compose("rollout", [f"surrogate={tmp_path}/sur/surrogate.safetensors",
                                    f"denoiser={tmp_path}/den/denoiser.safetensors", f"data_dir={data}",
                                    "n_steps=2", "trajectories=2", "refiner.proposal_sigma=auto", "refiner.n_moves=1",
                                    "refiner.clamp=3.0", f"out={tmp_path}/auto.zarr"]))
    r = open_rollout(tmp_path / "auto.zarr").attrs["refiner"]
    from sns.data.windows import WindowDataset
    from sns.refine import calibrate_proposal_sigma

    ds = WindowDataset(f"{data}/valid.zarr", history=1, horizon=1, stride=1)
    w = torch.stack([ds[i] for i in range(len(ds))])
    assert r["proposal_sigma_auto"] and r["proposal_sigma"] == pytest.approx(calibrate_proposal_sigma(sur, w[:, 0], w[:, 1]),
                                                                             rel=0.05)
    with pytest.raises(ValueError, match="must be a number or 'auto'"):
        run_rollout(compose("rollout", [f"surrogate={tmp_path}/sur/surrogate.safetensors",
                                        f"denoiser={tmp_path}/den/denoiser.safetensors", f"data_dir={data}",
                                        "refiner.proposal_sigma=big", f"out={tmp_path}/bad.zarr"]))


def test_multirun_two_jobs(data_root, tmp_path):
    proc = run("sns.cli.train", "-m", *FAST, f"paths.data_dir={data_root}", f"paths.log_dir={tmp_path}/logs",
               "model.surrogate.module.optimizer.lr=1e-3,3e-3", "callbacks=none", "~logger", cwd=tmp_path)
    files = sorted((tmp_path / "logs" / "multirun").glob("*/*/*/surrogate.safetensors"))
    assert [f.parent.name for f in files] == ["0", "1"], proc.stderr[-2000:]
    w = [load_model(f)[0].state_dict()["net.net.4.weight"] for f in files]
    assert not torch.equal(w[0], w[1])  # different learning rates, different models


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed")
@pytest.mark.slow  # ~25 s: submitit starts one Python process per job
def test_submitit_local_launcher(data_root, tmp_path):
    run("sns.cli.train", "-m", *FAST, f"paths.data_dir={data_root}", f"paths.log_dir={tmp_path}/logs",
        "launcher=submitit_local", "callbacks=none", "~logger", "seed=1,2", cwd=tmp_path)
    files = sorted((tmp_path / "logs" / "multirun").glob("*/*/*/surrogate.safetensors"))
    assert len(files) == 2


@pytest.mark.skipif(not _installed("optuna"), reason="optuna not installed")
def test_optuna_script(data_root, tmp_path):
    spec = importlib.util.spec_from_file_location("optuna_search", REPO / "scripts" / "optuna_search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_param("a.b=choice:1,2") == ("a.b", "choice", ["1", "2"])
    with pytest.raises(ValueError, match="valid choices"):
        mod.parse_param("a=uniform:1:2")
    n = torch.get_num_threads()
    try:
        rc = mod.main(["--trials", "2", "--out", str(tmp_path / "opt"), "--", *FAST, f"paths.data_dir={data_root}",
                       "callbacks=none", "~logger"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    assert len(list((tmp_path / "opt").glob("trial_*/surrogate.safetensors"))) == 2
