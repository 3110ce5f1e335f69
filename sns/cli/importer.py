"""``sns-import``: Hydra entry point that imports foreign trajectories as an ``sns`` data set
(config: conf/import.yaml; library function :func:`sns.data.importer.import_dataset`).

Examples::

    sns-import source=ks.nc out=data/ks dims.trajectory=sample units=1/s
    sns-import source=osc.csv out=data/osc dims.trajectory=run dims.time=t units=1
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from sns.cli import CONFIG_PATH

UNITS_KEYS = ("units", "time_units", "space_units")


def import_kwargs(cfg: DictConfig) -> dict:
    """The keyword arguments of :func:`sns.data.importer.import_dataset` from ``cfg``.

    Units given as bare numbers on the command line (``units=1``, which Hydra reads as an
    integer) are taken as the strings they spell."""
    kw = OmegaConf.to_container(cfg, resolve=True)
    kw.pop("hydra", None)
    for key in UNITS_KEYS:
        v = kw.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            kw[key] = str(v)
    for key in ("source", "out"):
        if kw.get(key) is not None:
            kw[key] = hydra.utils.to_absolute_path(str(kw[key]))
    return kw


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="import")
def main(cfg: DictConfig) -> None:
    from sns.data.importer import import_dataset
    from sns.data.io import summary

    try:
        kw = import_kwargs(cfg)
        out = import_dataset(kw.pop("source"), kw.pop("out"), **kw)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"sns-import: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary(out))


if __name__ == "__main__":
    main()
