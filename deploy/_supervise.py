"""Run ``flower-supernode`` as a child and turn the failures Flower leaves unexplained
into one ``error:`` line (exit status 2).

Flower's SuperNode reports an unregistered key as ``Exit Code: 305 ... Failed to
activate SuperNode`` and retries forever against a SuperLink that speaks the other
transport (TLS or plain text). The child's output passes through; when it logs a
failed connection attempt the SuperLink is probed again (:mod:`_probe`), and a
mismatch stops the child with a sentence that says what to do. Ctrl-C and SIGTERM
go to the child, whose exit status (0 after a graceful stop) becomes ours.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import sys
import time
from collections.abc import Callable
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from _common import fail, flower_on_path
from _probe import transport_problem

RETRY_LINE = "Connection attempt failed"
EXIT_LINE = "Exit Code: "
PROBE_EVERY_S = 10.0


@dataclass
class NodeTarget:
    """What the operator gave: the SuperLink, the CA (None: plain text), the key, the port."""

    host: str
    port: int
    ca: Path | None
    key: Path | None
    runtime_port: int


def explain_exit(output: str, target: NodeTarget) -> str | None:
    """One sentence for a SuperNode exit this script can explain, from Flower's output
    (and, when Flower gave up connecting, one more probe of the SuperLink)."""
    where = f"--superlink {target.host}:{target.port}"
    if "Failed to activate SuperNode" in output:
        key = target.key
        public = f"{key}.pub" if key is not None else "<name>.pub"
        return (
            f"the SuperLink at {where} refused this node: the public key of --key {key} is not "
            f"registered there (or another SuperNode with this key is online); register it: "
            f"python deploy/register_nodes.py {public} --connection <name>"
        )
    if "Address already in use" in output or "address already in use" in output:
        return (
            f"--runtime-port {target.runtime_port} is in use (another SuperNode on this machine?); "
            "give each SuperNode on one machine its own --runtime-port"
        )
    if f"{EXIT_LINE}305" in output:  # Flower gave up: a transport mismatch, or nothing answers
        problem = transport_problem(target.host, target.port, ca=target.ca)
        if problem is not None:
            return problem
        return (
            f"no connection to the SuperLink at {where} (Flower exit code 305): is it running "
            "and is its port open to this machine? (--max-wait-time bounds the wait)"
        )
    return None


def _forward(proc: subprocess.Popen[str]) -> Callable[[int, object], None]:
    def handler(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    return handler


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The child's output lines, read by a thread; None after the last."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _end_group(proc: subprocess.Popen[str]) -> None:
    """Stop what the SuperNode left behind in its process group (its runtime API server
    outlives it when it exits on an error, and would hold the output pipe open)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(1.0)


def supervise(cmd: list[str], target: NodeTarget) -> NoReturn:
    """Run ``cmd`` (``flower-supernode ...``), pass its output on, explain its failures."""
    flower_on_path(cmd[0])
    print("run " + " ".join(cmd), file=sys.stderr, flush=True)
    # Its own session and process group: a terminal's Ctrl-C reaches it once, through us.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _forward(proc))
    lines = _lines(proc)
    last_probe = time.monotonic()
    tail: deque[str] = deque(maxlen=100)
    held: list[str] = []  # Flower's exit report: shown only when this script cannot explain it
    exited_at: float | None = None
    while True:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at > 2.0:
            break  # its leftovers hold the pipe open; what they print now is not ours to wait for
        if not line:
            continue
        tail.append(line)
        if held or EXIT_LINE in line:
            held.append(line)
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
        if RETRY_LINE in line and time.monotonic() - last_probe >= PROBE_EVERY_S:
            last_probe = time.monotonic()
            problem = transport_problem(target.host, target.port, ca=target.ca)  # changed since start?
            if problem is not None:
                proc.terminate()
                proc.wait()
                _end_group(proc)
                fail(problem)
    returncode = proc.wait()
    _end_group(proc)
    reason = explain_exit("".join(tail), target)
    if returncode != 0 and reason is not None:
        fail(reason)
    sys.stderr.write("".join(held))
    raise SystemExit(returncode)
