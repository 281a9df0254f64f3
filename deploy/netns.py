#!/usr/bin/env python
"""Several "hosts" on one Linux machine: network namespaces joined by veth pairs and a bridge.

Needs root and iproute2. Rehearses a multi-machine deployment where traffic really
crosses network interfaces:

    sudo python deploy/netns.py up --prefix fl --nodes 2   # fl-link .1, fl-n0 .2, fl-n1 .3
    sudo ip netns exec fl-link python deploy/start_superlink.py --certs certs --host 0.0.0.0
    sudo ip netns exec fl-n0 python deploy/start_supernode.py --superlink 10.77.0.1:9093 ...
    sudo python deploy/netns.py counters --prefix fl --nodes 2    # bytes through each eth0
    sudo python deploy/netns.py down --prefix fl --nodes 2

Namespace ``<prefix>-link`` holds bridge ``br0`` with ``<subnet>.1/24``; namespace
``<prefix>-n<i>`` holds ``eth0`` with ``<subnet>.<i+2>/24``, the end of a veth pair
whose other end (``vn<i>``) is a port of the bridge. Only these namespaces are
touched; the machine's own interfaces and routes stay as they are.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, fail  # noqa: E402

PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$")


def link_ns(prefix: str) -> str:
    return f"{prefix}-link"


def node_ns(prefix: str, i: int) -> str:
    return f"{prefix}-n{i}"


def link_address(subnet: str) -> str:
    return f"{subnet}.1"


def node_address(subnet: str, i: int) -> str:
    return f"{subnet}.{i + 2}"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")


def existing_namespaces() -> set[str]:
    """Names of the network namespaces that exist now."""
    done = subprocess.run(
        ["ip", "-j", "netns", "list"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        return set()
    return {entry["name"] for entry in json.loads(done.stdout)}


def up(prefix: str, nodes: int, subnet: str) -> None:
    """Create the link namespace, its bridge and ``nodes`` node namespaces; undone on failure."""
    names = [link_ns(prefix), *(node_ns(prefix, i) for i in range(nodes))]
    taken = sorted(existing_namespaces() & set(names))
    if taken:
        raise RuntimeError(
            f"namespace(s) {', '.join(taken)} already exist; run: netns.py down --prefix {prefix}"
        )
    try:
        link = link_ns(prefix)
        _ip("netns", "add", link)
        _ip("-n", link, "link", "set", "lo", "up")
        _ip("-n", link, "link", "add", "br0", "type", "bridge")
        _ip("-n", link, "addr", "add", f"{link_address(subnet)}/24", "dev", "br0")
        _ip("-n", link, "link", "set", "br0", "up")
        for i in range(nodes):
            node = node_ns(prefix, i)
            _ip("netns", "add", node)
            _ip("-n", node, "link", "set", "lo", "up")
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                node,
                "type",
                "veth",
                "peer",
                "name",
                f"vn{i}",
                "netns",
                link,
            )
            _ip("-n", link, "link", "set", f"vn{i}", "master", "br0")
            _ip("-n", link, "link", "set", f"vn{i}", "up")
            _ip("-n", node, "addr", "add", f"{node_address(subnet, i)}/24", "dev", "eth0")
            _ip("-n", node, "link", "set", "eth0", "up")
    except (RuntimeError, subprocess.TimeoutExpired):
        down(prefix, nodes)
        raise


def down(prefix: str, nodes: int) -> list[str]:
    """Delete the namespaces (their veths and bridge go with them); return what was deleted."""
    deleted = []
    present = existing_namespaces()
    for name in [*(node_ns(prefix, i) for i in range(nodes)), link_ns(prefix)]:
        if name in present:
            _ip("netns", "del", name)
            deleted.append(name)
    return deleted


def counters(prefix: str, node: int) -> dict[str, int]:
    """``rx_bytes`` and ``tx_bytes`` of ``eth0`` in node namespace ``node`` (/sys/class/net)."""
    result = {}
    for counter in ("rx_bytes", "tx_bytes"):
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                node_ns(prefix, node),
                "cat",
                f"/sys/class/net/eth0/statistics/{counter}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"reading {counter} in {node_ns(prefix, node)}: {done.stderr.strip()}"
            )
        result[counter] = int(done.stdout)
    return result


def available() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip``), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    return None


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Network namespaces as separate hosts for a SuperLink and SuperNodes.")
    p.add_argument("action", choices=("up", "down", "counters"))
    p.add_argument("--prefix", default="fl", help="namespace name prefix [default: fl]")
    p.add_argument("--nodes", type=int, default=2, help="node namespaces [default: 2]")
    p.add_argument(
        "--subnet",
        default="10.77.0",
        help="first three octets of the private /24 [default: 10.77.0]",
    )
    args = p.parse_args(argv)
    if not PREFIX.match(args.prefix):
        fail(f"invalid --prefix {args.prefix!r}; valid: up to 31 letters, digits, '_', '-'")
    if not 1 <= args.nodes <= 200:
        fail(f"invalid --nodes {args.nodes}; valid: 1-200")
    try:
        network = ipaddress.ip_network(f"{args.subnet}.0/24")
    except ValueError:
        fail(f"invalid --subnet {args.subnet!r}; valid: three octets such as 10.77.0")
    if not network.is_private:
        fail(f"--subnet {args.subnet} is not a private range; use e.g. 10.77.0 or 192.168.77")
    reason = available()
    if reason:
        fail(reason)
    try:
        if args.action == "up":
            up(args.prefix, args.nodes, args.subnet)
            print(f"{link_ns(args.prefix)}: br0 {link_address(args.subnet)}/24")
            for i in range(args.nodes):
                print(f"{node_ns(args.prefix, i)}: eth0 {node_address(args.subnet, i)}/24")
        elif args.action == "down":
            print("deleted: " + (", ".join(down(args.prefix, args.nodes)) or "nothing"))
        else:
            for i in range(args.nodes):
                print(f"{node_ns(args.prefix, i)} eth0: {counters(args.prefix, i)}")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
