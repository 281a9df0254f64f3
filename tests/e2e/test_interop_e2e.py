"""Interoperability with plain Flower apps (tests/flower_apps, no fedloom imports), both ways,
in Flower's simulation runtime: digits, 2 rounds, 2 clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedloom import run_sim

pytestmark = pytest.mark.e2e

FLOWER_APPS = Path(__file__).resolve().parents[1] / "flower_apps"


def test_a_plain_flower_clientapp_trains_under_fedlooms_serverapp(tmp_path):
    from flower_apps.client_app import app as plain_client

    from fedloom.server.app import app as server_app

    run_dir = tmp_path / "run"
    args = run_sim.build_parser().parse_args(
        ["--num-clients", "2", "--rounds", "2", "--run-dir", str(run_dir), "--seed", "3"]
    )
    run_sim.simulate(run_sim.resolve_config(args), 2, 1.0, 0.0, False, apps=(server_app, plain_client))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["num_clients"] == 2 and r["failures"] == 0 and r["rejected"] == 0 for r in rows)
    # The client trained with the server's lr, local-epochs and batch-size (it has no others).
    assert rows[-1]["accuracy"] > 0.8 and rows[-1]["loss"] < rows[0]["loss"]
    assert 0 < rows[0]["train_loss"] < 3


def test_fedlooms_clientapp_trains_under_a_plain_flower_serverapp(tmp_path):
    from flower_apps.server_app import app as plain_server

    from fedloom.client.app import app as client_app

    out = tmp_path / "out"
    # The plain app's own run config: learning-rate and out-dir are keys fedloom does not know.
    run_config = {"num-server-rounds": 2, "fraction-evaluate": 1.0, "learning-rate": 0.1,
                  "local-epochs": 1, "batch-size": 16, "out-dir": str(out)}
    run_sim.simulate(run_config, 2, 1.0, 0.0, False, apps=(plain_server, client_app), app_dir=FLOWER_APPS)
    result = json.loads((out / "result.json").read_text())
    assert result["changed"]
    central = {int(r): m for r, m in result["central"].items()}
    assert sorted(central) == [0, 1, 2]
    assert central[2]["accuracy"] > central[0]["accuracy"] + 0.3 and central[2]["accuracy"] > 0.8
    # Stock FedAvg got scalar metrics only (it averages each, weighted by num-examples): no
    # fedloom extras (partition ids, stat.* lists) that it would average into junk.
    assert set(result["train"]["2"]) == {"train_loss"}
    assert set(result["federated"]["2"]) == {"accuracy", "loss"}
