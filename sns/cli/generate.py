"""``sns-generate``: Hydra entry point for data-set generation (config: conf/generate.yaml)."""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from sns.cli import CONFIG_PATH, check_cuda, check_numbers


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="generate")
def main(cfg: DictConfig) -> None:
    from sns.data.generate import GenerationLocked, generate_dataset
    from sns.data.io import summary

    try:
        check_numbers(cfg, ints=("seed", "batch_size", "num_threads", "shard.index", "shard.count"))
        check_cuda("device", cfg.device)
        if cfg.get("num_threads"):
            torch.set_num_threads(int(cfg.num_threads))
        out = generate_dataset(
            system=cfg.system.name,
            preset=cfg.preset,
            out=hydra.utils.to_absolute_path(cfg.out),
            seed=int(cfg.seed),
            overwrite=bool(cfg.overwrite),
            batch_size=int(cfg.batch_size),
            dtype=cfg.system.dtype,
            device=cfg.device,
            params=OmegaConf.to_container(cfg.system.params),
            overrides=_drop_nulls(OmegaConf.to_container(cfg.overrides)),
            shard=(int(cfg.shard.index), int(cfg.shard.count)),
        )
    except (ValueError, FileExistsError, GenerationLocked) as err:
        print(f"sns-generate: error: {err}", file=sys.stderr)
        sys.exit(2)
    if (out / "train.zarr").exists():
        print(summary(out))


def _drop_nulls(d: dict) -> dict:
    """Remove ``None`` entries (recursively, and sub-dicts left empty)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_nulls(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


if __name__ == "__main__":
    main()
