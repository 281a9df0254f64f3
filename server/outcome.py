"""How a run ended: a run in which no round completed is a failed run, whatever stopped it."""

from __future__ import annotations


class NoRoundCompleted(RuntimeError):
    """Raised by the ServerApp after writing what it has, when no round of this run completed.

    ``run_sim.py`` prints it as one line and exits with status 1; under ``flwr run`` and on a
    SuperLink the run is marked failed. The message says why the rounds stopped.
    """


def check_completed(rounds_completed: int, rounds_planned: int, reason: str) -> None:
    """Raise :class:`NoRoundCompleted` when rounds were planned but none completed."""
    if rounds_planned > 0 and rounds_completed == 0:
        raise NoRoundCompleted(f"no round completed: {reason or 'every round failed'}")
