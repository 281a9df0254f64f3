"""Federated evaluation metrics that are not means of the clients' values.

Flower averages each evaluation metric over the replies, weighted by example
count. That is exact for accuracy and loss, but not for AUC or mean class
accuracy: each client's share of the test set holds other classes (ModelNet's
test set is sorted by class), and a share with one class has no AUC at all. So a
client also reports statistics (:meth:`tasks.base.Task.metric_statistics`: class
counts; per-class log-odds in sorted order with their targets) under keys starting
with :data:`STATISTIC_PREFIX`; the server gathers them from the replies and the task
computes those metrics from them as on one test set (exactly: no binning).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import RecordDict

STATISTIC_PREFIX = "stat."


def statistics_metrics(statistics: dict[str, np.ndarray]) -> dict[str, list[int] | list[float]]:
    """A client's statistics as MetricRecord entries (lists, under the prefix)."""
    return {STATISTIC_PREFIX + key: np.asarray(value).reshape(-1).tolist() for key, value in statistics.items()}


def pooled_statistics(contents: Iterable[RecordDict]) -> dict[str, list[np.ndarray]]:
    """Each statistic's arrays, one per reply that has it."""
    pooled: dict[str, list[np.ndarray]] = {}
    for content in contents:
        for record in content.metric_records.values():
            for key, value in record.items():
                if key.startswith(STATISTIC_PREFIX):
                    pooled.setdefault(key[len(STATISTIC_PREFIX) :], []).append(np.asarray(value))
    return pooled


def remove_statistics(contents: Iterable[RecordDict]) -> None:
    """Delete the statistics entries from the contents' metric records, in place."""
    for content in contents:
        for record in content.metric_records.values():
            for key in [k for k in record if k.startswith(STATISTIC_PREFIX)]:
                del record[key]
