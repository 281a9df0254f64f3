"""The best round so far by one metric (``best-metric``): ``best.pt`` and ``best.json``.

MedMNIST's protocol keeps the model of the epoch with the best validation AUC;
this is that, per round. A metric whose name ends in ``loss`` is minimised, any
other maximised. Ties keep the earlier round; rounds without the metric (or
with NaN, e.g. an AUC on a single-class split) are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord

from .results import ResultsFolder

BEST_MODEL = "best.pt"
BEST_RECORD = "best.json"


def minimizes(metric: str) -> bool:
    return metric.endswith("loss")


def improves(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` (``None``: nothing yet) for ``metric``."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if minimizes(metric) else value > best


class BestRound:
    """Keeps ``best.pt`` (state_dict) and ``best.json`` at the best round so far."""

    def __init__(self, metric: str, results: ResultsFolder) -> None:
        self.metric, self.results = metric, results
        self.round: int | None = None
        self.value: float | None = None

    def state_dict(self) -> dict[str, Any]:
        """The best round so far, for the run's checkpoint (written before this round's offer)."""
        return {"metric": self.metric, "round": self.round, "value": self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state_dict` (same metric)."""
        if state.get("metric") == self.metric:
            self.round, self.value = state["round"], state["value"]

    def offer(self, row: Mapping[str, Any], arrays: ArrayRecord) -> bool:
        """Save ``arrays`` (as a torch ``state_dict``) if ``row`` beats the best so far."""
        value = row.get(self.metric)
        if value is None or not improves(self.metric, float(value), self.value):
            return False
        self.round, self.value = int(row["round"]), float(value)
        self.results.save_torch(BEST_MODEL, arrays.to_torch_state_dict())
        self.results.write_json(BEST_RECORD, {
            "round": self.round, "metric": self.metric, "value": self.value,
            "mode": "min" if minimizes(self.metric) else "max", "row": dict(row),
        })
        return True
