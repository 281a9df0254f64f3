"""A newcomer's first run: every task learns in 3 rounds with its defaults alone
(``auto`` keys: the task's measured best configuration), on small real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import require_data
from fedloom import run_sim

pytestmark = pytest.mark.e2e


def small_mnist(tmp_path: Path) -> Path:
    """An mnist.npz with the first 2,000 training and 1,000 test images of the real file."""
    with np.load(require_data("mnist.npz")) as full:
        subset = {k: full[k][: 2000 if "train" in k else 1000] for k in ("x_train", "y_train", "x_test", "y_test")}
    np.savez(tmp_path / "mnist.npz", **subset)
    return tmp_path


def small_modelnet(tmp_path: Path) -> Path:
    """ModelNet10's small file (400 train / 150 test shapes) under the loader's name."""
    (tmp_path / "modelnet10_1024.npz").symlink_to(require_data("modelnet10/modelnet10_1024_small.npz"))
    return tmp_path


def breastmnist(tmp_path: Path) -> Path:
    del tmp_path
    return require_data("medmnist/breastmnist.npz").parent


#: task -> (its small data, the metric that shows learning, its chance level, the bar).
CASES = {
    "mnist": (small_mnist, "accuracy", 0.1, 0.6),
    "medmnist": (breastmnist, "auc", 0.5, 0.65),
    "pointcloud": (small_modelnet, "accuracy", 0.1, 0.3),
}


@pytest.mark.parametrize("task", CASES)
def test_three_rounds_with_the_task_defaults_learn(task, tmp_path):
    make_data, metric, chance, bar = CASES[task]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    run_dir = tmp_path / "run"
    assert run_sim.main([
        "--task", task, "--data-dir", str(make_data(data_dir)), "--num-clients", "2", "--rounds", "3",
        "--seed", "1", "--run-dir", str(run_dir),
    ]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[-1][metric] > bar > chance, (metric, [r[metric] for r in rows])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["auto"]["lr"]["why"] == f"{task}'s default"
