#!/usr/bin/env python
"""Submit a fedloom run to a SuperLink and follow it to the end.

Example:
    python deploy/submit_run.py --connection fedloom \\
        --run-config 'num-server-rounds=5 run-dir="/srv/fedloom/runs/exp1"'

The run config is checked here first, with the ServerApp's own rules (unknown keys,
values of the wrong type, an unknown strategy, bad values and combinations,
relative paths fail in one line before anything is sent: deploy/_run_config.py), then ``flwr run <app> <connection>`` submits the
app; the script streams the run's log and exits 0 only when the run finished
successfully. Paths in the run config (``run-dir``, ``data-dir``, ``he-dir``) are
paths on the SuperLink machine and must be absolute.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import APP_DIR, Parser, fail, flower_exe, flwr_home, parse_host_port  # noqa: E402
from _probe import reachable, transport_problem  # noqa: E402
from _run_config import check_run_config  # noqa: E402


def require_connection(name: str) -> dict[str, Any]:
    """The ``[superlink.<name>]`` table of the Flower config; fails when it is missing."""
    path = flwr_home() / "config.toml"
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        fail(f"{path} does not exist; create the connection with deploy/connect.py")
    except tomllib.TOMLDecodeError as exc:
        fail(f"{path} is not valid TOML: {exc}")
    table = config.get("superlink", {}).get(name)
    if not isinstance(table, dict) or "address" not in table:
        fail(f"no SuperLink connection {name!r} in {path}; create it with deploy/connect.py")
    return table


def check_reachable(name: str, table: dict[str, Any]) -> None:
    """Fail at once when connection ``name``'s SuperLink does not answer, or answers in the
    other transport (TLS or plain text), instead of ``flwr run`` retrying for 30 s."""
    host, port = parse_host_port(str(table["address"]), f"connection {name!r}: address")
    where = f"the SuperLink of connection {name!r} ({host}:{port})"
    why = reachable(host, port)
    if why is not None:
        fail(f"cannot reach {where}: {why} (is it running, and is its port open to this machine?)")
    if table.get("insecure") or table.get("root-certificates"):
        ca = None if table.get("insecure") else Path(str(table["root-certificates"]))
        problem = transport_problem(host, port, ca=ca, where=where, who=f"connection {name!r}")
        if problem is not None:
            fail(f"{problem} (deploy/connect.py rewrites the connection)")


def _flwr(args: list[str], timeout: float) -> str:
    """Run a ``flwr`` command, return its stdout; fail with its last error line."""
    try:
        done = subprocess.run(
            [flower_exe("flwr"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fail(f"flwr {args[0]}: no answer within {timeout:g}s")
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        fail(f"flwr {args[0]} failed: {lines[-1]}")
    return done.stdout


def _json(text: str) -> dict[str, Any]:
    start = text.find("{")
    try:
        value = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        fail(f"unexpected output from flwr: {text.strip()[:200]!r}")
    return cast(dict[str, Any], value)  # fail() exits; mypy sees _common's script import as Any


def run_status(run_id: int, connection: str, timeout: float) -> str:
    """The run's status as ``flwr ls`` reports it, e.g. ``finished:completed``."""
    reply = _json(_flwr(["ls", connection, "--run-id", str(run_id), "--format", "json"], timeout))
    runs = reply.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Submit a fedloom run to a SuperLink (flwr run) and wait for it.")
    p.add_argument(
        "--connection", default="fedloom", help="SuperLink connection name [default: fedloom]"
    )
    p.add_argument(
        "--app", default=str(APP_DIR), help=f"the Flower app folder [default: {APP_DIR}]"
    )
    p.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="run-config overrides, e.g. 'num-server-rounds=5 run-dir=\"/abs/path\"' (repeatable)",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="return after submitting; print the run id"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=24 * 3600.0,
        help="seconds to wait for the run [default: 1 day]",
    )
    args = p.parse_args(argv)
    app = Path(args.app).expanduser().resolve()
    if not (app / "pyproject.toml").is_file():
        fail(f"--app {args.app} has no pyproject.toml; give the fedloom checkout")
    connection = require_connection(args.connection)
    check_run_config(args.run_config, app)
    check_reachable(args.connection, connection)
    cmd = ["run", str(app), args.connection, "--format", "json"]
    for item in args.run_config:
        cmd += ["--run-config", item]
    reply = _json(_flwr(cmd, timeout=300.0))
    if not reply.get("success"):
        error = str(reply.get("error-message", reply))
        if "unavailable" in error.lower():  # gRPC UNAVAILABLE: nothing answered
            fail(f"cannot reach the SuperLink of connection {args.connection!r}: {error} "
                 "(is it running, and is its port open to this machine?)")
        fail(f"the SuperLink refused the run: {error}")
    run_id = int(reply["run-id"])
    print(f"submitted run {run_id} to {args.connection!r}", flush=True)
    if args.no_wait:
        return
    try:
        subprocess.run(
            [flower_exe("flwr"), "log", str(run_id), args.connection, "--stream"],
            timeout=args.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fail(
            f"run {run_id} not finished after {args.timeout:g}s (still running; flwr stop {run_id})"
        )
    status = run_status(run_id, args.connection, timeout=60.0)
    print(f"run {run_id}: {status}", flush=True)
    if status != "finished:completed":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
