"""sns-demo end to end at toy size: data, both models, both rollouts, the evaluation report."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from sns.cli import CONFIG_PATH

TINY_NET = ["++model.{t}.module.net.kwargs.dim=8", "++model.{t}.module.net.kwargs.dim_mults=[1,2]"]


@pytest.fixture()
def demo_cfg(tmp_path):
    pair = [o.format(t="denoiser") for o in TINY_NET] + [
        "++model.denoiser.module.net.kwargs.mid_attn=false", "++model.denoiser.module.net.kwargs.emb_dim=16",
        "++model.denoiser.module.net.kwargs.head_features=16", "++model.denoiser.module.net.kwargs.head_hidden=16",
        "diffusion.n_levels=10", "trainer.limit_train_batches=2", "data.max_val_windows=4"]
    sur = [o.format(t="surrogate") for o in TINY_NET] + ["trainer.limit_train_batches=2", "data.max_val_windows=4"]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="demo", overrides=[
            f"out_dir={tmp_path}/demo", "data.overrides.n_frames=12", "+data.overrides.spinup_steps=50",
            "data.overrides.trajectories={train: 2, valid: 1, test: 1}",
            "train.surrogate.max_time=00:00:00:08", "train.denoiser.max_time=00:00:00:08",
            "rollout.trajectories=1", "rollout.n_steps=6", "rollout.chunk=3", "rollout.max_wall_time=60"])
    cfg.train.surrogate.overrides = sur
    cfg.train.denoiser.overrides = pair
    return cfg


def test_demo_pipeline(demo_cfg, tmp_path):
    from sns.cli.demo import run_demo

    n = torch.get_num_threads()
    try:
        out = run_demo(demo_cfg)
    finally:
        torch.set_num_threads(n)
    root = tmp_path / "demo"
    for task in ("surrogate", "denoiser"):
        assert (root / task / f"{task}.safetensors").exists()
    report = root / "report"
    assert (report / "metrics.md").exists() and (report / "metrics.csv").exists()
    table = (report / "metrics.md").read_text()
    assert "SNS" in table and "surrogate" in table
    rows = json.loads((report / "metrics.json").read_text())
    assert rows  # one entry per method at least
    pngs = sorted(report.glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(out["timings"]) >= {"data", "surrogate", "denoiser", "rollout SNS", "rollout surrogate", "evaluate"}
    # the demo's files rolled out with sns.constraints.ConserveMean (sns-rollout conserve_mean=true):
    # every state keeps its initial condition's spatial mean, the call count is the method's
    from sns.cli.rollout import run_rollout
    from sns.rollout import open_rollout

    data_dir = next((root / "data").glob("kolmogorov-*"))
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        rcfg = compose(config_name="rollout", overrides=[
            f"surrogate={root / 'surrogate' / 'surrogate.safetensors'}",
            f"denoiser={root / 'denoiser' / 'denoiser.safetensors'}", "refiner.fixed_levels=[0,0]",
            f"data_dir={data_dir}", "trajectories=1", "n_steps=5", "conserve_mean=true", "torch_threads=1",
            f"out={tmp_path / 'cm.zarr'}"])
    try:
        res = run_rollout(rcfg)
    finally:
        torch.set_num_threads(n)
    ds = open_rollout(tmp_path / "cm.zarr")
    assert res.status == "completed" and ds.attrs["conserve_mean"] is True and res.calls_mean == 2
    means = ds["state"].values.astype("float64").mean(axis=(-2, -1))  # (trajectory, time, channel)
    assert abs(means - means[:, :1]).max() < 1e-5
