"""Training: residual surrogate, DataModule, Lightning modules, loss-term plug-in, EMA, resume."""

import warnings

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import EMAWeightAveraging

from sns.cli import CONFIG_PATH
from sns.data.datamodule import WindowDataModule
from sns.data.generate import generate_dataset
from sns.surrogates import ResidualSurrogate, VectorMLP, last_layer
from sns.training import PairDenoiserModule, SurrogateModule, UnrollSchedule, build_model

SMALL = {"n_frames": 120, "spinup_steps": 100, "trajectories": {"train": 4, "valid": 2, "test": 1}}
MLP_SUR = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 32, "n_layers": 3}}
MLP_DEN = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": 10, "width": 32, "n_enc": 1, "n_dec": 1}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    return root


def trainer(**kw):
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("enable_model_summary", False)
    kw.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(**kw)


# ----------------------------------------------------------------------------- surrogate


def test_residual_surrogate_starts_at_identity():
    torch.manual_seed(0)
    for net, x in ((VectorMLP(3, 16), torch.randn(5, 3)),
                   (build_model({"kind": "residual_unet", "preset": "tiny"}).net, torch.randn(2, 1, 16, 16))):
        sur = ResidualSurrogate(net)
        assert torch.equal(sur(x), x)
        assert float(last_layer(net).weight.detach().abs().sum()) == 0.0
        # one gradient step on a target moves it off the identity
        opt = torch.optim.SGD(sur.parameters(), lr=0.1)
        ((sur(x) - (x + 1.0)) ** 2).mean().backward()
        opt.step()
        assert not torch.equal(sur(x), x)
    with pytest.raises(ValueError, match="preserve the shape"):
        ResidualSurrogate(torch.nn.Linear(3, 2))(torch.randn(1, 3))
    with pytest.raises(ValueError, match="no Linear or Conv"):
        ResidualSurrogate(torch.nn.Identity())


def test_residual_surrogate_conserves_the_spatial_mean():
    """conserve_mean: every step keeps each channel's spatial mean; the spec carries the flag."""
    torch.manual_seed(0)
    spec = {"kind": "residual_unet", "preset": "tiny", "kwargs": {"conserve_mean": True, "in_channels": 2,
                                                                    "out_channels": 2}}
    sur = build_model(spec)
    assert sur.conserve_mean
    last = last_layer(sur.net)
    with torch.no_grad():
        last.weight.normal_(0, 0.1)
        last.bias.fill_(0.5)  # a biased increment: the plain surrogate would shift the mean by 0.5 a step
    x = torch.randn(3, 2, 16, 16) + torch.tensor([1.0, -2.0]).reshape(1, 2, 1, 1)
    y = x
    for _ in range(20):
        y = sur(y)
    torch.testing.assert_close(y.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    assert float((y - x).abs().max()) > 0.1  # the field itself changed
    plain = build_model({**spec, "kwargs": {**spec["kwargs"], "conserve_mean": False}})
    plain.load_state_dict(sur.state_dict())
    assert float((plain(x) - x).mean(dim=(-2, -1)).abs().min()) > 0.1
    with pytest.raises(ValueError, match="field states"):
        ResidualSurrogate(VectorMLP(3, 8), conserve_mean=True)(torch.randn(2, 3))


def test_unroll_schedule():
    s = UnrollSchedule(start=1, max_length=4, every=10)
    assert [s(k) for k in (0, 9, 10, 25, 30, 1000)] == [1, 1, 2, 3, 4, 4]
    assert UnrollSchedule(2, 5, 0)(10**6) == 2
    with pytest.raises(ValueError, match="max_length"):
        UnrollSchedule(3, 2, 1)


def test_truncated_backprop_and_input_noise():
    torch.manual_seed(0)
    batch = torch.randn(8, 4, 3)

    def grads(**kw):
        torch.manual_seed(1)
        m = SurrogateModule(MLP_SUR, unroll_start=3, unroll_max=3, input_noise=0.0, **kw)
        with torch.no_grad():  # leave the identity so that the steps interact
            last_layer(m.model.net).weight.normal_(0, 0.3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = m.training_step(batch, 0)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in m.parameters()])

    l_full, g_full = grads()
    l_trunc, g_trunc = grads(truncate_every=1)
    assert torch.allclose(l_full, l_trunc)  # same forward pass
    assert not torch.allclose(g_full, g_trunc, rtol=1e-3)  # different gradients
    _, g_two = grads(truncate_every=3)  # window of the whole unroll = full backprop
    assert torch.allclose(g_two, g_full)
    # input noise: deterministic without, random with
    m = SurrogateModule(MLP_SUR, input_noise=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(m.training_step(batch, 0), m.training_step(batch, 0))
        m.input_noise = 0.1
        assert not torch.equal(m.training_step(batch, 0), m.training_step(batch, 0))
    with pytest.raises(ValueError, match="horizon"):
        SurrogateModule(MLP_SUR, unroll_start=4, unroll_max=4).training_step(batch[:, :3], 0)


def test_module_validation_errors():
    with pytest.raises(ValueError, match="trains a surrogate"):
        SurrogateModule(MLP_DEN)
    with pytest.raises(ValueError, match="S=20"):
        PairDenoiserModule(MLP_DEN, n_levels=20)
    with pytest.raises(ValueError, match="unknown model kind"):
        SurrogateModule({"kind": "resnet"})
    with pytest.raises(ValueError, match="valid choices"):
        PairDenoiserModule(MLP_DEN, n_levels=10, pairs="some")


# ----------------------------------------------------------------------------- data


def test_datamodule(data_root):
    dm = WindowDataModule(data_root / "lorenz63-cpu", horizon=3, val_horizon=5, batch_size=16,
                          max_val_windows=7)
    dm.setup("fit")
    assert len(dm.train_set) == 4 * (120 - 4 + 1)
    b = next(iter(dm.train_dataloader()))
    assert b.shape == (16, 4, 3) and b.dtype == torch.float32
    vb = next(iter(dm.val_dataloader()))
    assert vb.shape == (7, 6, 3)  # 7 evenly spaced windows of 1 + 5 frames
    assert dm.state_shape == (3,)
    dl = WindowDataModule(data_root / "lorenz63-cpu", num_workers=1, start_method="spawn",
                          batch_size=8).train_dataloader()
    assert dl.persistent_workers and dl.multiprocessing_context.get_start_method() == "spawn"
    with pytest.raises(ValueError, match="valid choices"):
        WindowDataModule(data_root, start_method="thread")
    with pytest.raises(FileNotFoundError, match="sns-generate"):
        WindowDataModule(data_root / "nothing").setup("fit")


def test_epoch_sampler_and_resumable_loader(data_root):
    """The training order is a function of (seed, epoch) alone; DDP ranks split it; a loader
    resumed from its state continues the epoch with the remaining batches."""
    from sns.data.datamodule import EpochSampler, ResumableDataLoader

    data = list(range(10))
    s = EpochSampler(data, seed=3)
    assert sorted(s.order(0)) == data and s.order(0) == EpochSampler(data, seed=3).order(0)
    assert s.order(0) != s.order(1) and s.order(0) != EpochSampler(data, seed=4).order(0)
    s.set_epoch(1)
    assert list(s) == s.order(1)
    ranks = [EpochSampler(data, seed=3, num_replicas=3, rank=r).order(0) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4] and {i for r in ranks for i in r} == set(data)  # padded to 12
    dm = WindowDataModule(data_root / "lorenz63-cpu", batch_size=16, seed=5)
    full = [b.clone() for b in dm.train_dataloader()]
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert loader.state_dict() == {"epoch": 0, "batches": 3}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 3 and all(torch.equal(a, b) for a, b in zip(rest, full[3:]))
    assert resumed.state_dict() == {"epoch": 0, "batches": len(full)}
    assert len(list(resumed)) == len(full)  # the next iteration is a whole epoch again


# ----------------------------------------------------------------------------- fitting


class Penalty:
    """A plug-in loss term: weight * mean squared prediction (any module, any batch)."""

    name = "penalty"

    def __init__(self, weight):
        self.weight = weight

    def __call__(self, module, batch, outputs):
        value = self.weight * outputs["inputs"].pow(2).mean()
        return value, {"base": outputs["loss"].detach()}


def test_surrogate_fit_unroll_ema_and_loss_term(data_root):
    torch.manual_seed(0)
    dm = WindowDataModule(data_root / "lorenz63-cpu", horizon=3, val_horizon=8, batch_size=32,
                          max_val_windows=16)
    m = SurrogateModule(MLP_SUR, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), unroll_start=1,
                        unroll_max=3, unroll_every=10, val_rollout_steps=8, loss_terms=[Penalty(0.01)])
    ema = EMAWeightAveraging(decay=0.9)
    t = trainer(max_steps=40, limit_train_batches=20, callbacks=[ema])
    t.fit(m, datamodule=dm)
    cm = t.callback_metrics
    assert t.global_step == 40
    assert float(cm["train/unroll"]) == 3.0  # 1 -> 3 over 40 steps (every 10)
    for key in ("val/loss", "val/rmse_1", "val/rmse_8", "val/rollout_rmse", "train/penalty", "train/penalty_base"):
        assert key in cm, key
    # the rollout error grows with the horizon; one-step RMSE^2 is the one-step MSE
    assert float(cm["val/rmse_8"]) > float(cm["val/rmse_1"])
    assert abs(float(cm["val/rmse_1"]) ** 2 - float(cm["val/loss"])) < 1e-4 + 1e-3 * float(cm["val/loss"])
    # trained better than persistence (the identity the surrogate starts from)
    vb = next(iter(dm.val_dataloader()))
    persistence = float(((vb[:, 1] - vb[:, 0]) ** 2).mean())
    assert float(cm["val/loss"]) < 0.7 * persistence
    # after fit the module holds the EMA weights
    avg = ema._average_model.module.model.state_dict()
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, avg[k])


def test_denoiser_fit_logs_parts(data_root):
    torch.manual_seed(0)
    dm = WindowDataModule(data_root / "lorenz63-cpu", horizon=2, val_horizon=2, batch_size=64, max_val_windows=32)
    m = PairDenoiserModule(MLP_DEN, n_levels=10, pairs="all", val_rollout_steps=2,
                           optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    t = trainer(max_steps=80, limit_train_batches=80)
    t.fit(m, datamodule=dm)
    cm = t.callback_metrics
    for key in ("train/mse", "train/ce_i1", "train/ce_i2", "val/loss", "val/mse", "val/acc_i1", "val/level_mae_i2",
                "val/rollout_rmse"):
        assert key in cm, key
    # the noise predictor learns fast (untrained: ~1, predicting zero noise); the level heads
    # learn slowly on this data (DESIGN.md section 5) and stay near chance (log 10 = 2.30) here
    assert float(cm["val/mse"]) < 0.7
    assert float(cm["val/ce_i1"]) < 2.4 and float(cm["val/ce_i2"]) < 2.4
    # validation is deterministic (fixed generator): the same weights give the same numbers
    r1 = t.validate(m, datamodule=dm, verbose=False)[0]
    r2 = t.validate(m, datamodule=dm, verbose=False)[0]
    assert r1["val/loss"] == r2["val/loss"]


# ----------------------------------------------------------------------------- resume


def compose_train(data_root, run_dir, *overrides):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(config_name="train", overrides=[
            "experiment=lorenz63_cpu", f"paths.data_dir={data_root}", f"paths.run_dir={run_dir}",
            f"paths.output_dir={run_dir}", "logger=csv", "trainer.limit_train_batches=3", "data.batch_size=32",
            "trainer.log_every_n_steps=1", "callbacks.throughput.log_every=1", *overrides])


def test_resume_continues_step_optimizer_and_ema(data_root, tmp_path):
    from sns.cli.train import train

    run = tmp_path / "run"
    m1 = train(compose_train(data_root, run, "trainer.max_epochs=2"))
    assert m1["global_step"] == 6
    last = run / "checkpoints" / "last.ckpt"
    ck1 = torch.load(last, weights_only=True)  # plain containers only
    assert ck1["global_step"] == 6
    assert ck1["optimizer_states"][0]["state"][0]["step"] == 6
    assert "current_model_state" in ck1 and "averaging_state" in ck1  # EMA in the checkpoint
    m2 = train(compose_train(data_root, run, "trainer.max_epochs=3"))
    assert m2["global_step"] == 9  # continued, not restarted
    ck2 = torch.load(last, weights_only=True)
    assert ck2["epoch"] == 2 and ck2["optimizer_states"][0]["state"][0]["step"] == 9
    ema_state = next(v for k, v in ck2["callbacks"].items() if "EMAWeightAveraging" in k)
    assert ema_state["latest_update_step"] == 9
    assert (run / "surrogate.safetensors").exists()
    # the same command again: nothing left to do, still step 9 (idempotent)
    m3 = train(compose_train(data_root, run, "trainer.max_epochs=3"))
    assert m3["global_step"] == 9
    # ckpt_path=null starts fresh in the same directory
    m4 = train(compose_train(data_root, tmp_path / "fresh", "trainer.max_epochs=1", "ckpt_path=null"))
    assert m4["global_step"] == 3
