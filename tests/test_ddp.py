"""Two-process DDP on CPU (gloo) through the real entry point: Lightning launches the second
rank by re-running the Hydra command; both ranks train, rank 0 checkpoints and exports."""

import os
import subprocess
import sys

import pytest
import torch

from sns.data.generate import generate_dataset
from sns.export import load_model

SMALL = {"n_frames": 80, "spinup_steps": 100, "trajectories": {"train": 3, "valid": 2, "test": 1}}


def ddp_args(tmp_path, epochs):
    return ["experiment=lorenz63_cpu", "trainer=ddp_cpu", f"trainer.max_epochs={epochs}",
            "trainer.limit_train_batches=3", "data.batch_size=16", "data.max_val_windows=8",
            "model.surrogate.val_horizon=4", "torch_threads=1", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.run_dir={tmp_path / 'run'}"]


def run_train(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "sns.cli.train", *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_ddp_two_cpu_processes(tmp_path):
    generate_dataset("lorenz63", "cpu", out=tmp_path / "data" / "lorenz63-cpu", overrides=SMALL, progress=None)
    run_dir = tmp_path / "run"
    out = run_train(ddp_args(tmp_path, 2), tmp_path)
    assert "Starting with 2 processes" in out and "distributed_backend=gloo" in out, out[-3000:]
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # 3 train windows-batches per process and epoch: the global step counts optimizer steps
    assert ck["global_step"] == 6
    _, extra = load_model(run_dir / "surrogate.safetensors")
    assert extra["global_step"] == 6


@pytest.mark.slow  # ~45 s
def test_ddp_resume(tmp_path):
    generate_dataset("lorenz63", "cpu", out=tmp_path / "data" / "lorenz63-cpu", overrides=SMALL, progress=None)
    run_train(ddp_args(tmp_path, 1), tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    run_train(ddp_args(tmp_path, 2), tmp_path)  # one more epoch continues from step 3
    ck = torch.load(last, weights_only=True)
    assert ck["global_step"] == 6 and ck["optimizer_states"][0]["state"][0]["step"] == 6
