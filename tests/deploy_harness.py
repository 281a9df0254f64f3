"""Start and stop a real SuperLink and SuperNodes for the deployment tests.

The processes are started and stopped by deploy/_processes.py's :class:`Processes`
(the same code that local_federation.py stops its federation with): at the end
every process of a test, and everything Flower started from it, is gone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
sys.path.insert(0, str(DEPLOY))
from _federation import flwr_json, wait_for_nodes, wait_for_tls  # noqa: E402  (deploy/)
from _processes import Processes, free_port  # noqa: E402

__all__ = ["DEPLOY", "REPO", "Processes", "flwr_json", "free_port", "script", "wait_for_log",
           "wait_for_nodes", "wait_for_tls"]


def script(name: str) -> list[str]:
    """Command prefix that runs ``deploy/<name>`` with this interpreter."""
    return [sys.executable, str(DEPLOY / name)]


def wait_for_log(procs: Processes, name: str, text: str, timeout: float) -> None:
    """Wait until ``text`` appears in the log of process ``name``."""
    deadline = time.monotonic() + timeout
    proc = procs.started[name]
    while time.monotonic() < deadline:
        if text in procs.log(name):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{procs.tail(name)}")
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not log {text!r} within {timeout:g}s:\n{procs.tail(name)}")
