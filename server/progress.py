"""Rich progress display: a round bar, one line per round, a summary table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

#: Keys of a metrics row shown per round and in the summary, in this order, when present:
#: the task's metrics (central, then federated), DP's epsilon, and the round's replies.
_SHOWN = (
    "accuracy", "auc", "mean_class_accuracy", "loss", "train_loss",
    "fed_accuracy", "fed_auc", "fed_mean_class_accuracy", "epsilon",
    "num_clients", "failures", "rejected", "gpu_memory_mib",
)
#: Counters the summary leaves out (naming them in its caption) when they stay 0.
_QUIET = ("failures", "rejected")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"


def _cell(row: Mapping[str, Any], key: str) -> str:
    if key == "bytes_up":
        return _mib(row[key])
    if key == "seconds":
        return f"{row[key]:.1f}"
    return _fmt(row.get(key))


class RunProgress:
    """Shows rounds as they complete."""

    def __init__(self, total_rounds: int, title: str, console: Console | None = None) -> None:
        self.console = console or Console()
        self.title = title
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, transient=True,
        )
        self.task_id = self.progress.add_task(title, total=total_rounds)

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def advance_to(self, completed: int) -> None:
        self.progress.update(self.task_id, completed=completed)

    def round_done(self, row: Mapping[str, Any], total_rounds: int) -> None:
        parts = [f"{k} {_fmt(row[k])}" for k in _SHOWN if k in row]
        parts.append(f"up {_mib(row['bytes_up'])}")
        parts.append(f"{row['seconds']:.1f}s")
        self.progress.console.print(f"round {row['round']}/{total_rounds}  " + "  ".join(parts), soft_wrap=True)
        self.advance_to(row["round"])

    def summary(self, rows: Sequence[Mapping[str, Any]], run_dir: str) -> None:
        """The table of every round. Headers break at ``_`` and all-zero counters move to
        the caption, to stay narrow; a log file or
        pipe gets the whole table at its natural width (nothing cut to 80 columns), a
        terminal too narrow for it gets its values wrapped rather than cut."""
        if not rows:
            return
        keys = [k for k in ("round", *_SHOWN, "bytes_up", "seconds") if k in rows[-1]]
        quiet = [k for k in _QUIET if k in keys and not any(row.get(k) for row in rows)]
        keys = [k for k in keys if k not in quiet]
        caption = ", ".join(f"{k} 0" for k in quiet) + " in every round" if quiet else None
        table = Table(title=f"{self.title}: results in {run_dir}", caption=caption, box=box.SIMPLE_HEAD)
        for key in keys:
            table.add_column(key.replace("_", "\n"), justify="right", overflow="fold")
        for row in rows:
            table.add_row(*[_cell(row, k) for k in keys])
        width = Measurement.get(self.console, self.console.options.update_width(10_000), table).maximum
        if self.console.is_terminal or width <= self.console.width:
            self.console.print(table)
            return
        saved = self.console.width
        self.console.width = width
        try:
            self.console.print(table)
        finally:
            self.console.width = saved
