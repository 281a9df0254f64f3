"""MedMNIST and ModelNet through every feature: DP-SGD + HE + randk together, and a
robust strategy with top-k + QSGD uploads, on the real shared data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedloom import run_sim
from conftest import require_data

pytestmark = pytest.mark.e2e


def medmnist_args(tmp_path: Path) -> list[str]:
    data = require_data("medmnist/breastmnist.npz").parents[1]
    return ["--task", "medmnist", "--dataset", "breastmnist", "--data-dir", str(data),
            "--run-config", "model-width=0.125 resnet-norm=group"]  # bytes: no calibration sums


def pointcloud_args(tmp_path: Path) -> list[str]:
    small = require_data("modelnet10/modelnet10_1024_small.npz")
    data = tmp_path / "data"
    data.mkdir()
    (data / "modelnet10_1024.npz").symlink_to(small)  # the loader's file name for ModelNet10
    return ["--task", "pointcloud", "--dataset", "modelnet10", "--data-dir", str(data),
            "--run-config", "num-points=128 model-width=0.125 pointnet-transforms=both pointnet-norm=group"]


TASKS = {"medmnist": medmnist_args, "pointcloud": pointcloud_args}


def run(tmp_path: Path, task_args: list[str], *extra: str) -> tuple[dict, list[dict]]:
    run_dir = tmp_path / "run"
    argv = [*task_args, "--num-clients", "2", "--rounds", "1", "--batch-size", "32", "--seed", "1",
            *extra, "--run-dir", str(run_dir)]
    assert run_sim.main(argv) == 0
    config = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return config, rows


@pytest.mark.parametrize("task", TASKS)
def test_dp_sgd_with_encrypted_randk_uploads(task, tmp_path):
    config, rows = run(
        tmp_path, TASKS[task](tmp_path), "--dp", "sample", "--dp-noise", "1.0", "--he",
        "--compression", "randk:0.5",
    )
    (row,) = rows
    assert row["num_clients"] == 2 and row["failures"] == 0 and row["rejected"] == 0
    assert 0 < row["epsilon"] < float("inf")
    assert 0 <= row["accuracy"] <= 1 and row["accuracy"] == row["fed_accuracy"]
    # Half the ciphertexts of a ~15-bytes-per-parameter encryption, from each of 2 clients.
    per_param = row["bytes_up"] / (2 * config["num_parameters"])
    assert 5 < per_param < 9, per_param


@pytest.mark.parametrize("task", TASKS)
def test_robust_strategy_with_topk_qsgd_uploads(task, tmp_path):
    config, rows = run(
        tmp_path, TASKS[task](tmp_path), "--strategy", "fedmedian", "--compression", "topk:0.1+qsgd:8",
    )
    (row,) = rows
    assert row["num_clients"] == 2 and row["rejected"] == 0
    assert 0 <= row["accuracy"] <= 1 and row["loss"] == row["loss"]  # finite, not nan
    # 10% of the values at 8 bits plus their index gaps and scales: under 1/15 of float32.
    assert row["bytes_up"] < 2 * config["num_parameters"] * 4 / 15


def assert_calibrated(state: dict, layer: str, inputs: torch.Tensor) -> None:
    """``layer``'s running mean and variance are the moments of its ``inputs`` (N, C)."""
    torch.testing.assert_close(state[f"{layer}.running_mean"].double(), inputs.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state[f"{layer}.running_var"].double(), inputs.var(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("task", "metric", "norm"), [
    ("medmnist", "auc", "group"), ("medmnist", "auc", "batch"), ("pointcloud", "mean_class_accuracy", "batch"),
])
def test_federated_evaluation_gives_the_central_metrics(task, metric, norm, tmp_path):
    # Every client evaluates its share of the test set; the server pools their counts,
    # so the federated AUC / mean class accuracy are those of the whole test set.
    # With BatchNorm the clients evaluate with the calibrated statistics.
    args = TASKS[task](tmp_path)
    norm_key = {"medmnist": "resnet-norm", "pointcloud": "pointnet-norm"}[task]
    args[args.index("--run-config") + 1] += f" fraction-evaluate=1.0 {norm_key}={norm}"
    config, (row,) = run(tmp_path, args, "--num-clients", "3")
    assert row["fed_accuracy"] == pytest.approx(row["accuracy"], abs=1e-9)
    assert row[f"fed_{metric}"] == pytest.approx(row[metric], abs=1e-6)
    # The statistics behind them ride in the replies' metric records, counted apart from
    # the payload: for the AUC, a log-odds and a 0/1 target per test image and class.
    assert row["record_bytes_down"] > 0
    if task == "medmnist":
        assert row["record_bytes_up"] > 156 * 2 * (8 + 8)  # BreastMNIST: 156 test images, 2 classes
    else:
        assert 0 < row["record_bytes_up"] < 10_000  # class counts
    if norm == "group":
        return
    # The clients measured the aggregate's BatchNorm statistics on their data: the
    # first layer's are the moments of its inputs over the whole training set.
    from fedloom.tasks.base import TaskOptions
    from fedloom.tasks.registry import load_task_data

    state = torch.load(tmp_path / "run" / "model.pt")
    data_dir = args[args.index("--data-dir") + 1]
    if task == "pointcloud":
        options = TaskOptions(num_points=128, model_width=0.125, pointnet_transforms="both", pointnet_norm="batch")
        points = torch.from_numpy(load_task_data("pointcloud", data_dir, "modelnet10", options).train.x)
        w, b = state["input_tnet.features.0.weight"].double(), state["input_tnet.features.0.bias"].double()
        inputs = torch.einsum("oc,npc->npo", w[:, :, 0], points.double()) + b  # its 1x1 conv
        assert_calibrated(state, "input_tnet.features.1", inputs.reshape(-1, inputs.shape[-1]))
    else:
        options = TaskOptions(model_width=0.125, resnet_norm="batch")
        images = torch.from_numpy(load_task_data("medmnist", data_dir, "breastmnist", options).train.x)
        inputs = torch.nn.functional.conv2d(images.double(), state["stem.0.weight"].double(), padding=1)
        assert_calibrated(state, "stem.1", inputs.permute(0, 2, 3, 1).reshape(-1, inputs.shape[1]))
    assert row["bytes_down"] > 3 * 3 * 4 * config["num_parameters"]  # train, query, evaluate: 3 each
