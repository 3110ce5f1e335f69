"""``sns-traces``: many synthetic traces from a few real ones, with a validation report (config:
conf/traces.yaml; library function :func:`sns.traces.make_traces`).

Examples::

    sns-traces input=sensor.csv columns=[x] dt=0.01 denoise=bayes out_dir=outputs/traces
    sns-traces input=data/lorenz63-cpu generator=node steps=2000 out_dir=outputs/l63-traces
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from sns.cli import CONFIG_PATH


def traces_kwargs(cfg: DictConfig) -> dict:
    """The keyword arguments of :func:`sns.traces.make_traces` from ``cfg`` (paths made absolute)."""
    kw = OmegaConf.to_container(cfg, resolve=True)
    kw.pop("hydra", None)
    for key in ("input", "out_dir"):
        kw[key] = hydra.utils.to_absolute_path(str(kw[key]))
    if isinstance(kw.get("columns"), str):
        kw["columns"] = [kw["columns"]]
    return kw


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="traces")
def main(cfg: DictConfig) -> None:
    from sns.cli import check_missing
    from sns.traces import make_traces

    try:
        check_missing(cfg)
        kw = traces_kwargs(cfg)
        out_dir = kw.pop("out_dir")
        make_traces(kw.pop("input"), out_dir, **kw)
    except (ValueError, FileNotFoundError) as err:
        print(f"sns-traces: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(Path(out_dir, "report.md").read_text())


if __name__ == "__main__":
    main()
