"""best-metric: which round's model lands in best.pt, and which metrics can pick it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord

from fedloom.server.best import BEST_MODEL, BEST_RECORD, BestRound, improves
from fedloom.config import parse_run_config
from fedloom.server.results import ResultsFolder
from fedloom.tasks.registry import get_task, task_names


def test_losses_are_minimised_other_metrics_maximised_and_nan_never_wins():
    assert improves("val_auc", 0.8, None) and improves("val_auc", 0.8, 0.7)
    assert not improves("val_auc", 0.7, 0.8) and not improves("val_auc", 0.8, 0.8)  # tie: keep earlier
    assert improves("val_loss", 0.3, 0.4) and not improves("loss", 0.5, 0.4)
    assert not improves("val_auc", math.nan, None) and not improves("val_auc", math.nan, 0.1)


def _state(value: float) -> ArrayRecord:
    return ArrayRecord({"w": torch.full((2, 2), float(value))})


def test_offer_keeps_the_best_round_model_and_record(tmp_path):
    best = BestRound("val_auc", ResultsFolder(tmp_path))
    rows = [{"round": 1, "val_auc": 0.6}, {"round": 2, "val_auc": 0.9}, {"round": 3, "val_auc": 0.9},
            {"round": 4, "val_auc": 0.7}, {"round": 5, "accuracy": 1.0}]
    saved = [best.offer(row, _state(row["round"])) for row in rows]
    assert saved == [True, True, False, False, False]
    record = json.loads((tmp_path / BEST_RECORD).read_text())
    assert (record["round"], record["metric"], record["value"], record["mode"]) == (2, "val_auc", 0.9, "max")
    assert record["row"] == rows[1]
    assert torch.equal(torch.load(tmp_path / BEST_MODEL)["w"], torch.full((2, 2), 2.0))


def test_a_resumed_run_continues_from_the_checkpointed_best_round(tmp_path):
    first = BestRound("val_loss", ResultsFolder(tmp_path))
    first.offer({"round": 3, "val_loss": 0.5}, _state(3))
    saved = first.state_dict()
    assert saved == {"metric": "val_loss", "round": 3, "value": 0.5}
    resumed = BestRound("val_loss", ResultsFolder(tmp_path))
    resumed.load_state_dict(saved)
    assert (resumed.round, resumed.value) == (3, 0.5)
    assert not resumed.offer({"round": 4, "val_loss": 0.6}, _state(4))
    assert resumed.offer({"round": 5, "val_loss": 0.4}, _state(5))
    other = BestRound("val_auc", ResultsFolder(tmp_path))  # another metric starts afresh
    other.load_state_dict(saved)
    assert other.value is None


@pytest.mark.parametrize("name", task_names())
def test_metric_names_are_what_metrics_returns(name):
    task = get_task(name)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    keys = set(task.metrics(logits, torch.tensor([0, 1, 1])))
    assert keys == set(task.metric_names)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"task": "medmnist"}, "val_auc"),
        ({"task": "digits"}, "none"),  # no validation split: auto never picks on the test set
        ({"task": "pointcloud"}, "none"),
        ({"task": "medmnist", "he": "true", "fraction-evaluate": 1.0}, "none"),
        ({"task": "medmnist", "best-metric": "val_loss"}, "val_loss"),
        ({"task": "pointcloud", "best-metric": "mean_class_accuracy"}, "mean_class_accuracy"),
        ({"task": "digits", "best-metric": "none"}, "none"),
    ],
)
def test_best_metric_resolves(overrides, expected):
    assert parse_run_config(overrides).best_metric == expected


def test_bad_best_metric_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"invalid best-metric='val_auc'; valid: auto, none, loss, accuracy$"):
        parse_run_config({"task": "digits", "best-metric": "val_auc"})
    with pytest.raises(ValueError, match="valid: auto, none, val_loss, val_accuracy, val_auc, loss"):
        parse_run_config({"task": "medmnist", "best-metric": "f1"})
    with pytest.raises(ValueError, match="--he hides"):
        parse_run_config({"task": "digits", "he": "true", "fraction-evaluate": 1.0, "best-metric": "accuracy"})


def test_task_without_validation_offers_test_metrics_only():
    assert get_task("digits").selectable_metrics() == ("loss", "accuracy")
    assert "val_auc" in get_task("medmnist").selectable_metrics()
    assert all(not m.startswith("val_") for m in get_task("pointcloud").selectable_metrics())


def test_metrics_jsonl_stays_json_when_a_metric_is_nan(tmp_path):
    # An undefined AUC is NaN; bare NaN is not JSON (JSON.parse rejects it): null instead.
    results = ResultsFolder(tmp_path)
    results.add_row({"round": 1, "auc": float("nan"), "accuracy": 0.5})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "round": 1, "auc": None, "accuracy": 0.5,
    }
    # metrics.csv agrees: an empty cell, not "nan".
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "1,,0.5"
    # best.json copies the row it picked, NaN included.
    best = BestRound("accuracy", results)
    assert best.offer({"round": 1, "auc": float("nan"), "accuracy": 0.5}, ArrayRecord({"w": torch.zeros(2)}))
    record = json.loads((tmp_path / BEST_RECORD).read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert record["row"] == {"round": 1, "auc": None, "accuracy": 0.5}
