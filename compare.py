"""Compare finished runs: ``python -m fedloom.compare RUN_DIR... [--metric accuracy]``.

Draws one PNG per metric with the runs overlaid, against the round and against the
cumulative uploaded bytes (``bytes_up`` of ``metrics.jsonl``), and prints a summary
table: final and best value of the metric, rounds, bytes up, epsilon, wall time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from fedloom.api import RunResult, load_run

#: Metrics plotted when ``--metric`` is not given, those that every run reports.
DEFAULT_METRICS = ("accuracy", "auc", "mean_class_accuracy", "loss")
#: Row keys that are bookkeeping, not metrics to compare.
NOT_METRICS = ("round",)


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass(frozen=True)
class Summary:
    """One run's line of the summary table for one metric."""

    name: str
    rounds: int
    final: float | None
    best: float | None
    best_round: int | None
    bytes_up: int
    epsilon: float | None
    seconds: float


def cumulative(values: Sequence[float]) -> list[float]:
    """Running totals of ``values`` (bytes per round -> bytes so far)."""
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


def numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def comparable_metrics(runs: Sequence[RunResult]) -> list[str]:
    """Numeric row keys every run reports in some round (what ``--metric`` accepts)."""
    shared: set[str] | None = None
    for run in runs:
        keys = {k for row in run.rows for k, v in row.items() if numeric(v) and k not in NOT_METRICS}
        shared = keys if shared is None else shared & keys
    return sorted(shared or ())


def summarize(run: RunResult, metric: str, name: str) -> Summary:
    """Final and best ``metric`` (loss-like keys minimised, as ``best-metric`` does),
    rounds, total bytes up, last epsilon and summed round time of ``run``."""
    from fedloom.server.best import minimizes

    points = [(row["round"], row[metric]) for row in run.rows if numeric(row.get(metric))]
    best = (min if minimizes(metric) else max)(points, key=lambda p: p[1], default=None)
    epsilons = [row["epsilon"] for row in run.rows if numeric(row.get("epsilon"))]
    return Summary(
        name=name,
        rounds=len(run.rows),
        final=run.rows[-1].get(metric) if run.rows and numeric(run.rows[-1].get(metric)) else None,
        best=best[1] if best else None,
        best_round=best[0] if best else None,
        bytes_up=int(sum(row.get("bytes_up", 0) for row in run.rows)),
        epsilon=epsilons[-1] if epsilons else None,
        seconds=float(sum(row.get("seconds", 0.0) for row in run.rows)),
    )


def format_table(metric: str, summaries: Sequence[Summary]) -> str:
    """The summary as aligned plain-text columns (readable in a terminal, a log or a pipe)."""
    def num(v: float | None, digits: int = 4) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    header = ["run", f"final {metric}", f"best {metric} (round)", "rounds", "MiB up", "epsilon", "seconds"]
    lines = [header] + [[
        s.name, num(s.final), f"{num(s.best)} ({s.best_round})" if s.best is not None else "-",
        str(s.rounds), f"{s.bytes_up / 2**20:.2f}", num(s.epsilon, 2), f"{s.seconds:.1f}",
    ] for s in summaries]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def plot_comparison(runs: Sequence[RunResult], names: Sequence[str], metric: str, path: Path) -> Path:
    """``metric`` of every run against the round (left) and cumulative MiB up (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    for run, name in zip(runs, names):
        up = cumulative([row.get("bytes_up", 0) / 2**20 for row in run.rows])
        points = [(row["round"], mib, row[metric]) for row, mib in zip(run.rows, up) if numeric(row.get(metric))]
        if not points:
            continue
        rounds, mibs, values = zip(*points)
        by_round.plot(rounds, values, marker="o", label=name)
        by_bytes.plot(mibs, values, marker="o", label=name)
    for ax, xlabel in ((by_round, "round"), (by_bytes, "cumulative MiB uploaded")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_round.legend()
    fig.suptitle(f"{metric}: {len(runs)} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def load_runs(dirs: Sequence[str]) -> list[RunResult]:
    runs = []
    for d in dirs:
        try:
            run = load_run(d)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(f"{exc}; valid: folders written by run_sim.py (config.json, metrics.jsonl)") from None
        if not run.rows:
            raise UsageError(f"{run.path} has no metrics rows (no round completed); valid: finished runs")
        runs.append(run)
    return runs


def pick_metrics(runs: Sequence[RunResult], asked: Sequence[str] | None) -> list[str]:
    valid = comparable_metrics(runs)
    if not asked:
        return [m for m in DEFAULT_METRICS if m in valid]
    unknown = [m for m in asked if m not in valid]
    if unknown:
        raise UsageError(f"unknown metric {', '.join(unknown)} (not in every run); valid: {', '.join(valid)}")
    return list(dict.fromkeys(asked))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m fedloom.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="results folders of finished runs")
    p.add_argument("--metric", action="append",
                   help=f"metric to compare (repeatable) [default: those of {', '.join(DEFAULT_METRICS)} "
                   "that every run reports]")
    p.add_argument("--out", help="folder for the PNGs [default: runs/compare-<timestamp>]")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        runs = load_runs(args.runs)
        metrics = pick_metrics(runs, args.metric)
    except UsageError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    names = run_names([run.path for run in runs])
    for metric in metrics:
        png = plot_comparison(runs, names, metric, out / f"{metric}.png")
        print(format_table(metric, [summarize(run, metric, name) for run, name in zip(runs, names)]))
        print(f"plot: {png}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
