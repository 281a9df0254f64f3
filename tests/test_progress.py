"""The console output: per-round lines and the summary table."""

from __future__ import annotations

import logging
from io import StringIO

from rich.console import Console

from fedloom.server.progress import RunProgress
from fedloom.strategies.registry import StrategyParams, build_strategy

ROWS = [
    {"round": 1, "accuracy": 0.7307692, "auc": 0.5275689, "loss": 0.5945923, "train_loss": 0.6225394,
     "epsilon": 6.3655998, "num_clients": 3, "failures": 0, "rejected": 1, "bytes_up": 8429331,
     "seconds": 11.238},
    {"round": 2, "accuracy": 0.7692307, "auc": 0.6236006, "loss": 0.5615939, "train_loss": 0.6080936,
     "epsilon": 7.9945264, "num_clients": 3, "failures": 0, "rejected": 0, "bytes_up": 8429331,
     "seconds": 3.288},
]


def console(width: int) -> tuple[Console, StringIO]:
    out = StringIO()
    return Console(file=out, width=width, force_terminal=False, color_system=None), out


def test_round_line_shows_the_tasks_metrics_and_epsilon() -> None:
    con, out = console(80)
    RunProgress(2, "medmnist · fedavg", console=con).round_done(ROWS[0], 2)
    line = " ".join(out.getvalue().split())  # soft-wrapped: one line, whatever the width
    assert line == (
        "round 1/2 accuracy 0.7308 auc 0.5276 loss 0.5946 train_loss 0.6225 epsilon 6.3656 "
        "num_clients 3 failures 0 rejected 1 up 8.04 MiB 11.2s"
    )


def test_summary_in_a_log_file_cuts_nothing_to_the_console_width() -> None:
    # A pipe or log file is 80 columns to rich; the table is wider and must stay whole.
    con, out = console(80)
    RunProgress(2, "medmnist · fedavg", console=con).summary(ROWS, "/tmp/run")
    text = out.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) > 80
    body = [line.split() for line in text.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert body == [
        ["1", "0.7308", "0.5276", "0.5946", "0.6225", "6.3656", "3", "1", "8.04", "MiB", "11.2"],
        ["2", "0.7692", "0.6236", "0.5616", "0.6081", "7.9945", "3", "0", "8.04", "MiB", "3.3"],
    ]
    # failures stayed 0: its column moved to the caption; rejected did not.
    assert "failures 0 in every round" in text and "rejected" in text.split("failures 0")[0]


def test_summary_that_fits_is_printed_at_the_console_width() -> None:
    con, out = console(200)
    RunProgress(2, "digits · fedavg", console=con).summary(ROWS, "/tmp/run")
    assert max(len(line) for line in out.getvalue().splitlines()) <= 200


def test_flowers_evaluation_skipped_warning_is_dropped_and_others_are_kept() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(handler)
    try:
        build_strategy("fedavg", StrategyParams(fraction_evaluate=0.0))
        assert not [r for r in records if "fraction_evaluate" in r.getMessage()]
        build_strategy("fedavg", StrategyParams(fraction_train=0.0))  # Flower's other warning stays
        assert [r for r in records if r.getMessage().startswith("fraction_train is set to 0.0")]
    finally:
        flwr_logger.removeHandler(handler)
