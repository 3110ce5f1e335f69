"""A CSV log that continues across restarts.

Lightning's ``CSVLogger`` starts a new ``version_<n>`` directory at every start, so an
interrupted and resumed run had one ``metrics.csv`` per restart, and the steps between the last
checkpoint and the interruption appeared twice, with different values (once as they were first
trained, once as trained again after the resume).  :class:`CSVLogger` writes to one fixed
version directory; told the global step of the checkpoint a run resumes from
(:meth:`CSVLogger.resume`, which ``sns-train`` calls), it keeps the rows logged before that
step and drops the later ones, which the resumed run logs again.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

__all__ = ["CSVLogger", "truncate_metrics"]


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def truncate_metrics(path: str | os.PathLike, before_step: int) -> tuple[list[str], int]:
    """Keep the rows of the metrics file ``path`` whose ``step`` is below ``before_step``.

    Rewrites the file atomically (temporary file next to it, ``os.replace``); returns its header
    and the number of rows kept."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if _row_step(r) < before_step]
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return fields, len(rows)


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps the rows of an existing ``metrics.csv`` logged before
    ``keep_before`` (None: none, a fresh start) instead of deleting the file."""

    def __init__(self, log_dir: str, keep_before: int | None) -> None:
        self._keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by the parent's __init__
        path = self.metrics_file_path
        if not self._fs.isfile(path):
            return
        if self._keep_before is None or not _is_local_file_protocol(path):
            self._fs.rm_file(path)
            return
        fields, _ = truncate_metrics(path, self._keep_before)
        self.metrics_keys = fields  # the header new rows are appended under (sorted, as Lightning writes it)


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` in one fixed ``<save_dir>/<name>/version_<version>`` directory
    whose ``metrics.csv`` continues across restarts (module docstring).

    Args:
        save_dir, name, prefix, flush_logs_every_n_steps: as Lightning's.
        version: fixed version (default 0), not the next free one.
    """

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "csv", version: int | str = 0,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        if version is None:
            raise ValueError("sns.training.CSVLogger needs a fixed version (e.g. 0) to continue across restarts")
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self._keep_before: int | None = None

    def resume(self, global_step: int | None) -> None:
        """Continue the log of a run resumed from a checkpoint at ``global_step``: rows logged at
        steps ``>= global_step`` (after that checkpoint) are dropped, the rest kept; None: a
        fresh start, the log starts empty.  Call it before anything is logged."""
        if self._experiment is not None:
            raise RuntimeError("CSVLogger.resume() must be called before the first log call")
        self._keep_before = None if global_step is None else int(global_step)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ContinuedWriter(self.log_dir, self._keep_before)
        return self._experiment
