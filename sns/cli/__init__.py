"""Hydra entry points.  Only these modules read configs (conf/ at the repository root)."""

from pathlib import Path

#: Absolute path of the repository's conf/ directory (the package is installed editable).
CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def check_numbers(cfg, ints=(), floats=()) -> None:
    """Raise ``ValueError`` naming the key and the value when a config entry that must be an
    integer (``ints``) or a number (``floats``) is not one (null and missing keys pass), so a
    bad command-line value fails before anything is built or written."""
    from omegaconf import OmegaConf

    for keys, kind in ((ints, "an integer"), (floats, "a number")):
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if value is None:
                continue
            try:
                if isinstance(value, bool):
                    ok = False
                elif kind == "an integer":
                    ok = float(value).is_integer() if isinstance(value, float) else int(value) is not None
                else:
                    ok = float(value) is not None
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{key} must be {kind}, got {value!r}")


def check_cuda(key: str, value) -> None:
    """Raise ``ValueError`` when ``value`` (a device / accelerator setting) asks for CUDA and no
    CUDA device is available."""
    import torch

    if str(value).split(":")[0] in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ValueError(f"{key}={value}: no CUDA device is available; use cpu")
