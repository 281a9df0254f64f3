"""A population far larger than a round: 2,000 MNIST clients, 20 per round."""

import json

import pytest
import torch

from fedloom import run_sim
from conftest import require_data

pytestmark = pytest.mark.e2e


def test_two_thousand_clients_run_with_a_checkpoint_that_does_not_grow_with_them(tmp_path):
    data = require_data("mnist.npz").parent
    run_dir = tmp_path / "run"
    assert run_sim.main(["--task", "mnist", "--data-dir", str(data), "--num-clients", "2000",
                         "--fraction", "0.01", "--rounds", "2", "--seed", "5",
                         "--run-dir", str(run_dir)]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_clients"] for r in rows] == [20, 20] and rows[-1]["loss"] < rows[0]["loss"]
    parts = json.loads((run_dir / "partitions.json").read_text())
    assert len(parts["clients"]) == 2000 and sum(c["size"] for c in parts["clients"]) == 60000
    assert json.loads((run_dir / "config.json").read_text())["num_clients"] == 2000
    # The checkpoint is the model plus a few kilobytes, whatever the population.
    model = torch.load(run_dir / "model.pt", weights_only=True)
    model_bytes = sum(t.numel() * t.element_size() for t in model.values())
    assert (run_dir / "checkpoint.pt").stat().st_size < model_bytes + 200_000
