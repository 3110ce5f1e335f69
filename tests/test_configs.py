"""Compose every experiment config for both tasks, shrink it and instantiate all its objects."""

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sns.cli import CONFIG_PATH
from sns.cli.train import _instantiate_group
from sns.data.datamodule import WindowDataModule
from sns.nets.unet import surrogate_unet_config, unet_config
from sns.training import PairDenoiserModule, PDERefinerModule, SurrogateModule, resolve_spec


def _installed(module: str) -> bool:
    """``find_spec`` that also says False when a parent package is missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_PATH) / "experiment").glob("*.yaml"))
STATE = {"lorenz63": (3,), "lorenz96": (40,), "lorenz96_two_scale_cpu": (8,), "kolmogorov_cpu": (1, 32, 32), "kolmogorov_paper": (1, 64, 64),
         "qg_cpu": (2, 32, 32), "qg_paper": (2, 64, 64),
         "generic_vector": (5,), "generic_field": (2, 16, 8)}  # generic: the shapes given below
# Reduced sizes for the U-Nets (the paper models have 45-240M parameters).
SHRINK_UNET = {"dim": 8, "dim_mults": "[1,2]", "n_blocks": 1}
SHRINK_PAIR = {**SHRINK_UNET, "emb_dim": 16, "head_features": 16, "head_hidden": 16, "attn_levels": "[]"}


def compose_train(overrides, tmp_path, return_hydra_config=False):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(config_name="train", return_hydra_config=return_hydra_config, overrides=[
            *overrides, f"paths.output_dir={tmp_path}", f"paths.run_dir={tmp_path}"])


def shrink(experiment, task):
    """Overrides that make a config instantiable on a CPU in a second."""
    out = ["trainer.accelerator=cpu", "trainer.devices=1", "diffusion.n_levels=10"]
    kind = "sur" if task in ("surrogate", "neural_ode") else "pair"
    if experiment == "generic_vector":  # imported data: the data directory and the state shape are given
        out += ["data.data_dir=data/generic-imported", "model.state_dim=5"]
    if experiment == "generic_field":
        out += ["data.data_dir=data/generic-imported", "model.state_shape=[2,16,8]"]
    if experiment.startswith(("kolmogorov", "qg", "generic_field")):
        for k, v in (SHRINK_PAIR if kind == "pair" else SHRINK_UNET).items():
            out.append(f"++model.{task}.module.net.kwargs.{k}={v}")
    return out


def test_experiment_list():
    assert set(EXPERIMENTS) >= {"kolmogorov_paper", "kolmogorov_cpu", "qg_paper", "qg_cpu", "lorenz63_cpu",
                                "lorenz96_cpu"}


# Every benchmark's model config trains SNS (surrogate + denoiser) and the baselines.
BENCHMARK_TASKS = ["surrogate", "denoiser", "acdm", "thermalizer", "pde_refiner"]
MODULES = {"surrogate": SurrogateModule, "pde_refiner": PDERefinerModule}


@pytest.mark.parametrize("task", BENCHMARK_TASKS)
@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if not e.startswith("node_")])
def test_compose_and_instantiate(experiment, task, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"task={task}", *shrink(experiment, task)], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.task == task and cfg.data.horizon >= 1
    dm = instantiate(cfg.data)
    assert isinstance(dm, WindowDataModule)
    system = cfg.system.name
    assert str(dm.data_dir).endswith(f"{system}-{cfg.preset}")
    module = instantiate(cfg.model[task].module, _convert_="all")
    assert isinstance(module, MODULES.get(task, PairDenoiserModule))
    callbacks = _instantiate_group(cfg.callbacks, "callbacks")
    loggers = _instantiate_group(cfg.logger, "logger")
    assert {type(c).__name__ for c in callbacks} >= {"ModelCheckpoint", "EMAWeightAveraging", "Throughput"}
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, enable_progress_bar=False)
    assert isinstance(trainer, pl.Trainer)
    ema = next(c for c in callbacks if type(c).__name__ == "EMAWeightAveraging")
    assert cfg.callbacks.ema.decay == cfg.model[task].ema_decay == (0.995 if task in ("surrogate", "pde_refiner")
                                                                    else 0.999)
    assert ema is not None
    # hyper-parameters are plain containers (torch.load(weights_only=True) reads them)
    torch.save(dict(module.hparams), tmp_path / "hp.pt")
    torch.load(tmp_path / "hp.pt", weights_only=True)
    # the model runs on a batch of the data's state shape
    key = experiment if experiment in STATE else experiment.split("_")[0]
    x = torch.randn(2, *STATE[key])
    with torch.no_grad():
        if task == "surrogate":
            assert torch.equal(module(x), x)  # zero-initialised residual: identity
            # cpu field presets conserve the spatial mean; the paper presets are as published
            assert getattr(module.model, "conserve_mean", False) == (experiment in ("kolmogorov_cpu", "qg_cpu"))
            assert cfg.data.horizon == cfg.model.surrogate.module.unroll_max
        else:
            S = module.model.n_levels
            levels = torch.zeros(2, dtype=torch.long)
            out = module.model(x, x, i2=levels, i1=levels)
            assert out.eps_next.shape == x.shape and out.logits_i1.shape == (2, S)
            expected = {"denoiser": 10, "thermalizer": 10, "pde_refiner": 4,
                        "acdm": 200 if experiment.startswith("kolmogorov") else 100}[task]
            assert S == expected
            assert module.model.blind == (task in ("denoiser", "thermalizer"))


@pytest.mark.parametrize("name,system", [("paper-kolmogorov", "kolmogorov"), ("paper-qg", "qg")])
def test_paper_models_follow_the_reference_configs(name, system, tmp_path):
    """Unshrunk paper configs resolve to the sns.nets presets (GPU-sized; not built here)."""
    exp = f"{system}_paper"
    sur = compose_train([f"experiment={exp}"], tmp_path).model.surrogate
    assert resolve_spec(OmegaConf.to_container(sur.module.net, resolve=True))["kwargs"] == {
        k: list(v) if isinstance(v, tuple) else v for k, v in surrogate_unet_config(name).items()}
    assert sur.module.optimizer.lr == 5e-5 and sur.module.optimizer.weight_decay == 0.05
    assert sur.ema_decay == 0.995 and sur.module.input_noise == 1e-4
    assert sur.module.unroll_max == (1 if system == "kolmogorov" else 4)
    cfg = compose_train([f"experiment={exp}", "task=denoiser"], tmp_path)
    spec = resolve_spec(OmegaConf.to_container(cfg.model.denoiser.module.net, resolve=True))
    ref = unet_config(name)
    assert spec["kwargs"]["n_levels"] == 1000 == ref["n_levels"] == cfg.diffusion.n_levels
    assert spec["kwargs"]["dim"] == ref["dim"] and spec["kwargs"]["emb_dim"] == ref["emb_dim"]
    assert cfg.trainer.gradient_clip_val == (1.0 if system == "kolmogorov" else 0.5)
    assert cfg.data.batch_size == 64 and cfg.trainer.accelerator == "gpu"


def test_bad_task_is_refused(tmp_path):
    from sns.cli.train import train

    cfg = compose_train(["experiment=lorenz63_cpu"], tmp_path)
    cfg.task = "no_such_task"
    with pytest.raises(ValueError, match="valid choices"):
        train(cfg)


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed")
def test_slurm_launcher_config(tmp_path):
    cfg = compose_train(["experiment=kolmogorov_paper", "launcher=slurm", "trainer.devices=4"], tmp_path,
                        return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 4 == launcher.gpus_per_node  # one SLURM task per GPU
    assert launcher.max_num_timeout > 0  # requeue on timeout / preemption
    assert cfg.trainer.strategy == "ddp" and cfg.ckpt_path == "last"
    assert cfg.trainer.plugins[0].auto_requeue is False
    assert "submitit" in launcher._target_.lower()


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_optuna_sweeper"),
                    reason="hydra-optuna-sweeper not installed (extra optuna-sweeper, pins optuna 2.10; see scripts/optuna_search.py)")
def test_optuna_sweeper_config(tmp_path):
    cfg = compose_train(["experiment=lorenz63_cpu", "hparams_search=optuna"], tmp_path, return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "minimize"
