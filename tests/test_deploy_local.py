"""deploy/local_federation.py: the one-command deployment on this machine runs a
2-round digits run submitted the way its banner says, and SIGTERM stops every
process it started (issue 35)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from deploy_harness import Processes, script, wait_for_log

pytestmark = pytest.mark.e2e


def test_local_federation_runs_two_rounds_and_sigterm_leaves_no_process(tmp_path: Path) -> None:
    procs = Processes(tmp_path / "logs")  # its marker reaches everything the federation starts
    root, run_dir = tmp_path / "federation", tmp_path / "run"
    try:
        federation = procs.start("federation", [*script("local_federation.py"), "--nodes", "2", "--dir", str(root)])
        wait_for_log(procs, "federation", "Ctrl-C stops the federation", timeout=300)
        banner = procs.log("federation")
        home = re.search(r"FLWR_HOME=(\S+) python deploy/submit_run.py --connection (\S+)", banner)
        assert home is not None, banner
        env = {**procs.env(), "FLWR_HOME": home.group(1)}

        done = subprocess.run(
            [*script("submit_run.py"), "--connection", home.group(2), "--timeout", "240",
             "--run-config", f'num-server-rounds=2 min-available-nodes=2 run-dir="{run_dir}"'],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )

        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2]
        assert all(r["num_clients"] == 2 for r in rows) and rows[1]["accuracy"] > 0.5
        # Flower's round summary: node config is not a train metric (it averaged partition-id).
        assert "Aggregated ClientApp-side Train Metrics" in done.stdout
        assert "partition-id" not in done.stdout and "num-partitions" not in done.stdout

        federation.send_signal(signal.SIGTERM)
        returncode = federation.wait(timeout=120)

        assert returncode == 0, procs.tail("federation")
        assert "stopped: no process of the federation is left" in procs.log("federation")
        assert not procs.remaining(), f"left running: {procs.remaining()}"
    finally:
        procs.stop_all()
    assert os.path.isdir(root / "certs") and (root / "keys" / "node-1.pub").is_file()
