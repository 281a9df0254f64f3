"""A simulation joins a 2-node Ray cluster (head + worker on this machine), runs its
clients on both nodes, records where each ran, and leaves the cluster running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedloom import run_sim
from fedloom.deploy.ray_cluster import ClusterUnreachable, probe

pytestmark = pytest.mark.e2e
RAY = Path(sys.executable).parent / "ray"  # the venv's ray, the version the driver imports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(*args: str, log: Path) -> subprocess.Popen:
    """``ray start --block`` in its own session: its process group is exactly the Ray
    processes this node runs, so the test stops them (and no other Ray on the machine)."""
    return subprocess.Popen(
        [str(RAY), "start", "--block", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
         "--node-ip-address=127.0.0.1", *args],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_for_nodes(address: str, count: int, timeout: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes = probe(address)[1]
            if len(nodes) >= count:
                return nodes
        except ClusterUnreachable:
            pass
        assert time.monotonic() < deadline, f"the test cluster did not reach {count} nodes"
        time.sleep(2)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the node's own process group, SIGKILL to what is left after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(1)  # the reaper ends the node's children after its parent
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture()
def two_node_cluster() -> Iterator[tuple[str, list[dict]]]:
    temp = Path(tempfile.mkdtemp(prefix="flr", dir="/tmp"))  # short: Ray's socket paths
    address = f"127.0.0.1:{free_port()}"
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(start_node("--head", f"--port={address.rsplit(':', 1)[1]}", f"--temp-dir={temp}",
                                "--include-dashboard=false", log=temp / "head.log"))
        wait_for_nodes(address, 1)
        nodes.append(start_node(f"--address={address}", log=temp / "worker.log"))
        yield address, wait_for_nodes(address, 2)
    finally:
        for proc in reversed(nodes):
            stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_simulation_runs_its_clients_on_both_nodes_and_leaves_the_cluster_up(tmp_path, two_node_cluster):
    address, nodes = two_node_cluster
    run_dir = tmp_path / "run"
    assert run_sim.main(["--ray-address", address, "--num-clients", "4", "--rounds", "2", "--seed", "2",
                         "--run-dir", str(run_dir)]) == 0
    ran = [json.loads(line) for line in (run_dir / "nodes.jsonl").read_text().splitlines()]
    assert sorted({r["partition_id"] for r in ran}) == [0, 1, 2, 3]
    assert {r["ray_node_id"] for r in ran} == {n["node_id"] for n in nodes}  # both nodes trained
    cluster = json.loads((run_dir / "config.json").read_text())["ray_cluster"]
    assert cluster["address"] == address
    assert sorted(n["node_id"] for n in cluster["nodes"]) == sorted(n["node_id"] for n in nodes)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_clients"] for r in rows] == [4, 4]
    assert len(probe(address)[1]) == 2  # the cluster is still up
