"""Start and stop a real SuperLink and SuperNodes for the deployment tests.

Every process a :class:`Processes` starts carries a unique environment marker,
which Flower's own subprocesses (SuperExec, ServerApp, ClientApp) inherit; at the
end every process holding the marker, and every descendant of a started process,
gets SIGTERM and then SIGKILL, so nothing outlives a test even when Flower
detaches its children into new sessions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MARKER = "FEDLOOM_DEPLOY_TEST"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def script(name: str) -> list[str]:
    """Command prefix that runs ``deploy/<name>`` with this interpreter."""
    return [sys.executable, str(DEPLOY / name)]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _marked(marker: bytes) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


class Processes:
    """Processes started for one test, each with its log file; :meth:`stop_all` ends them all."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.token = f"{MARKER}={uuid.uuid4().hex}"
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This environment plus the marker, one torch thread, and ``extra``."""
        key, value = self.token.split("=", 1)
        env = {**os.environ, key: value, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        return {**env, **(extra or {})}

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        wrap: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in its own session, output to ``<logs>/<name>.log``."""
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed by the child's exit
        proc = subprocess.Popen(
            [*wrap, *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(env),
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def _ours(self) -> set[int]:
        tree = _children()
        pids = _marked(self.token.encode())
        stack = [p.pid for p in self.started.values()]
        while stack:
            pid = stack.pop()
            if pid not in pids:
                pids.add(pid)
            stack.extend(c for c in tree.get(pid, []) if c not in pids)
        return {p for p in pids if Path(f"/proc/{p}").exists()}

    def stop_all(self, grace: float = 8.0) -> None:
        """SIGTERM every process of ours (and its group), SIGKILL what is left after ``grace`` s."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0), (signal.SIGKILL, 5.0)):
            pids = self._ours()
            if not pids:
                break
            for pid in pids:
                for send in (lambda: os.killpg(os.getpgid(pid), sig), lambda: os.kill(pid, sig)):
                    try:
                        send()
                    except (ProcessLookupError, PermissionError):
                        pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._alive(pids):
                for proc in self.started.values():
                    proc.poll()  # reap our direct children
                time.sleep(0.2)
        for proc in self.started.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def _alive(pids: set[int]) -> bool:
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                return True
        return False

    def remaining(self) -> set[int]:
        """Live (non-zombie) processes of ours; empty after :meth:`stop_all`."""
        return {p for p in self._ours() if self._alive({p})}


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
            with socket.create_connection((host, port), timeout=2) as raw:
                with context.wrap_socket(raw, server_hostname=server_hostname or host) as tls:
                    return dict(tls.getpeercert() or {})
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{host}:{port} did not accept TLS within {timeout:g}s")


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
        nodes = list(reply.get("nodes", []))  # type: ignore[arg-type]
        if sum(1 for n in nodes if n.get("status") == "online") >= count:
            return nodes
        time.sleep(1.0)
    raise TimeoutError(f"{count} SuperNodes not online within {timeout:g}s: {nodes}")
