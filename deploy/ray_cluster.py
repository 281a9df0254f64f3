"""Joining an existing Ray cluster (``run_sim.py --ray-address``): where it is, and
whether it answers, checked before the simulation starts.

``ray.init(address=...)`` waits for an unreachable cluster for minutes, retrying; a
launcher should say in one line that the address is wrong. So the head's port is
probed with a TCP connect (bounded by :data:`CONNECT_TIMEOUT_S`), then a child
process joins the cluster with ``ray.init`` and lists its nodes, killed after
:data:`JOIN_TIMEOUT_S` (a port that accepts connections need not be a Ray head:
a proxy may answer). Only a cluster that answers is handed to Flower's Ray backend,
which calls ``ray.init`` with the address and at the end only disconnects: the
cluster keeps running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: Seconds a TCP connect to the head may take.
CONNECT_TIMEOUT_S = 5.0
#: Seconds joining the cluster in a child process may take (importing Ray is most of it).
JOIN_TIMEOUT_S = 45.0
#: The child: join, print the alive nodes as JSON, leave.
_JOIN = (
    "import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
    "from fedloom.strategies.nodes import ray_cluster_nodes; print(json.dumps(ray_cluster_nodes()))"
)


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the given address."""


def current_cluster_file() -> Path:
    """Where ``ray start --head`` records the address of the cluster it started (Ray's
    own ``ray_current_cluster`` file in its temp folder, ``/tmp/ray`` by default)."""
    temp = os.environ.get("RAY_TMPDIR") or ("/tmp" if os.name == "posix" else tempfile.gettempdir())
    return Path(temp) / "ray" / "ray_current_cluster"


def resolve_address(address: str) -> str:
    """``HOST:PORT`` of the head that ``address`` names; ``auto`` means what Ray's own
    ``address="auto"`` means: ``$RAY_ADDRESS``, else the cluster ``ray start`` last
    started on this machine. :class:`ClusterUnreachable` when there is none."""
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS", "").strip()
    if not found and current_cluster_file().is_file():
        found = current_cluster_file().read_text().strip()
    if not found or found == "auto":
        raise ClusterUnreachable(
            "--ray-address auto: no running Ray cluster found ($RAY_ADDRESS is unset and "
            f"{current_cluster_file()} does not exist); start one with 'ray start --head' or pass HOST:PORT"
        )
    return found.removeprefix("ray://")


def _unreachable(resolved: str, address: str, reason: str) -> ClusterUnreachable:
    via = f" (from --ray-address {address})" if resolved != address else ""
    return ClusterUnreachable(
        f"cannot reach a Ray cluster at {resolved}{via}: {reason}; is 'ray start --head' "
        "running there, and its port open to this machine?"
    )


def probe(address: str) -> tuple[str, list[dict[str, Any]]]:
    """The resolved ``HOST:PORT`` of ``address`` and the cluster's alive nodes (node id,
    address, hostname, CPUs), within :data:`CONNECT_TIMEOUT_S` + :data:`JOIN_TIMEOUT_S`
    seconds; :class:`ClusterUnreachable` (one line) when no Ray cluster answers."""
    resolved = resolve_address(address)
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or str(exc))
        raise _unreachable(resolved, address, f"{reason} (TCP, {CONNECT_TIMEOUT_S:g} s)") from None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _JOIN, resolved], capture_output=True, text=True,
            timeout=JOIN_TIMEOUT_S, start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise _unreachable(resolved, address, f"no Ray head answered within {JOIN_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if "Error" in ln] or done.stderr.splitlines() or ["?"]
        raise _unreachable(resolved, address, lines[-1].strip())
    return resolved, json.loads(done.stdout.strip().splitlines()[-1])
