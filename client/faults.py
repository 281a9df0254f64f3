"""Fault injection for tests and studies: failing and straggling clients."""

from __future__ import annotations

import logging
import time

import numpy as np


class InjectedFailure(RuntimeError):
    """A failure fedloom raised on purpose (``fail-rate``)."""


def inject_faults(
    *, fail_rate: float, straggler_rate: float, straggler_delay: float,
    seed: int, server_round: int, partition_id: int,
) -> None:
    """Raise or sleep with the configured probabilities (deterministic per client and round)."""
    fail_draw, slow_draw = np.random.default_rng([seed, server_round, partition_id, 0xFA17]).random(2)
    if fail_draw < fail_rate:
        raise InjectedFailure(
            f"injected failure (fail-rate={fail_rate}) in round {server_round}, partition {partition_id}"
        )
    if slow_draw < straggler_rate:
        time.sleep(straggler_delay)


class QuietInjectedFailures(logging.Filter):
    """For Flower's logger in a simulation: drops the tracebacks of injected failures.

    A ClientApp that raises makes Flower log three ERROR records: the Ray backend's
    note (which names no cause), the exception, and its traceback. The server prints one
    line per failed reply with its reason and writes it to ``failures.jsonl``, so an
    injected failure's records tell nothing more; any other exception keeps its own
    (its traceback is the way to the bug). ``--verbose`` keeps them all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR:
            return True
        text = record.getMessage()
        return not (text.startswith("An exception was raised when processing a message by")
                    or InjectedFailure.__name__ in text)
