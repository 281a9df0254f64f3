"""Helpers shared by the deploy/ scripts: one-line errors, argument checks, Flower executables."""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

#: The fedloom checkout (the Flower app that ``flwr run`` submits).
APP_DIR = Path(__file__).resolve().parents[1]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with status 2."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def warn_insecure(what: str) -> None:
    """The warning every ``--insecure`` use prints."""
    print(
        f"WARNING: --insecure: {what} without TLS; model updates and node identities travel "
        "in plain text and anyone on the network can read or inject them. "
        "Use this only on a trusted test network.",
        file=sys.stderr,
    )


def require_file(path: Path | str, what: str) -> Path:
    """``path`` resolved to an absolute path; fails when it is not a readable file."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        fail(f"{what} {path} does not exist or is not a file")
    if not os.access(resolved, os.R_OK):
        fail(f"{what} {path} is not readable")
    return resolved


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); fails with a one-line message."""
    if "://" in value:
        fail(f"{what} {value!r}: give HOST:PORT without a scheme (TLS is on by default)")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        fail(f"{what} {value!r} is not HOST:PORT (port 1-65535)")
    return host.strip("[]"), int(port)


def is_ip(value: str) -> bool:
    """Whether ``value`` is an IPv4/IPv6 address (else a DNS name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def flower_exe(name: str) -> str:
    """Path of a Flower executable (``flower-superlink``, ``flwr``): this venv first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        fail(f"{name} not found next to {sys.executable} or on PATH; install fedloom first")
    return found


def flower_on_path(exe: str) -> None:
    """Put the folder of the Flower executable ``exe`` first on PATH.

    Flower starts its helpers by name (``flower-superexec`` for the ServerApp and
    ClientApps): a venv used without activating it (``.venv/bin/python
    deploy/start_superlink.py``) then works too.
    """
    os.environ["PATH"] = os.pathsep.join([str(Path(exe).parent), os.environ.get("PATH", "")])


def exec_flower(cmd: list[str]) -> NoReturn:
    """Replace this process with the Flower command ``cmd`` (``cmd[0]``: from :func:`flower_exe`)."""
    flower_on_path(cmd[0])
    print("exec " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


def flwr_home() -> Path:
    """The Flower CLI's config folder (``FLWR_HOME``, default ``~/.flwr``)."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser().resolve()
