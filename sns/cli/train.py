"""``sns-train``: Hydra entry point for training (config: conf/train.yaml).

This is the only place where the training configuration is instantiated
(``hydra.utils.instantiate``): the DataModule, the LightningModule of the selected
``task`` (``model.<task>.module``), callbacks, loggers and the Trainer.  Library classes
receive plain arguments.

Resume is idempotent: with ``ckpt_path=last`` (default) a run whose directory holds
``checkpoints/last.ckpt`` continues from it (global step, optimizer, schedulers, EMA,
loops; a damaged ``last.ckpt`` falls back to the newest readable checkpoint with a warning;
checkpoints are written atomically and read with ``weights_only=True``); give the run a fixed
directory (``paths.run_dir=...``) and re-run the same command after an interruption.  A re-run
of a finished run exports the same EMA weights again and leaves the checkpoints' raw weights
alone.  A resumed run is the uninterrupted one: ``last.ckpt`` is also written at the end of a
fit stopped between two saves (``max_steps``, ``max_time``), a stop mid-epoch is recorded as
such, the training loader's position in the epoch and the torch RNG state are in every
checkpoint (:class:`sns.training.ModelCheckpoint`,
:class:`sns.data.datamodule.ResumableDataLoader`), so the same batches and random numbers
follow and ``max_steps`` / ``max_epochs`` hold exactly; the CSV log continues in one
``csv/version_0/metrics.csv``, its rows after the resumed checkpoint replaced
(:class:`sns.training.CSVLogger`).  At the end, rank 0 exports the (EMA) weights with the
model spec and the data normalisation to ``<run dir>/<task>.safetensors``
(:mod:`sns.export`).

Examples::

    python -m sns.cli.train experiment=lorenz63_cpu
    python -m sns.cli.train experiment=kolmogorov_cpu task=denoiser paths.run_dir=outputs/kd
    python -m sns.cli.train -m experiment=lorenz63_cpu model.surrogate.module.optimizer.lr=1e-3,3e-3
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from sns.cli import CONFIG_PATH, check_cuda, check_fits, check_numbers, instantiation_message

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every entry of a callbacks / logger group that has a ``_target_``."""
    from hydra.utils import instantiate

    if not group:
        return []
    if not isinstance(group, DictConfig):
        raise ValueError(f"the {what} config must be a mapping of name -> config, got {type(group).__name__}")
    return [instantiate(c) for _, c in group.items() if isinstance(c, DictConfig) and "_target_" in c]


TRAINER_INTS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "num_nodes", "check_val_every_n_epoch",
                "num_sanity_val_steps", "log_every_n_steps", "accumulate_grad_batches")
TRAINER_FLOATS = ("limit_train_batches", "limit_val_batches", "val_check_interval", "gradient_clip_val")
OPTIMIZER_FLOATS = ("lr", "weight_decay", "eps", "momentum")


def check_settings(cfg: DictConfig) -> None:
    """Refuse non-numeric trainer / optimizer / seed settings and a GPU accelerator without a
    CUDA device before anything is built or written, naming the key (issue 16)."""
    opt = f"model.{cfg.task}.module.optimizer"
    check_numbers(cfg, ints=("seed", "torch_threads", *(f"trainer.{k}" for k in TRAINER_INTS)),
                  floats=(*(f"trainer.{k}" for k in TRAINER_FLOATS), *(f"{opt}.{k}" for k in OPTIMIZER_FLOATS)))
    check_cuda("trainer.accelerator", cfg.trainer.get("accelerator"))
    for k in ("lr", "weight_decay"):
        value = cfg.model[cfg.task].module.get("optimizer", {}).get(k)
        if value is not None and float(value) < 0:
            raise ValueError(f"{opt}.{k} must be >= 0, got {value!r}")


def _new_log_dirs(loggers: list[Any]) -> list[Path]:
    """The log directories of ``loggers`` that do not exist yet (this run creates them)."""
    dirs = [Path(d) for lg in loggers if (d := getattr(lg, "log_dir", None))]
    return [d for d in dirs if not d.exists()]


def _remove_new_log_dirs(dirs: list[Path], output_dir: Path) -> None:
    """Remove the log directories a failed run created, and their parents below ``output_dir``
    left empty."""
    import shutil

    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        parent = d.parent
        while parent != output_dir and output_dir in parent.parents and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``"last"`` -> the checkpoint a run in ``output_dir`` resumes from
    (:func:`sns.training.checkpoint_io.find_resume_checkpoint`: ``checkpoints/last.ckpt``, or the
    newest readable checkpoint with a warning when it is damaged), None if there is none (fresh
    start); None -> None; any other value must be a readable checkpoint file.

    Every candidate is read with ``torch.load(weights_only=True)``; a refused or unreadable
    file raises ``ValueError`` naming it."""
    from sns.training.checkpoint_io import find_resume_checkpoint, read_checkpoint

    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        return find_resume_checkpoint(Path(output_dir) / "checkpoints")
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path {ckpt_path!r} is not a file; valid choices: 'last', null or a checkpoint path")
    read_checkpoint(ckpt_path)
    return str(ckpt_path)


def checkpoint_step(path: str | Path) -> int:
    """The global step of a checkpoint (read with ``weights_only=True``)."""
    from sns.training.checkpoint_io import read_checkpoint

    return int(read_checkpoint(path).get("global_step", 0))


def resume_logs(loggers: list[Any], global_step: int | None) -> None:
    """Tell the loggers that continue one log across restarts (``resume(step)``, e.g.
    :class:`sns.training.CSVLogger`) the global step the run resumes from (None: a fresh start):
    the rows logged after that checkpoint are replaced, not repeated."""
    for lg in loggers:
        if callable(getattr(lg, "resume", None)):
            lg.resume(global_step)


def data_metadata(data_dir: str | Path) -> dict[str, Any]:
    """System and normalisation of a data set, recorded in exported model files."""
    from sns.data.io import check_store

    attrs = check_store(Path(data_dir) / "train.zarr")
    keys = ("system", "preset", "variable", "norm_offset", "norm_scale", "dt", "save_every")
    return {k: attrs[k] for k in keys if k in attrs}


def _loss_term(c: Any) -> Any:
    """One ``loss_terms`` entry: a divergence term gets its target resolved here
    (:func:`sns.losses.resolve_target`: the data set's dt, normalisation and solver parameters,
    the estimate of target ``data``), then the term is built from plain values; any other term
    is instantiated as it stands."""
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from sns.losses.divergence import TARGET_KEYS, DivergenceRegularizer, resolve_target

    try:
        cls = get_class(c._target_) if isinstance(c, DictConfig) and "_target_" in c else None
    except Exception:  # noqa: BLE001 - a bad _target_: instantiate reports it as for any other term
        cls = None
    if cls is not DivergenceRegularizer:
        return instantiate(c, _convert_="all")
    kw = OmegaConf.to_container(c, resolve=True)
    kw.pop("_target_")
    if "target" not in kw:
        raise ValueError("a DivergenceRegularizer loss term needs target: a number, system:<name> or data")
    facts = {k: kw.pop(k) for k in TARGET_KEYS if k in kw and k != "dt"}
    target = resolve_target(kw.pop("target"), dt=kw.get("dt"), **facts)
    return DivergenceRegularizer(target, **kw)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the module of ``cfg.task``; return the final callback metrics (floats).

    The settings are checked before anything is built (:func:`check_settings`); a run that fails
    before writing a checkpoint removes the log directories it created."""
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    # mandatory settings of the model config itself (the generic models' state_dim / state_shape)
    # and of the data, named before anything is built
    missing = [f"{group}.{k}" for group in ("model", "data") for k in cfg[group]
               if OmegaConf.is_missing(cfg[group], k)]
    if missing:
        raise ValueError(f"missing mandatory setting(s) {', '.join(missing)}: give them on the command line "
                         f"(e.g. {missing[0]}=...)")
    tasks = [k for k, v in cfg.model.items() if isinstance(v, DictConfig) and "module" in v]
    if cfg.task not in tasks:
        raise ValueError(f"unknown task {cfg.task!r} for this model config; valid choices: {tasks}")
    check_settings(cfg)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    pl.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = instantiate(cfg.data)
    module_cfg = cfg.model[cfg.task].module
    terms = module_cfg.get("loss_terms")
    if terms:  # resolved here, in the entry point (data read and solvers built once, not by the terms)
        module = instantiate(module_cfg, loss_terms=[_loss_term(c) for c in terms], _convert_="all")
    else:
        module = instantiate(module_cfg, _convert_="all")
    if cfg.task == "surrogate" or getattr(module.model, "state_shape", None) is not None:
        # a model of another system / dimension: refused here, naming the config and the data set
        check_fits(module.model, datamodule.state_shape, f"model.{cfg.task} ({module.model_spec['kind']})",
                   f"data set {datamodule.data_dir}")
    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = _instantiate_group(cfg.get("logger"), "logger")
    new_logs, ckpts = _new_log_dirs(loggers), _checkpoints(output_dir)
    try:
        return _fit(cfg, datamodule, module, callbacks, loggers, output_dir)
    except BaseException:
        if _checkpoints(output_dir) == ckpts:  # no checkpoint written: leave no log version behind
            _remove_new_log_dirs(new_logs, output_dir)
        raise


def _checkpoints(output_dir: Path) -> dict[str, int]:
    """Name -> mtime of the checkpoints in ``output_dir``."""
    d = output_dir / "checkpoints"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.ckpt")} if d.is_dir() else {}


def _fit(cfg: DictConfig, datamodule: Any, module: Any, callbacks: list[Any], loggers: list[Any],
         output_dir: Path) -> dict[str, float]:
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    from sns.export import save_model
    from sns.training.callbacks import Throughput, averaged_model
    from sns.training.checkpoint_io import AtomicCheckpointIO

    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    progress = cfg.trainer.get("enable_progress_bar")
    if progress is None:
        progress = sys.stderr.isatty()
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      enable_progress_bar=bool(progress), **plugins)
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt:
        log.info("resuming from %s", ckpt)
    resume_logs(loggers, checkpoint_step(ckpt) if ckpt else None)
    n_params = sum(p.numel() for p in module.model.parameters())
    log.info("task %s: %s (%.3fM parameters), output %s", cfg.task, module.model_spec["kind"], n_params / 1e6,
             output_dir)
    t0 = time.perf_counter()
    # weights_only=True: resuming never unpickles anything but tensors and plain containers
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    wall = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["wall_s"] = wall
    metrics["global_step"] = float(trainer.global_step)
    for cb in callbacks:
        if isinstance(cb, Throughput) and cb.seconds > 0:
            metrics["samples_per_s"] = cb.samples_per_s
    if cfg.get("export", True) and trainer.is_global_zero:
        extra = {**module.export_extra(), "data": data_metadata(datamodule.data_dir),
                 "global_step": int(trainer.global_step)}
        # the EMA average itself, not module.model: a re-run of a finished training restores
        # the raw weights into the module and never reaches on_train_end (which copies the
        # average in), so module.model would be the raw weights (issue 16)
        path = save_model(averaged_model(callbacks, module), module.model_spec, output_dir / f"{cfg.task}.safetensors", extra)
        metrics_msg = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        log.info("exported %s; %s", path, metrics_msg)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` (for sweepers)."""
    try:
        metrics = train(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"sns-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except InstantiationException as err:  # a constructor refused its config (data.batch_size=0, ...)
        print(f"sns-train: error: {instantiation_message(err)}", file=sys.stderr)
        sys.exit(2)
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric %r not among the metrics %s", name, sorted(metrics))
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
