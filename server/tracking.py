"""Experiment tracking (``tensorboard=true``): TensorBoard event files in the results folder.

Written with torch's ``SummaryWriter`` (the ``tensorboard`` package's event-file
writer): every numeric key of each metrics row as a scalar at step = round, and the
run config as the session's hyperparameters (TensorBoard's HParams dashboard), whose
metrics are those same per-round scalars. ``tensorboard --logdir runs`` then shows
every run in ``runs/`` side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Metrics-row keys that are not scalars to plot (the step itself).
NOT_SCALARS = ("round",)


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's finite numbers (booleans and NaN left out), keyed as in ``metrics.jsonl``."""
    return {
        k: float(v) for k, v in row.items()
        if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)
        and math.isfinite(v)
    }


def hparam_values(run_config: Mapping[str, Any]) -> dict[str, int | float | str]:
    """Run-config values as TensorBoard hyperparameters: numbers, and strings for the rest
    (booleans as ``true`` / ``false``, as the run config writes them; torch's writer would
    store them as 1.0 / 0.0)."""
    return {
        k: str(v).lower() if isinstance(v, bool) else v if isinstance(v, (int, float, str)) else str(v)
        for k, v in run_config.items()
    }


class TensorBoardLog:
    """Event files in ``folder``: the hyperparameters at the first row, one scalar per
    metric per round, the session's end at :meth:`close`.

    ``resume_after``: the checkpoint's round on ``--resume``; TensorBoard then drops the
    steps after it that the interrupted run had written (``purge_step``), as
    ``metrics.jsonl`` drops their rows.
    """

    def __init__(self, folder: Path, run_config: Mapping[str, Any], *, resume_after: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=resume_after + 1 if resume_after else None)
        events = self.writer.file_writer  # opened by SummaryWriter's constructor
        assert events is not None
        self.events: Any = events  # where torch's own add_hparams writes the hparams summaries
        self.run_config: dict[str, Any] = dict(run_config)
        self.session_end: Any = None

    def add_row(self, row: Mapping[str, Any]) -> None:
        """One round's metrics row: its numbers as scalars at step ``row["round"]``."""
        values = scalars(row)
        if self.session_end is None:  # the metrics are known from the first row on
            self._write_hparams(values)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=int(row["round"]))
        self.writer.flush()

    def _write_hparams(self, metrics: Mapping[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        experiment, session_start, self.session_end = hparams(
            hparam_values(self.run_config), dict(metrics)
        )
        self.events.add_summary(experiment)
        self.events.add_summary(session_start)

    def close(self) -> None:
        if self.session_end is not None:
            self.events.add_summary(self.session_end)
        self.writer.close()
