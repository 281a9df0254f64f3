#!/usr/bin/env python
"""Submit a fedloom run to a SuperLink and follow it to the end.

Example:
    python deploy/submit_run.py --connection fedloom \\
        --run-config 'num-server-rounds=5 run-dir="/srv/fedloom/runs/exp1"'

The run config is checked here first (unknown keys, bad values and relative paths
fail before anything is sent), then ``flwr run <app> <connection>`` submits the
app; the script streams the run's log and exits 0 only when the run finished
successfully. Paths in the run config (``run-dir``, ``data-dir``, ``he-dir``) are
paths on the SuperLink machine and must be absolute.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import APP_DIR, Parser, fail, flower_exe, flwr_home  # noqa: E402

SERVER_PATHS = ("run-dir", "data-dir", "he-dir")


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


def check_run_config(items: list[str]) -> dict[str, Any]:
    """Parse ``k=v`` items as Flower does and validate them with fedloom's run-config rules."""
    import click
    from flwr.common.config import parse_config_args

    from fedloom.config import parse_run_config

    try:
        parts = [part for text in items for part in shlex.split(text)]
    except ValueError as exc:  # e.g. an unbalanced quote
        fail(f"--run-config {' '.join(items)!r}: {exc}")
    for item in parts:
        if "=" not in item or item.startswith("="):
            fail(f"--run-config item {item!r} is not key=value")
    try:
        overrides = parse_config_args(items)
    except click.ClickException:
        fail(
            f"--run-config {' '.join(items)!r}: values must be TOML: numbers, true/false, "
            'or strings in double quotes (task="mnist")'
        )
    try:
        cfg = parse_run_config(overrides)
    except ValueError as exc:
        fail(f"--run-config: {exc}")
    for key in SERVER_PATHS:
        value = str(overrides.get(key, "") or "")
        if value and not Path(value).is_absolute():
            fail(f"--run-config {key}={value!r} must be an absolute path on the SuperLink machine")
    if cfg.he_secret_dir:
        fail(
            "--run-config he-secret-dir is for simulations: each SuperNode reads its own secret.ctx "
            "(start_supernode.py --he-secret-context), and the run config goes to the server"
        )
    if cfg.he and not cfg.he_dir:
        fail("--run-config he=true needs he-dir (the SuperLink machine's folder with public.ctx)")
    return overrides


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
    return value


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
    require_connection(args.connection)
    check_run_config(args.run_config)
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
