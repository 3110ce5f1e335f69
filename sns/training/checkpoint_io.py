"""Checkpoint files: committed atomically on the run directory's own file system, read with
``weights_only=True``, and a damaged ``last.ckpt`` falls back to the newest readable one.

Lightning's default ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary
file lives in the system temp directory (often another file system: the final "rename" is then
a copy) and is never fsynced, so a kill or a power loss can leave a truncated ``last.ckpt``.
:class:`AtomicCheckpointIO` writes a temporary file next to the target, fsyncs it, renames it
into place with ``os.replace`` and fsyncs the directory; the temporary file is removed if
anything fails.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "find_resume_checkpoint", "read_checkpoint",
           "remove_stale_temp_files"]

#: the temporary files of :func:`atomic_torch_save`: ``.<target name>.<mkstemp's 8 characters>.tmp``
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` committed atomically: temp file in ``path``'s directory, fsync,
    ``os.replace``, fsync of the directory.  No temporary file is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_torch_save` left in ``directory`` when its
    process was killed half-way through a write (SIGKILL, power loss: no ``except`` ran); returns
    them.  Call it when no write is in progress (sns-train: when a fit starts, on rank 0)."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if _TEMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that commits local checkpoints with :func:`atomic_torch_save`
    (remote URLs keep Lightning's own path)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


class CheckpointRefused(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses (it pickles arbitrary objects)."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped).

    Raises:
        CheckpointRefused (a ValueError): the file holds objects that a weights-only load refuses.
        ValueError: the file is empty, truncated or not a torch checkpoint (message names it).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file, not a checkpoint")
        ck = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights only" in text.lower() or "weights_only" in text.lower():
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" (it pickles {found.group(1)})" if found else ""
            raise CheckpointRefused(
                f"{path}: refusing to load this checkpoint: it holds objects other than tensors and "
                f"plain containers{what}, and sns reads checkpoints with weights_only=True only; "
                "use a checkpoint written by sns-train"
            ) from None
        raise ValueError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
    except Exception as err:  # torch.load raises many types (SafetensorError for a *.safetensors name)
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ck, dict):
        raise ValueError(f"{path}: not a Lightning checkpoint (a {type(ck).__name__}, expected a dict)")
    if "state_dict" not in ck:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry; an exported model file? "
                         "ckpt_path takes a checkpoint written by sns-train, e.g. <run dir>/checkpoints/last.ckpt)")
    return ck


def find_resume_checkpoint(directory: str | os.PathLike) -> str | None:
    """The checkpoint a run in ``directory`` (``<run dir>/checkpoints``) resumes from.

    ``last.ckpt`` if it is readable; otherwise (empty, truncated, corrupt: a kill or power loss
    while writing with an older writer) the newest readable ``*.ckpt`` of the directory, with a
    warning naming what was skipped.  None when the directory holds no checkpoint.

    Raises:
        ValueError: checkpoints exist but none is readable, or one is refused by the
            weights-only load (never skipped silently).
    """
    directory = Path(directory)
    last = directory / "last.ckpt"
    if not directory.is_dir():
        return None
    others = sorted((p for p in directory.glob("*.ckpt") if p.name != "last.ckpt" and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.exists() else []) + others
    if not candidates:
        return None
    skipped: list[str] = []
    for path in candidates:
        try:
            read_checkpoint(path)
        except CheckpointRefused:
            raise
        except ValueError as err:
            skipped.append(str(err))
            continue
        if skipped:
            warnings.warn(f"resuming from {path} instead: skipped unreadable checkpoint(s): " + "; ".join(skipped),
                          RuntimeWarning, stacklevel=2)
        return str(path)
    raise ValueError(f"no readable checkpoint in {directory}: " + "; ".join(skipped)
                     + "; remove them or pass ckpt_path=null to start afresh")
