"""sns-demo end to end at toy size: data, both models, both rollouts, the evaluation report
(the default two-scale Lorenz-96 demo, deterministic for a seed, and the Kolmogorov variant)."""

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
        cfg = compose(config_name="demo_kolmogorov", overrides=[
            f"out_dir={tmp_path}/demo", "data.overrides.n_frames=12", "+data.overrides.spinup_steps=50",
            "data.overrides.trajectories={train: 2, valid: 1, test: 1}",
            "train.surrogate.max_steps=4", "train.denoiser.max_steps=4",
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


def _l96_demo(tmp_path, name: str):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="demo", overrides=[
            f"out_dir={tmp_path}/{name}", "+data.overrides.n_frames=40", "+data.overrides.spinup_steps=200",
            "+data.overrides.trajectories={train: 2, valid: 1, test: 1}", "train.surrogate.max_steps=6",
            "train.denoiser.max_steps=6", "rollout.trajectories=1", "rollout.n_steps=30", "rollout.chunk=8", "evaluate.burn=2",
            "evaluate.max_lag=4"])
        small = ["data.batch_size=16", "trainer.limit_val_batches=1"]
        cfg.train.surrogate.overrides = small
        cfg.train.denoiser.overrides = [*small, "diffusion=log_sigma", "model.denoiser.module.val_rollout_steps=0"]
        return cfg


def test_demo_lorenz96_two_scale_step_budgets_are_deterministic(tmp_path):
    """The default demo trains for a number of optimizer steps, refines with estimated levels and
    calibrated proposal noise, reports the train split as the floor, and gives the same numbers
    twice for one seed."""
    from sns.cli.demo import run_demo
    from sns.rollout import open_rollout

    n = torch.get_num_threads()
    try:
        outs = [run_demo(_l96_demo(tmp_path, name)) for name in ("a", "b")]
    finally:
        torch.set_num_threads(n)
    rows = [json.loads((tmp_path / name / "report" / "metrics.json").read_text()) for name in ("a", "b")]
    methods = [r["method"] for r in rows[0]]
    assert methods == ["reference", "train split (floor)", "surrogate", "SNS"]
    for r in rows[0][1:]:
        assert {"w1_mean", "w1_max", "incr_w1", "incr_rms_ratio", "acf_err"} <= set(r)
        assert r["w1_max"] >= r["w1_mean"] >= 0 and r["incr_w1"] >= 0
    sns_row = rows[0][3]
    # (6 training steps: the toy models may blow up; the numbers must still be reproducible)
    assert sns_row["status"] in ("completed", "blowup") and 1 <= sns_row["calls_mean"] <= 5
    # step budgets, not wall clock: both runs trained exactly 6 steps and agree to the last digit
    for r0, r1 in zip(*rows):
        for k, v in r0.items():
            if k != "steps_per_s":
                assert r1[k] == v, (r0["method"], k)
    ds = open_rollout(outs[0]["stores"]["SNS"])
    r = ds.attrs["refiner"]
    assert r["proposal_sigma_auto"] is True and r["proposal_sigma"] > 0 and r["fixed_levels"] is None
    assert (tmp_path / "a" / "report" / "increments.png").exists()


def test_demo_budget_errors(tmp_path):
    from sns.cli.demo import run_demo

    cfg = _l96_demo(tmp_path, "bad")
    cfg.train.surrogate.max_steps = None
    cfg.train.surrogate.max_time = None
    with pytest.raises(ValueError, match="max_steps"):
        run_demo(cfg)
