#!/usr/bin/env python
"""Register SuperNode public keys with a SuperLink that runs with node authentication.

Example: python deploy/register_nodes.py keys/node-0.pub keys/node-1.pub --connection fedloom

Only nodes whose public key is registered can connect. Prints one
``<key file>: node <id>`` line per key. Run it where the Flower CLI has the
connection (deploy/connect.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, fail, flower_exe, require_file  # noqa: E402
from submit_run import require_connection  # noqa: E402

PUBLIC_PREFIX = b"ecdsa-sha2-nistp"


def register(public_key: Path, connection: str, timeout: float) -> int:
    """Register one public key; return the node id the SuperLink assigned."""
    try:
        done = subprocess.run(
            [
                flower_exe("flwr"),
                "supernode",
                "register",
                str(public_key),
                connection,
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fail(f"registering {public_key}: no answer from {connection!r} within {timeout:g}s")
    reply: dict[str, object] = {}
    start = done.stdout.find("{")
    if start >= 0:
        try:
            reply = json.loads(done.stdout[start:])
        except json.JSONDecodeError:
            reply = {}
    if done.returncode != 0 or not reply.get("success"):
        detail = str(reply.get("error-message") or done.stderr or done.stdout).strip().splitlines()
        fail(f"registering {public_key} failed: {detail[-1] if detail else 'no output'}")
    return int(str(reply["node-id"]))


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Register SuperNode public keys (node authentication).")
    p.add_argument(
        "public_keys", nargs="+", help="public key files (<name>.pub from make_node_keys.py)"
    )
    p.add_argument(
        "--connection", default="fedloom", help="SuperLink connection name [default: fedloom]"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per registration [default: 60]"
    )
    args = p.parse_args(argv)
    require_connection(args.connection)
    keys = [require_file(k, "public key") for k in args.public_keys]
    for key in keys:
        if not key.read_bytes().startswith(PUBLIC_PREFIX):
            fail(
                f"{key} is not an OpenSSH ECDSA public key (give <name>.pub, never the private key)"
            )
    for key in keys:
        print(f"{key}: node {register(key, args.connection, args.timeout)}")


if __name__ == "__main__":
    main()
