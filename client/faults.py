"""Fault injection for tests and studies: failing and straggling clients."""

from __future__ import annotations

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
