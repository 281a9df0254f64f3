"""Deployment across network interfaces: SuperLink and SuperNodes in separate network namespaces.

deploy/netns.py makes a link namespace (bridge 10.77.x.1/24) and one namespace
per node (eth0, a veth into the bridge). The SuperLink runs in the link
namespace, each SuperNode in its own, the CLI (``flwr run``) in node 0's: their
only way to each other is the veth pairs. One round of digits over TLS with
node authentication must finish, and each node's eth0 must have carried at least
the model down and its update up. Skips without root or iproute2; the
namespaces are deleted at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_harness import DEPLOY, Processes, script, wait_for_log, wait_for_nodes

sys.path.insert(0, str(DEPLOY))
import netns  # noqa: E402  (deploy/netns.py)

pytestmark = pytest.mark.e2e

NUM_NODES = 2
PORT = 9093
SUBNET = "10.77.0"
CONNECTION = "fedloom-netns"


@pytest.fixture()
def namespaces() -> Iterator[str]:
    """The namespaces' name prefix; they exist for the test only."""
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    prefix = f"flt{os.getpid() % 100000}"
    try:
        netns.up(prefix, NUM_NODES, SUBNET)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield prefix
    finally:
        netns.down(prefix, NUM_NODES)
        assert not netns.existing_namespaces() & {
            netns.link_ns(prefix),
            *(netns.node_ns(prefix, i) for i in range(NUM_NODES)),
        }


def in_ns(name: str) -> list[str]:
    return ["ip", "netns", "exec", name]


def run_in(
    name: str, cmd: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*in_ns(name), *cmd], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_one_round_crosses_the_veth_interfaces(namespaces: str, tmp_path: Path) -> None:
    prefix, root = namespaces, tmp_path
    link, nodes = netns.link_ns(prefix), [netns.node_ns(prefix, i) for i in range(NUM_NODES)]
    server_ip = netns.link_address(SUBNET)
    procs = Processes(root / "logs")
    cli_env = procs.env({"FLWR_HOME": str(root / "homes" / "cli")})
    try:
        for args in (
            ["make_certs.py", "--out", str(root / "certs"), "--host", server_ip],
            [
                "make_node_keys.py",
                "--out",
                str(root / "keys"),
                "--name",
                "node-0",
                "--name",
                "node-1",
            ],
        ):
            done = subprocess.run(
                [*script(args[0]), *args[1:]], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
        (root / "server").mkdir()
        procs.start(
            "superlink",
            [
                *script("start_superlink.py"),
                "--certs",
                str(root / "certs"),
                "--host",
                "0.0.0.0",
                "--port",
                str(PORT),
                "--workdir",
                str(root / "server"),
            ],
            env={"FLWR_HOME": str(root / "homes" / "superlink")},
            wrap=in_ns(link),
        )
        wait_for_log(procs, "superlink", f"Uvicorn running on https://0.0.0.0:{PORT}", timeout=60)
        before = [netns.counters(prefix, i) for i in range(NUM_NODES)]
        # The operator's CLI sits on node 0's host: control traffic crosses eth0 too.
        done = run_in(
            nodes[0],
            [
                *script("connect.py"),
                "--name",
                CONNECTION,
                "--address",
                f"{server_ip}:{PORT}",
                "--ca",
                str(root / "certs" / "ca.crt"),
            ],
            cli_env,
            60,
        )
        assert done.returncode == 0, done.stderr
        done = run_in(
            nodes[0],
            [
                *script("register_nodes.py"),
                "--connection",
                CONNECTION,
                str(root / "keys" / "node-0.pub"),
                str(root / "keys" / "node-1.pub"),
            ],
            cli_env,
            90,
        )
        assert done.returncode == 0, done.stderr + procs.tail("superlink")
        started = []
        for i, node in enumerate(nodes):
            started.append(
                procs.start(
                    node,
                    [
                        *script("start_supernode.py"),
                        "--superlink",
                        f"{server_ip}:{PORT}",
                        "--ca",
                        str(root / "certs" / "ca.crt"),
                        "--key",
                        str(root / "keys" / f"node-{i}"),
                        "--partition-id",
                        str(i),
                        "--num-partitions",
                        str(NUM_NODES),
                        "--data-dir",
                        str(root / node / "data"),
                        "--state-dir",
                        str(root / node / "state"),
                    ],
                    env={"FLWR_HOME": str(root / "homes" / node)},
                    wrap=in_ns(node),
                )
            )
        wait_for_nodes(
            CONNECTION, cli_env, NUM_NODES, timeout=90, procs=started, wrap=in_ns(nodes[0])
        )
        run_dir = root / "server" / "runs" / "netns"

        done = run_in(
            nodes[0],
            [
                *script("submit_run.py"),
                "--connection",
                CONNECTION,
                "--timeout",
                "150",
                "--run-config",
                f'num-server-rounds=1 seed=7 run-dir="{run_dir}"',
            ],
            cli_env,
            170,
        )

        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        after = [netns.counters(prefix, i) for i in range(NUM_NODES)]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 1 and rows[0]["num_clients"] == NUM_NODES and rows[0]["accuracy"] > 0.5
        for i in range(
            NUM_NODES
        ):  # each node downloaded the model and uploaded its update via eth0
            assert after[i]["rx_bytes"] - before[i]["rx_bytes"] > rows[0]["bytes_down"] / NUM_NODES
            assert after[i]["tx_bytes"] - before[i]["tx_bytes"] > rows[0]["bytes_up"] / NUM_NODES
    finally:
        procs.stop_all()
        assert not procs.remaining(), f"processes left running: {procs.remaining()}"
