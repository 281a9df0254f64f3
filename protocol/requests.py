"""What a fedloom server asks its clients to report beyond Flower's scalar metrics.

A stock Flower strategy averages every reply metric; fedloom's extra reports are
per-client values (a partition id, a cumulative epsilon) or lists (per-example AUC
scores) that such a strategy would average into junk or fail on. So a fedloom client
sends them only when the instruction's config lists them under :data:`~.keys.REPORT`;
only a fedloom server does.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app.typing import ConfigRecordValues

from .keys import REPORT

#: Train replies: ``partition-id`` and ``num-partitions`` (the server checks them and
#: writes partitions.json).
PARTITION = "partition"
#: Train replies under DP-SGD: ``dp-epsilon`` and ``dp-exhausted`` (the run's ledger).
PRIVACY = "privacy"
#: Evaluate replies: the ``stat.*`` lists of the metrics that do not average.
STATISTICS = "statistics"
REPORTS = (PARTITION, PRIVACY, STATISTICS)


def ask(*reports: str) -> dict[str, ConfigRecordValues]:
    """Config entries asking for ``reports``; ``ValueError`` for one that does not exist."""
    unknown = [r for r in reports if r not in REPORTS]
    if unknown:
        raise ValueError(f"unknown report(s) {', '.join(unknown)}; valid: {', '.join(REPORTS)}")
    return {REPORT: list(reports)}


def asked(config: Mapping[str, object], report: str) -> bool:
    """Whether an instruction's ``config`` asks for ``report``."""
    wanted = config.get(REPORT)
    return isinstance(wanted, list) and report in wanted
