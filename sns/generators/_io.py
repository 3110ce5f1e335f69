"""Persistence shared by the generators: atomic ``torch.save`` of plain containers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_state(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (tensors and plain containers only) to ``path`` through a ``.partial``
    file and a rename, so a kill never leaves a truncated file; ``load_state`` reads it back
    with ``weights_only=True`` (nothing is unpickled but tensors and containers)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``state`` of :func:`save_state`."""
    return torch.load(path, weights_only=True)
