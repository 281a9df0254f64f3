"""A resumed run is the run that never stopped: N rounds straight vs N-1 and a resume."""

import json

import pytest
import torch

from fedloom import run_sim

pytestmark = pytest.mark.e2e

# FedAdam holds state on the server (its moments) that round 2 needs from round 1. The
# DP wrappers' state (ledger, releases, adaptive norm) has its unit test in test_dp.py.
ARGS = ["--num-clients", "3", "--seed", "4", "--strategy", "fedadam"]
COMPARED = ("accuracy", "loss", "train_loss", "num_clients")


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_matches_the_straight_run_bit_for_bit(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_sim.main([*ARGS, "--rounds", "2", "--run-dir", str(straight)]) == 0
    assert run_sim.main([*ARGS, "--rounds", "1", "--run-dir", str(split)]) == 0
    assert run_sim.main(["--resume", str(split), "--rounds", "2"]) == 0
    expected, got = rows(straight), rows(split)
    assert [r["round"] for r in got] == [1, 2]
    assert [{k: r[k] for k in COMPARED} for r in got] == [{k: r[k] for k in COMPARED} for r in expected]
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
