#!/usr/bin/env python
"""A whole deployment on this machine, in one command: try this before real machines.

Example: python deploy/local_federation.py --nodes 3

Makes a CA, the SuperLink's certificate and one key per SuperNode (in ``--dir``,
kept for the next start), starts a SuperLink with TLS and node authentication on
a free loopback port, registers the nodes' keys, and starts ``--nodes``
SuperNodes (partition i of N, free runtime ports), all with the same deploy/
scripts as on real machines. Then either waits (submit runs from another
terminal with the command it prints; Ctrl-C or SIGTERM stops every process it
started) or, with ``--run-config``, submits one run, waits for it and stops.

Exit status: 0 when stopped by Ctrl-C/SIGTERM or when the ``--run-config`` run
completed; 1 when the run failed, a process of the federation died, or a process
outlived the stop; 2 for bad input.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import APP_DIR, Parser, fail  # noqa: E402
from _federation import wait_for_nodes, wait_for_tls  # noqa: E402
from _processes import Processes, free_port  # noqa: E402
from _run_config import check_run_config, parse_items  # noqa: E402

HOST = "127.0.0.1"
CONNECTION = "local-federation"  # not "local": Flower names its simulation connection so
MAX_NODES = 16


class Stop(Exception):
    """Ctrl-C or SIGTERM: stop the federation."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _script(name: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve().parent / name)]


def _run(name: str, *args: str, env: dict[str, str]) -> None:
    """Run one deploy/ script to the end; its ``error:`` line ends this script too."""
    done = subprocess.run([*_script(name), *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        fail(f"{name}: {lines[-1].removeprefix('error: ')}")


def prepare(root: Path, nodes: int, env: dict[str, str]) -> None:
    """Certificates and node keys in ``root`` (made once, reused by the next start)."""
    if not (root / "certs" / "server.pem").is_file():
        _run("make_certs.py", "--out", str(root / "certs"), "--host", HOST, "--force", env=env)
    missing = [f"node-{i}" for i in range(nodes) if not (root / "keys" / f"node-{i}").is_file()]
    if missing:
        _run("make_node_keys.py", "--out", str(root / "keys"), "--force",
             *[a for name in missing for a in ("--name", name)], env=env)


def start(procs: Processes, root: Path, nodes: int, port: int, data_dir: Path) -> dict[str, str]:
    """SuperLink, CLI connection, registered keys, SuperNodes online; the CLI's environment."""
    (root / "server").mkdir(exist_ok=True)
    superlink = procs.start(
        "superlink",
        [*_script("start_superlink.py"), "--certs", str(root / "certs"), "--host", HOST,
         "--port", str(port), "--workdir", str(root / "server")],
        env={"FLWR_HOME": str(root / "homes" / "superlink")},
    )
    try:
        wait_for_tls(HOST, port, root / "certs" / "ca.crt", superlink, timeout=120)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"the SuperLink did not start ({exc}):\n{procs.tail('superlink')}") from None
    cli_env = procs.env({"FLWR_HOME": str(root / "flwr")})
    _run("connect.py", "--name", CONNECTION, "--address", f"{HOST}:{port}",
         "--ca", str(root / "certs" / "ca.crt"), env=cli_env)
    _run("register_nodes.py", "--connection", CONNECTION,
         *[str(root / "keys" / f"node-{i}.pub") for i in range(nodes)], env=cli_env)
    started = []
    for i in range(nodes):
        name = f"node-{i}"
        started.append(procs.start(
            name,
            [*_script("start_supernode.py"), "--superlink", f"{HOST}:{port}",
             "--ca", str(root / "certs" / "ca.crt"), "--key", str(root / "keys" / name),
             "--partition-id", str(i), "--num-partitions", str(nodes),
             "--data-dir", str(data_dir), "--state-dir", str(root / name / "state"),
             "--runtime-port", str(free_port())],
            env={"FLWR_HOME": str(root / "homes" / name)},
        ))
    try:
        wait_for_nodes(CONNECTION, cli_env, nodes, timeout=180, procs=started)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}:\n{procs.tail('node-0')}") from None
    return cli_env


def with_nodes(run_config: list[str], nodes: int) -> list[str]:
    """``run_config`` plus ``min-available-nodes=<nodes>`` (every node trains from round 1)
    and, for one node, ``min-train-nodes=1``, unless it sets them."""
    given = parse_items(run_config)
    extra = [f"min-available-nodes={nodes}"] if "min-available-nodes" not in given else []
    if nodes == 1 and "min-train-nodes" not in given:
        extra.append("min-train-nodes=1")
    return [*run_config, *extra]


def watch(procs: Processes) -> None:
    """Wait for Ctrl-C/SIGTERM (:class:`Stop`); a process that dies ends the wait."""
    while True:
        for name, proc in procs.started.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{procs.tail(name)}")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Start a SuperLink and SuperNodes on this machine (TLS, node auth).")
    p.add_argument("--nodes", type=int, default=2, help=f"number of SuperNodes, 1-{MAX_NODES} [default: 2]")
    p.add_argument("--dir", default="local-federation",
                   help="folder for certificates, keys, logs, node state and results [default: local-federation]")
    p.add_argument("--port", type=int, default=0, help="SuperLink port [default: a free one]")
    p.add_argument("--data-dir", help="data folder of every node [default: <dir>/data; digits needs none]")
    p.add_argument("--run-config", action="append",
                   help="submit one run with these run-config overrides, wait for it, stop (repeatable)")
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= MAX_NODES:
        fail(f"invalid --nodes {args.nodes}; valid: 1-{MAX_NODES}")
    if args.port and not 1024 <= args.port <= 65535:
        fail(f"invalid --port {args.port}; valid: 1024-65535, or 0 for a free one")
    root = Path(args.dir).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--dir {args.dir}: cannot create it ({exc.strerror})")
    data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else root / "data"
    run_config = with_nodes(args.run_config, args.nodes) if args.run_config else []
    if run_config:  # before minutes of start-up, not after
        check_run_config(run_config, APP_DIR)
    procs = Processes(root / "logs")
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    status = 0
    try:
        prepare(root, args.nodes, procs.env())
        port = args.port or free_port(HOST)
        cli_env = start(procs, root, args.nodes, port, data_dir)
        print(f"local federation up: SuperLink {HOST}:{port} with TLS and node authentication, "
              f"{args.nodes} SuperNodes online; logs in {root / 'logs'}, results below "
              f"{root / 'server'}", flush=True)
        if run_config:
            overrides = [a for c in run_config for a in ("--run-config", c)]
            # cli_env carries the marker: a stop also ends the run's log stream (flwr log).
            run = subprocess.run([*_script("submit_run.py"), "--connection", CONNECTION, *overrides],
                                 env=cli_env, check=False)
            status = 0 if run.returncode == 0 else 1
        else:
            print("submit runs from another terminal:\n  FLWR_HOME=" + shlex.quote(str(root / "flwr"))
                  + f" python deploy/submit_run.py --connection {CONNECTION} --run-config "
                  + shlex.quote(" ".join(with_nodes(["num-server-rounds=3"], args.nodes))) + "\n"
                  "Ctrl-C stops the federation.", flush=True)
            watch(procs)
    except Stop as stop:
        print(f"{stop}: stopping the federation", file=sys.stderr, flush=True)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        left = procs.remaining()
        if left:
            print(f"error: processes still running after the stop: {sorted(left)}", file=sys.stderr)
            status = 1
        else:
            print(f"stopped: no process of the federation is left ({len(procs.started)} started)",
                  file=sys.stderr, flush=True)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
