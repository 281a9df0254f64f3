#!/usr/bin/env python
"""Start the SuperLink: TLS and SuperNode authentication on by default.

Example: python deploy/start_superlink.py --certs certs --host 0.0.0.0 --port 9093

In Flower 1.41 one HTTPS port serves the Fleet API (SuperNodes), the Control API
(``flwr run``, ``flwr supernode register``) and the Runtime API (the ServerApp
process). With node authentication only SuperNodes whose public key was
registered (deploy/register_nodes.py) may connect. ``--insecure`` turns off TLS
and therefore node authentication too (Flower requires TLS for it).

The ServerApp runs in a subprocess with this process's working directory, so a
relative ``run-dir`` lands below ``--workdir``. Runtime installation of the app's
dependencies is off: the machine must have fedloom installed (pip install -e .).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, exec_flower, fail, flower_exe, require_file, warn_insecure  # noqa: E402
from _probe import port_in_use  # noqa: E402


def superlink_command(
    *,
    certs: Path | None,
    host: str,
    port: int,
    database: str,
    node_auth: bool,
) -> list[str]:
    """The ``flower-superlink`` command line (``certs`` None: plain text)."""
    cmd = [
        flower_exe("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        database,
        "--disable-runtime-dependency-installation",
    ]
    if certs is None:
        return [*cmd, "--insecure"]
    cmd += [
        "--ssl-ca-certfile",
        str(require_file(certs / "ca.crt", "CA certificate")),
        "--ssl-certfile",
        str(require_file(certs / "server.pem", "server certificate")),
        "--ssl-keyfile",
        str(require_file(certs / "server.key", "server key")),
    ]
    return [*cmd, "--enable-supernode-auth"] if node_auth else cmd


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Start a Flower SuperLink for fedloom (TLS + node authentication).")
    p.add_argument("--certs", help="folder with ca.crt, server.pem, server.key (make_certs.py)")
    p.add_argument(
        "--host", default="0.0.0.0", help="address to listen on [default: 0.0.0.0, all interfaces]"
    )
    p.add_argument(
        "--port",
        type=int,
        default=9093,
        help="HTTPS port for SuperNodes and the CLI [default: 9093]",
    )
    p.add_argument(
        "--database",
        default=":flwr-in-memory:",
        help="SQLite file keeping registered nodes and runs across restarts [default: in memory]",
    )
    p.add_argument("--workdir", default=".", help="working directory of the ServerApp [default: .]")
    p.add_argument(
        "--no-node-auth", action="store_true", help="accept any SuperNode (TLS stays on)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no node authentication (test networks only)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        fail(f"invalid --port {args.port}; valid: 1-65535")
    if args.insecure and args.certs:
        fail("--insecure and --certs contradict each other; give one")
    if not args.insecure and not args.certs:
        fail(
            "--certs is required (make_certs.py writes it); plain text needs an explicit --insecure"
        )
    workdir = Path(args.workdir).expanduser().resolve()
    if not workdir.is_dir():
        fail(f"--workdir {args.workdir} is not a directory")
    certs = None
    if args.certs:
        certs = Path(args.certs).expanduser().resolve()
        if not certs.is_dir():
            fail(f"--certs {args.certs} is not a directory")
    database = args.database
    if database != ":flwr-in-memory:":
        database = str(Path(database).expanduser().resolve())
        if not Path(database).parent.is_dir():
            fail(f"--database {args.database}: folder {Path(database).parent} does not exist")
    if port_in_use(args.port, args.host):
        fail(f"--port {args.port} is in use on {args.host} (another SuperLink?); pick another --port")
    if args.insecure:
        warn_insecure(
            f"the SuperLink listens on {args.host}:{args.port}; node authentication is off too"
        )
    elif args.no_node_auth:
        print("WARNING: --no-node-auth: any SuperNode that trusts the CA may join", file=sys.stderr)
    print(
        f"NOTE: Flower 1.41's Control API on port {args.port} has no user login: anyone who can "
        "reach it can register node keys and submit runs (code every node runs). Allow only your "
        "SuperNodes and operators through the firewall (deploy/README.md).",
        file=sys.stderr,
    )
    cmd = superlink_command(
        certs=certs,
        host=args.host,
        port=args.port,
        database=database,
        node_auth=not args.no_node_auth,
    )
    os.chdir(workdir)
    exec_flower(cmd)


if __name__ == "__main__":
    main()
