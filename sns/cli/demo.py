"""``sns-demo``: the README's main command (config: conf/demo.yaml).

Generates a small Kolmogorov-flow data set with the built-in solver and prints
its summary (system, parameters, shapes, statistics, normalisation).
"""

from __future__ import annotations

import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from sns.cli import CONFIG_PATH


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="demo")
def main(cfg: DictConfig) -> None:
    from sns.data.generate import generate_dataset
    from sns.data.io import summary

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))

    t0 = time.perf_counter()
    out = generate_dataset(
        system=cfg.system,
        preset=cfg.preset,
        out=hydra.utils.to_absolute_path(cfg.out),
        seed=int(cfg.seed),
        overwrite=bool(cfg.overwrite),
        overrides=OmegaConf.to_container(cfg.overrides),
    )
    print(summary(out))
    print(f"sns-demo: data set written to {out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
