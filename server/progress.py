"""Rich progress display: a round bar, one line per round, a summary table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

_SHOWN = ("accuracy", "loss", "train_loss", "fed_accuracy", "num_clients", "failures", "rejected")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"


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

    def summary(self, rows: list[Mapping[str, Any]], run_dir: str) -> None:
        if not rows:
            return
        table = Table(title=f"{self.title}: results in {run_dir}")
        keys = [k for k in ("round", *_SHOWN, "bytes_up", "seconds") if k in rows[-1]]
        for key in keys:
            table.add_column(key, justify="right")
        for row in rows:
            table.add_row(*[_mib(row[k]) if k == "bytes_up" else _fmt(row.get(k, "")) for k in keys])
        self.console.print(table)
