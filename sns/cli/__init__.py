"""Hydra entry points.  Only these modules read configs (conf/ at the repository root)."""

from pathlib import Path

#: Absolute path of the repository's conf/ directory (the package is installed editable).
CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")
