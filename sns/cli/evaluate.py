"""``sns-evaluate``: compare rollouts of any number of methods with a reference (config:
conf/evaluate.yaml).  The library behind it, with every metric, source and figure, is
:mod:`sns.evaluation` (:func:`sns.evaluation.evaluate` takes plain arguments).

    sns-evaluate reference=data/kolmogorov-cpu/test.zarr +rollouts.sns=r/sns.zarr \\
        +rollouts.surrogate=r/sur.zarr out_dir=outputs/report
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from sns.cli import CONFIG_PATH, check_missing
from sns.evaluation import Source, evaluate  # noqa: F401 - re-exported: the names callers used before

@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        import inspect

        check_missing(cfg)
        kw = OmegaConf.to_container(cfg.options, resolve=True)
        valid = [n for n, p in inspect.signature(evaluate).parameters.items() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(kw) - set(valid))
        if unknown:
            raise ValueError(f"unknown options {', '.join('options.' + k for k in unknown)}; valid choices: {valid}")
        evaluate(cfg.reference, OmegaConf.to_container(cfg.rollouts, resolve=True), cfg.out_dir, **kw)
    except (ValueError, FileNotFoundError) as err:
        print(f"sns-evaluate: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
