#!/usr/bin/env python
"""Generate SuperNode authentication key pairs (ECDSA P-384, OpenSSH format).

Example: python deploy/make_node_keys.py --out keys --name node-0 --name node-1

For each name writes ``<name>`` (private key, mode 600: copy it to that node
only) and ``<name>.pub`` (public key: register it on the SuperLink with
``deploy/register_nodes.py``). Same format as
``ssh-keygen -t ecdsa -b 384 -N '' -f keys/node-0``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, fail  # noqa: E402

from fedloom.privacy.files import write_private  # noqa: E402

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def make_key_pair(private_path: Path) -> Path:
    """Write an EC P-384 key pair: ``private_path`` (0600) and its ``.pub``; return the latter."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_private(private_path, private)
    public_path = private_path.with_name(private_path.name + ".pub")
    public_path.write_bytes(public + f" {private_path.name}\n".encode())
    return public_path


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Generate SuperNode key pairs for node authentication.")
    p.add_argument("--out", required=True, help="folder for the key files")
    p.add_argument(
        "--name", action="append", required=True, help="node name, e.g. node-0 (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    args = p.parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    if len(set(args.name)) != len(args.name):
        fail(
            "--name given twice: "
            + ", ".join(sorted(n for n in set(args.name) if args.name.count(n) > 1))
        )
    for name in args.name:
        if not NAME.match(name):
            fail(f"invalid --name {name!r}; valid: letters, digits, '_', '.', '-' (not first)")
        if (out / name).exists() and not args.force:
            fail(f"{out / name} already exists; use --force to overwrite it")
    for name in args.name:
        public = make_key_pair(out / name)
        print(f"wrote {out / name} (private, for node {name} only) and {public}")


if __name__ == "__main__":
    main()
