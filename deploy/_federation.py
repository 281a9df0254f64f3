"""Wait for a federation to come up: the SuperLink's TLS port, SuperNodes online.

Shared by local_federation.py and the deployment tests.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def wait_for_tls(
    host: str,
    port: int,
    ca: Path,
    proc: subprocess.Popen[bytes],
    timeout: float,
    server_hostname: str | None = None,
) -> dict[str, object]:
    """Wait for a TLS handshake with ``host:port`` verified against ``ca``; return the peer cert."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=2) as raw, \
                    context.wrap_socket(raw, server_hostname=server_hostname or host) as tls:
                return dict(tls.getpeercert() or {})
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{host}:{port} did not accept TLS within {timeout:g}s")


def flwr_json(
    args: Sequence[str],
    env: Mapping[str, str],
    timeout: float = 60.0,
    wrap: Sequence[str] = (),
) -> dict[str, object]:
    """Run ``flwr <args> --format json`` (after the ``wrap`` prefix); the JSON object it prints."""
    exe = str(Path(sys.executable).parent / "flwr")
    done = subprocess.run(
        [*wrap, exe, *args, "--format", "json"],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    start = done.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"flwr {' '.join(args)}: {done.stdout}{done.stderr}")
    return json.loads(done.stdout[start:])


def wait_for_nodes(
    connection: str,
    env: Mapping[str, str],
    count: int,
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    wrap: Sequence[str] = (),
) -> list[dict[str, object]]:
    """Wait until ``count`` SuperNodes are online; return the node list."""
    deadline = time.monotonic() + timeout
    nodes: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a SuperNode exited with {proc.returncode}")
        reply = flwr_json(["supernode", "list", connection], env, wrap=wrap)
        listed = reply.get("nodes", [])
        nodes = [n for n in listed if isinstance(n, dict)] if isinstance(listed, list) else []
        if sum(1 for n in nodes if n.get("status") == "online") >= count:
            return nodes
        time.sleep(1.0)
    raise TimeoutError(f"{count} SuperNodes not online within {timeout:g}s: {nodes}")
