"""A resumed run is the run that never stopped: N rounds straight vs N-1 and a resume."""

import json

import pytest
import torch

from fedloom import run_sim

pytestmark = pytest.mark.e2e

# FedAdam holds state on the server (its moments) that round 2 needs from round 1. The
# DP wrappers' state (ledger, releases, adaptive norm) has its unit test in test_dp.py.
# Half the clients per round: which partitions train must come from the seed (the two
# runs' round 1 and the resumed round 2), not from the node IDs Flower draws at each start.
ARGS = ["--num-clients", "4", "--fraction", "0.5", "--partition", "dirichlet:0.3", "--seed", "4",
        "--strategy", "fedadam", "--run-config", "min-train-nodes=2"]


def timeless(row):
    return {k: v for k, v in row.items() if not k.endswith("seconds")}


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_matches_the_straight_run_bit_for_bit(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_sim.main([*ARGS, "--rounds", "2", "--run-dir", str(straight)]) == 0
    assert run_sim.main([*ARGS, "--rounds", "1", "--run-dir", str(split)]) == 0
    assert run_sim.main(["--resume", str(split), "--rounds", "2"]) == 0
    expected, got = rows(straight), rows(split)
    assert [r["round"] for r in got] == [1, 2] and [r["num_clients"] for r in got] == [2, 2]
    assert [timeless(r) for r in got] == [timeless(r) for r in expected]
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
