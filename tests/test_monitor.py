"""The round monitor: one metrics row per round, the checkpoint, then best.* (never
ahead of the checkpoint), the first-round hook and the failures."""

from __future__ import annotations

import json
from unittest.mock import Mock

import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from fedloom.server.checkpoint import CHECKPOINT, load_checkpoint
from fedloom.server.monitor import RoundMonitor
from fedloom.server.results import ResultsFolder
from fedloom.strategies.instrumented import InstrumentedStrategy, RoundStats
from fedloom.tasks.registry import get_task, load_task_data


def _monitor(tmp_path, best):
    task = get_task("digits")
    data = load_task_data("digits", "", "digits")
    torch.manual_seed(0)
    model = task.build_model(data)
    strategy = InstrumentedStrategy(FedAvg())
    results = ResultsFolder(tmp_path)
    first = Mock()
    monitor = RoundMonitor(
        task=task, data=data, model=model, strategy=strategy, results=results, progress=Mock(),
        total_rounds=3, on_first_round=first, best=best,
    )
    return monitor, strategy, results, first, ArrayRecord(model.state_dict())


def test_a_round_writes_its_row_then_the_checkpoint_then_best(tmp_path):
    order: list[str] = []

    def offer(row, arrays):  # best.* must never hold a round the checkpoint does not
        order.append("best")
        assert load_checkpoint(tmp_path)["round"] == row["round"]

    best = Mock(offer=Mock(side_effect=offer),
                state_dict=Mock(return_value={"metric": "accuracy", "round": None, "value": None}))
    monitor, strategy, results, first, arrays = _monitor(tmp_path, best)

    initial = monitor.evaluate_fn(0, arrays)  # the initial model: no row, no checkpoint
    assert "accuracy" in initial and results.rows == [] and not (tmp_path / CHECKPOINT).exists()

    strategy.stats = RoundStats(num_clients=2, failures=1, rejected=0, bytes_up=100, bytes_down=40,
                                train_metrics={"train_loss": 0.5}, evaluate_metrics={},
                                failed=[{"phase": "train", "node_id": 9, "reason": "ValueError: x"}])
    monitor.evaluate_fn(1, arrays)
    row = results.rows[0]
    assert (row["round"], row["num_clients"], row["failures"], row["bytes_up"], row["bytes_down"]) == (1, 2, 1, 100, 40)
    assert row["train_loss"] == 0.5 and row["accuracy"] == initial["accuracy"]  # same model
    assert [json.loads(x)["round"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(tmp_path)["round"] == 1 and load_checkpoint(tmp_path)["rows"] == [row]
    assert order == ["best"] and first.call_count == 1
    assert json.loads((tmp_path / "failures.jsonl").read_text().splitlines()[0])["node_id"] == 9

    strategy.stats = RoundStats(num_clients=3)
    monitor.evaluate_fn(2, arrays)
    assert [r["round"] for r in results.rows] == [1, 2] and load_checkpoint(tmp_path)["round"] == 2
    assert first.call_count == 1 and order == ["best", "best"] and monitor.last_round == 2


def test_a_resumed_run_numbers_its_rows_after_the_checkpoint(tmp_path):
    monitor, strategy, results, _, arrays = _monitor(tmp_path, None)
    strategy.round_offset = 4
    assert monitor.evaluate_fn(0, arrays)  # "resumed after round 4": no row
    assert results.rows == []
    monitor.evaluate_fn(1, arrays)
    assert [r["round"] for r in results.rows] == [5] and load_checkpoint(tmp_path)["round"] == 5
