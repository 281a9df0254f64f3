"""Secure aggregation simulated end to end: same accuracy as plaintext, clients dropping."""

import json

import pytest

from fedloom import run_sim

pytestmark = pytest.mark.e2e


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_secagg_run_matches_the_seeded_plaintext_run_with_clients_dropping(tmp_path):
    # Seed 4, fail-rate 0.25: partition 2 fails in rounds 1-3, partition 1 in round 2 and
    # partition 4 in round 3, after sharing their keys (the failure is in training); the
    # plaintext run loses the same clients, so both average the same survivors.
    common = ["--num-clients", "5", "--rounds", "3", "--seed", "4", "--fail-rate", "0.25"]
    assert run_sim.main([*common, "--secagg", "--run-dir", str(tmp_path / "secagg")]) == 0
    assert run_sim.main([*common, "--run-dir", str(tmp_path / "plain")]) == 0
    secure, plain = rows(tmp_path / "secagg"), rows(tmp_path / "plain")
    assert [r["num_clients"] for r in secure] == [r["num_clients"] for r in plain] == [4, 3, 3]
    assert abs(secure[-1]["accuracy"] - plain[-1]["accuracy"]) <= 0.005
    assert secure[-1]["accuracy"] > 0.85
    assert set(secure[-1]) == set(plain[-1])  # metrics.jsonl keeps its keys
    # Keys, shares and unmasking travel beside the masked updates (uint32 per parameter,
    # as plaintext float32), and are counted.
    assert secure[0]["bytes_down"] > plain[0]["bytes_down"]
    failures = [json.loads(x) for x in (tmp_path / "secagg" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 5 and all("InjectedFailure" in f["reason"] for f in failures)
