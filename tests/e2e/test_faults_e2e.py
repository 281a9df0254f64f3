"""Runs survive crashes, failing clients and attackers (end to end, Ray clients)."""

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedloom import run_sim

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def read_rows(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_mid_round_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    # Every client sleeps 1 s per round, so the kill lands inside a round.
    cmd = [sys.executable, "run_sim.py", "--num-clients", "3", "--rounds", "5", "--seed", "3",
           "--run-dir", str(run_dir), "--straggler-rate", "1", "--straggler-delay", "1",
           "--compression", "topk:0.1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while len(read_rows(run_dir)) < 2:
            assert proc.poll() is None, "run ended before it could be killed"
            assert time.time() < deadline, "run too slow"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(read_rows(run_dir))
    assert 2 <= done < 5
    # Clients kept their error-feedback residuals on disk, under the run's ID.
    run_id = json.loads((run_dir / "config.json").read_text())["run_id"]
    assert len(run_id) == 16 and any((run_dir / "client-state" / run_id).rglob("round-*.pkl"))

    assert run_sim.main(["--resume", str(run_dir)]) == 0

    rows = read_rows(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resumed_at_rounds"] and config["resumed_at_rounds"][0] >= 2
    assert config["run_id"] == run_id  # the resumed run found its clients' state
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 6


def test_resume_errors_are_clear(tmp_path, capsys, digits_runs):
    assert run_sim.main(["--resume", str(tmp_path)]) == 2
    assert "not a fedloom results folder" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    shutil.copytree(digits_runs[0] / "plain", run_dir)  # a finished 2-round run of 2 clients
    capsys.readouterr()
    # Fewer rounds than done: nothing would run, and config.json would contradict the rows.
    assert run_sim.main(["--resume", str(run_dir), "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "--rounds 1 is below the 2 rounds the run has done; valid: >= 2" in err and err.count("\n") == 1
    # A kill before round 1 recorded num_clients: no silent default of 10 clients.
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "num_clients": None}))
    assert run_sim.main(["--resume", str(run_dir), "--rounds", "3"]) == 2
    assert "config.json does not record num_clients; pass --num-clients" in capsys.readouterr().err


def test_a_resume_drops_epsilon_rows_past_the_checkpoint(tmp_path):
    from fedloom.server.privacy import EPSILON_FILE, trim_epsilons

    rows = [{"round": r, "partition_id": c, "epsilon": 0.1 * r} for r in (1, 2) for c in (0, 1)]
    (tmp_path / EPSILON_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    trim_epsilons(tmp_path, 1)  # round 2 runs again and writes its own rows
    kept = [json.loads(x) for x in (tmp_path / EPSILON_FILE).read_text().splitlines()]
    assert kept == rows[:2]


def test_a_new_run_does_not_overwrite_a_finished_one(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "epsilon.jsonl").write_text("old rows\n")
    assert run_sim.main(["--num-clients", "2", "--rounds", "1", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"run-dir {tmp_path} already holds a run (config.json): --resume continues it" in err
    assert err.count("\n") == 1 and (tmp_path / "epsilon.jsonl").read_text() == "old rows\n"


def test_client_state_is_kept_per_run(tmp_path):
    # Two runs on one node (one state-dir): neither loads nor prunes the other's state.
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, RecordDict

    from fedloom.client.app import client_state_dir
    from fedloom.client.state import load_state, save_state
    from fedloom.config import parse_run_config

    cfg = parse_run_config({})
    node = SimpleNamespace(node_config={"state-dir": str(tmp_path)})
    old, new = client_state_dir(cfg, node, 0, "aaaa"), client_state_dir(cfg, node, 0, "bbbb")
    assert old == tmp_path / "aaaa" / "0" and new == tmp_path / "bbbb" / "0"
    for r in (1, 2, 3, 4):
        save_state(RecordDict({"dp": ConfigRecord({"steps": 10 * r})}), old, r)
    save_state(RecordDict({"dp": ConfigRecord({"steps": 1})}), new, 1)
    assert load_state(RecordDict(), new, 2) == 1  # its own round 1, not the old run's round 4
    assert sorted(p.name for p in old.iterdir()) == ["round-3.pkl", "round-4.pkl"]


def test_failing_clients_are_left_out_and_counted(tmp_path, capfd):
    run_dir = tmp_path / "run"
    code = run_sim.main(["--num-clients", "5", "--rounds", "4", "--fail-rate", "0.3",
                         "--run-dir", str(run_dir), "--seed", "2"])
    assert code == 0
    rows = read_rows(run_dir)
    assert len(rows) == 4
    assert sum(r["failures"] for r in rows) > 0
    assert all(r["num_clients"] + r["failures"] == 5 for r in rows)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    # Each failed reply: a line in failures.jsonl and on the console, with the client's
    # own exception; no Flower traceback for an injected failure.
    failed = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert [f["round"] for f in failed] == [r["round"] for r in rows for _ in range(r["failures"])]
    for f in failed:
        assert f["phase"] == "train"
        assert f["reason"].startswith(f"InjectedFailure: injected failure (fail-rate=0.3) in round {f['round']}, partition ")
        if "partition_id" in f:  # known from the node's earlier replies
            assert f["reason"].endswith(f"partition {f['partition_id']}")
    out, err = capfd.readouterr()
    assert out.count(" failed in train: InjectedFailure: injected failure") == len(failed)
    assert "Traceback" not in out + err


def test_median_holds_where_fedavg_falls_under_sign_flipping(tmp_path):
    accuracy = {}
    for strategy in ("fedavg", "fedmedian"):
        run_dir = tmp_path / strategy
        code = run_sim.main(["--num-clients", "10", "--rounds", "5", "--strategy", strategy,
                             "--attack", "sign-flip", "--attack-fraction", "0.2",
                             "--run-dir", str(run_dir)])
        assert code == 0
        accuracy[strategy] = read_rows(run_dir)[-1]["accuracy"]
    assert accuracy["fedmedian"] > 0.8
    assert accuracy["fedavg"] < accuracy["fedmedian"] - 0.2


def test_run_ends_clearly_when_too_few_clients_remain(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_sim.main(["--num-clients", "2", "--rounds", "3", "--fail-rate", "1.0",
                         "--run-dir", str(run_dir)])
    assert code == 1  # no round completed: a failed run
    captured = capsys.readouterr()
    assert "run ended early, too few clients remain: round 1: only 0 of 2 sampled clients replied" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(
        "run_sim.py: error: no round completed: too few clients remain: "
        "round 1: only 0 of 2 sampled clients replied"
    )
    failed = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert [(f["round"], f["phase"]) for f in failed] == [(1, "train"), (1, "train")]
    assert not (run_dir / "metrics.jsonl").exists()
    assert (run_dir / "model.pt").is_file()  # the last model stands
