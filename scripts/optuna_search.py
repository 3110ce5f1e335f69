#!/usr/bin/env python
"""Hyper-parameter search for ``sns-train`` with current optuna (>= 3).

hydra-optuna-sweeper (conf/hparams_search/optuna.yaml) pins optuna < 3; this script does
the same job with the optuna API: each trial composes conf/train.yaml with the fixed
overrides plus the sampled values, trains in this process (:func:`sns.cli.train.train`)
in ``<out>/trial_<n>`` and reports ``--metric`` (minimised).  With ``--storage`` (e.g.
``sqlite:///study.db``) a study can be resumed or shared by several workers.

Example::

    python scripts/optuna_search.py --trials 20 --out outputs/optuna-l63 \\
        --param model.surrogate.module.optimizer.lr=log:1e-5:1e-2 \\
        --param data.batch_size=choice:64,128,256 \\
        -- experiment=lorenz63_cpu trainer.max_epochs=3

Parameter syntax: ``key=log:low:high`` (log-uniform float), ``key=float:low:high``,
``key=int:low:high``, ``key=choice:a,b,c``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

DEFAULT_PARAMS = ("model.surrogate.module.optimizer.lr=log:1e-5:1e-2",
                  "model.surrogate.module.optimizer.weight_decay=float:0.0:0.1")


def parse_param(text: str) -> tuple[str, str, list[str]]:
    """``"key=kind:args"`` -> ``(key, kind, args)``; raises ``ValueError`` naming valid kinds."""
    if "=" not in text or ":" not in text.split("=", 1)[1]:
        raise ValueError(f"bad --param {text!r}; expected key=kind:args with kind in log, float, int, choice")
    key, spec = text.split("=", 1)
    kind, args = spec.split(":", 1)
    if kind == "choice":
        return key, kind, args.split(",")
    if kind not in ("log", "float", "int"):
        raise ValueError(f"unknown parameter kind {kind!r} in {text!r}; valid choices: log, float, int, choice")
    parts = args.split(":")
    if len(parts) != 2:
        raise ValueError(f"bad range in {text!r}; expected {kind}:low:high")
    return key, kind, parts


def suggest(trial: Any, key: str, kind: str, args: list[str]) -> Any:
    if kind == "choice":
        return trial.suggest_categorical(key, args)
    if kind == "int":
        return trial.suggest_int(key, int(args[0]), int(args[1]))
    return trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == "log")


def main(argv: list[str] | None = None) -> int:
    import optuna
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH
    from sns.cli.train import train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", default="outputs/optuna")
    p.add_argument("--metric", default="val/loss")
    p.add_argument("--study-name", default="sns")
    p.add_argument("--storage", default=None, help="optuna storage URL (default: in memory)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--param", action="append", default=None, help="search dimension (see module docstring)")
    p.add_argument("overrides", nargs="*", help="fixed Hydra overrides of conf/train.yaml")
    args = p.parse_args(argv)
    space = [parse_param(t) for t in (args.param or DEFAULT_PARAMS)]
    out = Path(args.out).resolve()

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, kind, a) for key, kind, a in space}
        run_dir = out / f"trial_{trial.number:04d}"
        overrides = [*args.overrides, *(f"{k}={v}" for k, v in values.items()),
                     f"paths.run_dir={run_dir}", f"paths.output_dir={run_dir}"]
        with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        metrics = train(cfg)
        value = metrics.get(args.metric, math.nan)
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{args.metric} = {value} (metrics: {sorted(metrics)})")
        return value

    sampler = optuna.samplers.TPESampler(seed=args.seed)
    study = optuna.create_study(study_name=args.study_name, storage=args.storage, sampler=sampler,
                                direction="minimize", load_if_exists=args.storage is not None)
    study.optimize(objective, n_trials=args.trials)
    best = study.best_trial
    print(f"best trial {best.number}: {args.metric} = {best.value:.6g} with {best.params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
