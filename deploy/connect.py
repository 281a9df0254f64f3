#!/usr/bin/env python
"""Tell the Flower CLI where the SuperLink is: a ``[superlink.<name>]`` connection.

Example: python deploy/connect.py --name fedloom --address 10.0.0.5:9093 --ca certs/ca.crt

Writes the connection into ``$FLWR_HOME/config.toml`` (default ``~/.flwr``), where
``flwr run``, ``flwr supernode register`` and ``flwr ls`` find it by name, and makes
it the default connection. ``--insecure`` instead of ``--ca`` connects without TLS.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, fail, flwr_home, parse_host_port, require_file, warn_insecure  # noqa: E402

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def write_connection(name: str, address: str, ca: Path | None) -> Path:
    """Add or replace connection ``name`` in the Flower config and make it the default."""
    from flwr.cli.flower_config import set_default_superlink_connection, write_superlink_connection
    from flwr.cli.typing import SuperLinkConnection

    connection = SuperLinkConnection(
        name=name,
        address=address,
        root_certificates=str(ca) if ca is not None else None,
        insecure=True if ca is None else None,
    )
    write_superlink_connection(connection)
    set_default_superlink_connection(name)
    return flwr_home() / "config.toml"


def main(argv: list[str] | None = None) -> None:
    p = Parser(
        description="Write a SuperLink connection for the Flower CLI (flwr run, flwr supernode)."
    )
    p.add_argument("--name", default="fedloom", help="connection name [default: fedloom]")
    p.add_argument("--address", required=True, help="SuperLink address HOST:PORT")
    p.add_argument(
        "--ca", help="CA certificate (ca.crt from make_certs.py) to verify the SuperLink"
    )
    p.add_argument(
        "--insecure", action="store_true", help="connect without TLS (test networks only)"
    )
    args = p.parse_args(argv)
    if not NAME.match(args.name):
        fail(f"invalid --name {args.name!r}; valid: letters, digits, '_', '-'")
    parse_host_port(args.address, "--address")
    if args.insecure and args.ca:
        fail("--insecure and --ca contradict each other; give one")
    if not args.insecure and not args.ca:
        fail(
            "--ca is required (the CA certificate that signed the SuperLink's); "
            "plain text needs an explicit --insecure"
        )
    ca = None if args.insecure else require_file(args.ca, "--ca")
    if args.insecure:
        warn_insecure(f"the Flower CLI talks to {args.address}")
    path = write_connection(args.name, args.address, ca)
    print(f"wrote connection {args.name!r} -> {args.address} into {path}")


if __name__ == "__main__":
    main()
