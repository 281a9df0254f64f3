"""End-to-end simulations: Flower's simulation engine with Ray actor clients."""

import csv
import json
import textwrap

import pytest
import torch
from flwr.app import ArrayRecord

from fedloom import run_sim
from fedloom.tasks.registry import get_task, load_task_data

pytestmark = pytest.mark.e2e


def read_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model_bytes(task_name: str, data_dir: str = "") -> int:
    task = get_task(task_name)
    model = task.build_model(load_task_data(task_name, data_dir, task.datasets[0]))
    return ArrayRecord(model.state_dict()).count_bytes()


def test_digits_run_learns_and_leaves_a_complete_results_folder(tmp_path):
    run_dir = tmp_path / "run"
    code = run_sim.main([
        "--num-clients", "3", "--rounds", "3", "--run-dir", str(run_dir), "--seed", "1",
        "--run-config", "fraction-evaluate=1.0",
    ])
    assert code == 0
    for name in ("config.json", "partitions.json", "metrics.jsonl", "metrics.csv",
                 "accuracy.png", "loss.png", "model.pt", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    rows = read_rows(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] and rows[-1]["accuracy"] > 0.85
    assert rows[-1]["loss"] < rows[0]["loss"]
    per_model = model_bytes("digits")
    for row in rows:
        assert row["num_clients"] == 3 and row["failures"] == 0 and row["seconds"] > 0
        assert 0 < row["central_seconds"] < row["seconds"]  # the server's own test-set pass
        assert 0 < row["train_loss"] < 3
        # 3 train replies up; 3 train + 3 evaluate messages down, each a full model.
        assert row["bytes_up"] == 3 * per_model
        assert row["bytes_down"] == 6 * per_model
        # Clients evaluate on disjoint shares of the test set: the weighted mean
        # over all of them is the centralized metric.
        assert row["fed_accuracy"] == pytest.approx(row["accuracy"], abs=1e-6)
    with open(run_dir / "metrics.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 3 and float(csv_rows[2]["accuracy"]) == pytest.approx(rows[2]["accuracy"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["task"] == "digits" and config["seed"] == 1
    assert config["num_parameters"] == 64 * 128 + 128 + 128 * 10 + 10
    assert config["num_clients"] == 3 and config["packages"]["flwr"]
    parts = json.loads((run_dir / "partitions.json").read_text())
    assert sum(c["size"] for c in parts["clients"]) == 1437
    assert [sum(c["label_counts"]) for c in parts["clients"]] == [c["size"] for c in parts["clients"]]
    # Each node reported its partition: every one of the 3 once (round 1 samples all 3).
    assert sorted(n["partition_id"] for n in parts["nodes"]) == [0, 1, 2] and parts["num_partitions"] == 3
    final = torch.load(run_dir / "model.pt")
    assert set(final) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_user_strategy_from_a_file_with_label_skew(tmp_path):
    strategy_file = tmp_path / "plugin" / "halving.py"
    strategy_file.parent.mkdir()
    strategy_file.write_text(textwrap.dedent('''
        from flwr.serverapp.strategy import FedAvg

        class CountingFedAvg(FedAvg):
            """FedAvg that counts its aggregations (a user's own strategy)."""
            calls = 0

            def aggregate_train(self, server_round, replies):
                type(self).calls += 1
                return super().aggregate_train(server_round, replies)
    '''))
    run_dir = tmp_path / "run"
    code = run_sim.main([
        "--num-clients", "4", "--fraction", "0.5", "--rounds", "2", "--partition", "dirichlet:0.5",
        "--strategy", f"{strategy_file}:CountingFedAvg", "--run-dir", str(run_dir),
    ])
    assert code == 0
    rows = read_rows(run_dir)
    assert [r["num_clients"] for r in rows] == [2, 2]
    import sys

    module = sys.modules["fedloom_user_strategy_halving"]
    assert module.CountingFedAvg.calls == 2


def test_fedprox_on_pathological_shards(tmp_path):
    run_dir = tmp_path / "run"
    code = run_sim.main([
        "--num-clients", "4", "--rounds", "3", "--partition", "shards:2", "--strategy", "fedprox",
        "--run-dir", str(run_dir), "--run-config", "proximal-mu=0.1",
    ])
    assert code == 0
    rows = read_rows(run_dir)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    parts = json.loads((run_dir / "partitions.json").read_text())
    # 8 shards of ~180 sorted examples; a shard spans at most 3 of the ~144-example
    # labels, so a client sees at most 6 of the 10 labels (iid clients see all 10).
    assert all(sum(1 for c in client["label_counts"] if c) <= 6 for client in parts["clients"])


def test_mnist_cnn_learns(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    code = run_sim.main([
        "--task", "mnist", "--data-dir", str(shared_data), "--num-clients", "20",
        "--fraction", "0.1", "--rounds", "2", "--batch-size", "32", "--run-dir", str(run_dir),
    ])
    assert code == 0
    rows = read_rows(run_dir)
    assert rows[0]["num_clients"] == 2
    assert rows[-1]["accuracy"] > 0.9
    assert rows[-1]["bytes_up"] == 2 * model_bytes("mnist", str(shared_data))
