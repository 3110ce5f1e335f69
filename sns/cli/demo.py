"""``sns-demo``: the README's main command, the whole pipeline at CPU scale (config: conf/demo.yaml).

Stages, each a library call with plain arguments, all under ``out_dir``:

1. **data**: the ``cpu`` preset of ``system`` (default: two-scale Lorenz-96 observed through its
   slow variables, in the regime where the next slow state is uncertain given the current one)
   (:func:`sns.data.generate.generate_dataset`; reused when it already exists);
2. **surrogate**: ``sns-train experiment=<experiment> task=surrogate`` (:func:`sns.cli.train.train`)
   for ``train.surrogate.max_steps`` optimizer steps (``max_time``: a wall-clock safety cap; it
   is the budget only where a user sets ``max_steps`` to null);
3. **denoiser**: the SNS pair denoiser, likewise;
4. **rollouts** from the same initial conditions (frame 0 of the test trajectories): first the
   SNS-refined surrogate for ``rollout.n_steps`` steps (``rollout.max_wall_time``: a safety cap),
   then the bare surrogate for ``rollout.surrogate_steps`` steps (default: as many as the refined
   run reached) (:func:`sns.cli.rollout.run_rollout`);
5. **evaluation** against the test split (:func:`sns.evaluation.evaluate`), with the
   ``floor_split`` data split as a row of its own (the sampling floor): a metrics table
   (markdown, CSV, JSON) and figures in ``out_dir/report``.

Every stage is resumable: training continues from ``last.ckpt``, rollouts from their stores
(delete ``out_dir`` to start over).  With step budgets the result is deterministic for a seed.
Example::

    sns-demo                                            # defaults
    sns-demo seed=1 out_dir=outputs/demo-seed1
    sns-demo --config-name demo_kolmogorov              # the pipeline on Kolmogorov flow
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sns.cli import CONFIG_PATH

log = logging.getLogger(__name__)


def _compose(config: str, overrides: list[str]) -> DictConfig:
    """Compose another entry point's config (works inside ``@hydra.main`` too)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    state = GlobalHydra.instance()
    saved = state.hydra if state.is_initialized() else None
    state.clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
            return compose(config_name=config, overrides=overrides)
    finally:
        state.clear()
        if saved is not None:
            state.initialize(saved)


def _train(cfg: DictConfig, task: str, root: Path, data_root: Path) -> Path:
    from sns.cli.train import train

    run = root / task
    file = run / f"{task}.safetensors"
    spec = cfg.train[task]
    if file.exists():
        log.info("%s: reusing %s", task, file)
        return file
    max_steps, max_time = spec.get("max_steps"), spec.get("max_time")
    if max_steps is None and max_time is None:
        raise ValueError(f"train.{task}: give max_steps (optimizer steps) or max_time (DD:HH:MM:SS)")
    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1):
        raise ValueError(f"train.{task}.max_steps must be a positive integer, got {max_steps!r}")
    overrides = [f"experiment={cfg.experiment}", f"task={task}", f"preset={cfg.preset}", f"seed={cfg.seed}",
                 f"paths.data_dir={data_root}", f"paths.run_dir={run}", f"paths.output_dir={run}",
                 f"torch_threads={cfg.num_threads}", "trainer.max_epochs=100000",
                 f"trainer.max_steps={max_steps if max_steps is not None else -1}",
                 f"trainer.max_time={max_time if max_time is not None else 'null'}",
                 "trainer.enable_progress_bar=false", *spec.overrides]
    train_cfg = _compose("train", overrides)
    t0 = time.perf_counter()
    metrics = train(train_cfg)
    log.info("%s trained in %.0f s: %d steps", task, time.perf_counter() - t0, int(metrics.get("global_step", 0)))
    return file


def run_demo(cfg: DictConfig) -> dict[str, Any]:
    """Run every stage of the demo; returns the evaluation report's rows and paths."""
    import torch

    from sns.cli.rollout import run_rollout
    from sns.data.generate import generate_dataset
    from sns.data.io import summary

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    root = Path(hydra.utils.to_absolute_path(str(cfg.out_dir)))
    data_root = root / "data"
    data_dir = data_root / f"{cfg.system}-{cfg.preset}"
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    if not (data_dir / "test.zarr").exists():
        generate_dataset(system=cfg.system, preset=cfg.preset, out=data_dir, seed=int(cfg.seed),
                         overrides=OmegaConf.to_container(cfg.data.overrides), progress=None)
        print(summary(data_dir))
    timings["data"] = time.perf_counter() - t0

    files = {}
    for task in ("surrogate", "denoiser"):
        t0 = time.perf_counter()
        files[task] = _train(cfg, task, root, data_root)
        timings[task] = time.perf_counter() - t0

    r = cfg.rollout
    stores = {"SNS": root / "rollouts" / "sns.zarr", "surrogate": root / "rollouts" / "surrogate.zarr"}
    common = [f"data_dir={data_dir}", "split=test", f"trajectories={r.trajectories}", f"chunk={r.chunk}",
              f"seed={cfg.seed}", f"torch_threads={cfg.num_threads}", f"blowup_factor={r.blowup_factor}"]
    refiner = [f"refiner.{k}={v if v is not None else 'null'}" for k, v in r.refiner.items()]
    t0 = time.perf_counter()
    sns_res = run_rollout(_compose("rollout", [
        f"surrogate={files['surrogate']}", f"denoiser={files['denoiser']}", f"n_steps={r.n_steps}",
        f"max_wall_time={r.max_wall_time}", f"out={stores['SNS']}", *common,
        *refiner]))
    timings["rollout SNS"] = time.perf_counter() - t0
    n_sur = int(r.surrogate_steps) if r.get("surrogate_steps") else max(int(sns_res.steps_done), 1)
    t0 = time.perf_counter()
    run_rollout(_compose("rollout", [f"surrogate={files['surrogate']}", f"n_steps={n_sur}",
                                     f"out={stores['surrogate']}", *common]))
    timings["rollout surrogate"] = time.perf_counter() - t0

    from sns.evaluation import evaluate

    t0 = time.perf_counter()
    e = cfg.evaluate
    rollouts = {k: stores[k] for k in ("surrogate", "SNS")}
    if cfg.get("floor_split"):
        rollouts = {f"{cfg.floor_split} split (floor)": data_dir / f"{cfg.floor_split}.zarr", **rollouts}
    report = evaluate(data_dir / "test.zarr", rollouts, root / "report", **OmegaConf.to_container(e, resolve=True))
    timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    print("\nsns-demo timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"sns-demo: report (metrics.md, metrics.csv, figures) in {root / 'report'}")
    return {"report": report, "timings": timings, "stores": stores, "files": files}


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="demo")
def main(cfg: DictConfig) -> None:
    try:
        run_demo(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"sns-demo: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
