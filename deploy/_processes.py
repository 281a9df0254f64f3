"""Start processes and stop every one of them, with all they started: the deploy scripts
(local_federation.py) and the deployment tests share this.

Every process a :class:`Processes` starts carries a unique environment marker,
which Flower's own subprocesses (SuperExec, ServerApp, ClientApp) inherit; at the
end every process holding the marker, and every descendant of a started process,
gets SIGTERM and then SIGKILL, so nothing outlives the owner even when Flower
detaches its children into new sessions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Prefix of the marker variable; each :class:`Processes` adds its own ID to the name, so one
#: started inside another's processes (local_federation.py in a test) keeps both marks.
MARKER = "FEDLOOM_DEPLOY_PROCS_"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
        self.token = f"{MARKER}{uuid.uuid4().hex}=1"
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
                try:
                    group = os.getpgid(pid)
                    if group != os.getpgrp():  # a marked child of ours in our own group: not the group
                        os.killpg(group, sig)
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._alive(pids):
                for proc in self.started.values():
                    proc.poll()  # reap our direct children
                time.sleep(0.2)
        for proc in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

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
