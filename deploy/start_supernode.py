#!/usr/bin/env python
"""Start a SuperNode (one fedloom client) that connects to the SuperLink over TLS.

Example:
    python deploy/start_supernode.py --superlink 10.0.0.5:9093 --ca certs/ca.crt \\
        --key keys/node-0 --partition-id 0 --num-partitions 2 \\
        --data-dir ~/fedloom/data --state-dir ~/fedloom/state

The node's settings reach the ClientApp as node config: ``partition-id`` and
``num-partitions`` (which share of the data this client trains on), ``data-dir``
(where this machine keeps the data files), ``state-dir`` (per-client state that
must outlive a round, e.g. DP accountants and error feedback, on this node's disk)
and, for encrypted aggregation, ``he-secret-context`` (this node's copy of
secret.ctx from provision_he.py, with params.json beside it).

Before Flower starts, the runtime port is checked and the SuperLink probed with one
TLS handshake; while it runs, Flower's output passes through and the failures it
leaves unexplained (unregistered key, TLS/CA or plain-text/TLS mismatch, port in
use) end it with one ``error:`` line. Exit status: 0 after Ctrl-C or SIGTERM (a
graceful stop), 2 for a mistake this script names, 1 for any other failure Flower
reports (its ``Exit Code: N`` lines above say which).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, fail, flower_exe, parse_host_port, require_file, warn_insecure  # noqa: E402
from _probe import port_in_use, transport_problem  # noqa: E402
from _supervise import NodeTarget, supervise  # noqa: E402


def _directory(value: str, flag: str, private: bool = False) -> Path:
    """``value`` as an absolute directory, created when missing; ``private``: owned by this
    user and writable by no one else."""
    path = Path(value).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{flag} {value}: cannot create it ({exc.strerror})")
    if not os.access(path, os.W_OK):
        fail(f"{flag} {value} is not writable")
    info = path.stat()
    if private and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        # The node unpickles its state from here: whoever may write it runs code as this user.
        fail(
            f"{flag} {value} must be owned by this user and writable by no one else "
            f"(mode {oct(info.st_mode & 0o777)}): chmod go-w it or pick another folder"
        )
    return path


def require_owner_only(value: str, flag: str) -> Path:
    """A secret file (private key, HE secret context) that no one but its owner can read."""
    path = require_file(value, flag)
    if path.stat().st_mode & 0o077:
        fail(f"{flag} {value} is readable by others (mode {oct(path.stat().st_mode & 0o777)}): chmod 600 it")
    return path


def node_config(
    *,
    partition_id: int,
    num_partitions: int,
    data_dir: Path,
    state_dir: Path,
    he_secret: Path | None,
) -> str:
    """The ``--node-config`` string (TOML values; paths as quoted strings)."""
    items = {
        "partition-id": str(partition_id),
        "num-partitions": str(num_partitions),
        "data-dir": json.dumps(str(data_dir)),
        "state-dir": json.dumps(str(state_dir)),
    }
    if he_secret is not None:
        items["he-secret-context"] = json.dumps(str(he_secret))
    return " ".join(f"{k}={v}" for k, v in items.items())


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Start a Flower SuperNode running the fedloom ClientApp.")
    p.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    p.add_argument("--ca", help="CA certificate (ca.crt) that signed the SuperLink's certificate")
    p.add_argument(
        "--key", help="this node's private key (make_node_keys.py), registered on the SuperLink"
    )
    p.add_argument(
        "--partition-id",
        type=int,
        required=True,
        help="this client's partition, 0..num-partitions-1",
    )
    p.add_argument(
        "--num-partitions", type=int, required=True, help="number of clients the data is split into"
    )
    p.add_argument("--data-dir", required=True, help="folder with this node's data files")
    p.add_argument(
        "--state-dir", required=True, help="folder for per-client state kept across rounds"
    )
    p.add_argument(
        "--he-secret-context", help="secret.ctx for encrypted aggregation (params.json beside it)"
    )
    p.add_argument(
        "--runtime-port",
        type=int,
        default=9094,
        help="local port of the runtime API, distinct per SuperNode on one machine [default: 9094]",
    )
    p.add_argument(
        "--max-wait-time", type=float, help="give up after this many seconds without the SuperLink"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="connect without TLS or authentication (test networks only)",
    )
    args = p.parse_args(argv)
    host, port = parse_host_port(args.superlink, "--superlink")
    if args.num_partitions < 1:
        fail(f"invalid --num-partitions {args.num_partitions}; valid: >= 1")
    if not 0 <= args.partition_id < args.num_partitions:
        fail(f"invalid --partition-id {args.partition_id}; valid: 0..{args.num_partitions - 1}")
    if not 1 <= args.runtime_port <= 65535:
        fail(f"invalid --runtime-port {args.runtime_port}; valid: 1-65535")
    if args.max_wait_time is not None and args.max_wait_time <= 0:
        fail(f"invalid --max-wait-time {args.max_wait_time}; valid: > 0 seconds")
    if args.insecure and (args.ca or args.key):
        fail("--insecure contradicts --ca/--key (TLS and node authentication); drop one")
    if not args.insecure and not (args.ca and args.key):
        fail(
            "--ca and --key are required (TLS, node auth); plain text needs an explicit --insecure"
        )
    he_secret = None
    if args.he_secret_context:
        he_secret = require_owner_only(args.he_secret_context, "--he-secret-context")
        if not (he_secret.parent / "params.json").is_file():
            fail(
                f"--he-secret-context {args.he_secret_context}: params.json must sit beside it "
                "(copy both files from provision_he.py's --nodes-dir)"
            )
    config = node_config(
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        data_dir=_directory(args.data_dir, "--data-dir"),
        state_dir=_directory(args.state_dir, "--state-dir", private=True),
        he_secret=he_secret,
    )
    cmd = [
        flower_exe("flower-supernode"),
        "--superlink",
        args.superlink,
        "--port",
        str(args.runtime_port),
        "--node-config",
        config,
    ]
    key = ca = None
    if args.insecure:
        warn_insecure(f"this SuperNode talks to {args.superlink}")
        cmd.append("--insecure")
    else:
        key = require_owner_only(args.key, "--key")
        if not key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            fail(f"--key {args.key} is not an OpenSSH private key (give the file without .pub)")
        ca = require_file(args.ca, "--ca")
        cmd += ["--root-certificates", str(ca), "--auth-supernode-private-key", str(key)]
    if args.max_wait_time is not None:
        cmd += ["--max-wait-time", str(args.max_wait_time)]
    if port_in_use(args.runtime_port):
        fail(
            f"--runtime-port {args.runtime_port} is in use (another SuperNode on this machine?); "
            "give each SuperNode on one machine its own --runtime-port, e.g. 9095, 9096, ..."
        )
    problem = transport_problem(host, port, ca=ca)
    if problem is not None:
        fail(problem)
    supervise(cmd, NodeTarget(host, port, ca, key, args.runtime_port))


if __name__ == "__main__":
    main()
