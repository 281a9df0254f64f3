#!/usr/bin/env python
"""Launch a local fedloom simulation: Flower's simulation engine, Ray clients.

Example: python run_sim.py --task mnist --data-dir ../shared/data --num-clients 10
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

from fedloom.deploy.ray_cluster import ClusterUnreachable, probe

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
APP_DIR = Path(__file__).resolve().parent

class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from fedloom.config.flags import add_key_flags
    from fedloom.strategies.registry import strategy_names

    # Run-config keys' flags come from the schema (config/keys.py) and default to None,
    # so that an unset flag falls through to --run-config / --resume / the key's default.
    p = Parser(description="Run a federated simulation whose clients are Ray actor processes.")
    add_key_flags(p, listings={"strategy": ", ".join(strategy_names())})
    p.add_argument("--num-clients", type=int, help="number of simulated clients (SuperNodes) [default: 10]")
    p.add_argument(
        "--run-config", default="",
        help='other run-config keys, e.g. "fraction-evaluate=0.5 momentum=0" (README: run-config '
        "reference) [default: none]",
    )
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per client actor (Ray num_cpus) [default: 1]")
    p.add_argument(
        "--client-gpus", default="auto",
        help="GPU share per client actor (Ray num_gpus): a fraction in [0, 1] or whole GPUs; auto packs "
        "as many clients on a GPU as its memory holds at the task's estimate (digits 0.6 GiB, mnist 1.1, "
        "medmnist 1.1 at 28 px to 7.4 at 224, pointcloud 1.5), at most 32, and 0 without CUDA "
        "[default: auto]",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    return p


def parse_overrides(text: str) -> dict[str, str]:
    overrides = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--run-config item {item!r} is not key=value")
        overrides[key.strip()] = value.strip().strip("\"'")
    return overrides


def resume_config(args: argparse.Namespace) -> dict[str, Any]:
    """The saved run config of ``--resume RUN_DIR``; only ``--rounds`` may change it."""
    run_dir = Path(args.resume).expanduser().resolve()
    try:
        record = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"--resume {run_dir}: not a fedloom results folder (no readable config.json)") from None
    if not (run_dir / "checkpoint.pt").is_file():
        raise UsageError(f"--resume {run_dir}: no checkpoint.pt (the run never finished a round)")
    from fedloom.config.flags import given_flags

    changed = given_flags(args, but=("num-server-rounds",))
    if changed or args.run_config:
        raise UsageError(
            f"{', '.join(changed) or '--run-config'} cannot be combined with --resume: "
            "a resumed run keeps its config (only --rounds may change)"
        )
    saved_clients = record.get("num_clients")
    if args.num_clients is not None and saved_clients and args.num_clients != saved_clients:
        raise UsageError(f"--num-clients {args.num_clients} differs from the run's {saved_clients}")
    if not (args.num_clients or saved_clients):  # killed before round 1 recorded it
        raise UsageError(f"--resume {run_dir}: config.json does not record num_clients; pass --num-clients")
    args.num_clients = args.num_clients or saved_clients
    done = checkpoint_round(run_dir)
    if args.rounds is not None and args.rounds < done:
        raise UsageError(f"--rounds {args.rounds} is below the {done} rounds the run has done; valid: >= {done}")
    raw = dict(record["run_config"])
    raw.update(resume=True, **{"run-dir": str(run_dir)})
    if args.rounds is not None:
        raw["num-server-rounds"] = args.rounds
    return raw


def checkpoint_round(run_dir: Path) -> int:
    """The last round ``run_dir``'s checkpoint holds."""
    from fedloom.server.checkpoint import CheckpointError, load_checkpoint

    try:
        return int(load_checkpoint(run_dir)["round"])
    except CheckpointError as exc:
        raise UsageError(f"--resume {run_dir}: {exc}") from None


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything a run needs before any process starts; return the run config."""
    from fedloom.config import parse_run_config
    from fedloom.config.flags import flag_values
    from fedloom.server.privacy import check_privacy
    from fedloom.server.secagg import check_secagg_noise
    from fedloom.strategies.chain import strategy_params
    from fedloom.strategies.registry import build_strategy, check_strategy_config
    from fedloom.tasks.registry import load_task_data, partitions

    resumed = resume_config(args) if args.resume else None
    if args.num_clients is None:
        args.num_clients = 10
    if args.num_clients < 1:
        raise UsageError(f"invalid --num-clients {args.num_clients}; valid: >= 1")
    if args.client_cpus <= 0:
        raise UsageError(f"invalid --client-cpus {args.client_cpus}; valid: > 0")
    if resumed is not None:
        raw: dict[str, Any] = resumed
    else:
        raw = {**parse_overrides(args.run_config), **flag_values(args)}
    if raw.get("data-dir"):
        raw["data-dir"] = str(Path(raw["data-dir"]).expanduser().resolve())
    if raw.get("run-dir"):
        raw["run-dir"] = str(Path(raw["run-dir"]).expanduser().resolve())
    target, colon, attr = str(raw.get("strategy", "")).rpartition(":")
    if colon and target.endswith(".py"):  # a user's file: --resume may start elsewhere
        raw["strategy"] = f"{Path(target).expanduser().resolve()}:{attr}"
    cfg = parse_run_config(raw, num_nodes=args.num_clients)
    caps = check_strategy_config(cfg)
    for key in ("min-train-nodes", "min-available-nodes"):
        value = getattr(cfg, key.replace("-", "_"))
        if value > args.num_clients:
            raise UsageError(f"{key}={value} exceeds --num-clients {args.num_clients}")
    build_strategy(cfg.strategy, strategy_params(cfg))  # a user's class fails here, in one line
    per_round = max(int(args.num_clients * cfg.fraction_train), cfg.min_train_nodes)
    needed = caps.min_replies(cfg.num_malicious)
    if per_round < needed:
        raise UsageError(
            f"strategy {cfg.strategy} with num-malicious={cfg.num_malicious} needs >= {needed} "
            f"clients per round, but only {per_round} are sampled"
        )
    # Loads the data (cached for the server in this process) and checks the split.
    partitions(
        cfg.task, cfg.data_dir, cfg.dataset, cfg.partition, args.num_clients, cfg.seed,
        cfg.task_options(),
    )
    check_privacy(cfg, args.num_clients)
    check_secagg_noise(cfg, args.num_clients)
    data = load_task_data(cfg.task, cfg.data_dir, cfg.dataset, cfg.task_options())  # cached above
    test_size = len(data.test)
    if cfg.fraction_evaluate > 0 and args.num_clients > test_size:
        raise UsageError(
            f"--num-clients {args.num_clients} exceeds the {test_size} test examples that federated "
            f"evaluation shares out (one part per client); use at most {test_size} clients"
            + ("" if cfg.he else " or fraction-evaluate=0")
        )
    from fedloom.config.load import task_default_choices

    # Keys left at auto stay auto: the apps resolve them alike, and config.json says to what.
    resolved = {**cfg.to_run_config(), **dict.fromkeys(task_default_choices(raw, cfg), "auto")}
    if not cfg.run_dir:
        from fedloom.server.app import default_run_dir

        resolved["run-dir"] = str((Path.cwd() / default_run_dir(cfg)).resolve())
    if not cfg.resume and (Path(resolved["run-dir"]) / "config.json").exists():
        raise UsageError(
            f"run-dir {resolved['run-dir']} already holds a run (config.json): --resume continues "
            "it; a new run needs another --run-dir (its files would be overwritten or mixed)"
        )
    if cfg.he and not cfg.resume:
        run_dir = Path(resolved["run-dir"])
        server_dir = Path(resolved["he-dir"] or run_dir / "he").expanduser().resolve()
        nodes_dir = Path(resolved["he-secret-dir"] or default_secret_dir(run_dir)).expanduser().resolve()
        provision_keys(cfg, nodes_dir, server_dir, run_dir, max_weight=len(data.train))
        resolved["he-dir"], resolved["he-secret-dir"] = str(server_dir), str(nodes_dir)
        print(f"run_sim.py: --he: the clients' secret key is in {nodes_dir}, outside the results folder")
    return resolved


def default_secret_dir(run_dir: Path) -> Path:
    """A new folder for the simulated clients' secret key, away from the results folder:
    ``$XDG_DATA_HOME/fedloom/he-keys/<run name>-<random>`` (``~/.local/share`` by default)."""
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "fedloom" / "he-keys" / f"{run_dir.name}-{secrets.token_hex(4)}"


def provision_keys(cfg: Any, nodes_dir: Path, server_dir: Path, run_dir: Path, *, max_weight: int) -> None:
    """The provisioning step of --he: secret.ctx for the clients in ``nodes_dir``, which
    must lie outside the results folder, and public.ctx for the server in ``server_dir``;
    sized for ``max_weight`` examples (the training set)."""
    from fedloom.privacy.he import PUBLIC_FILE, SECRET_FILE, provision

    for inside in (run_dir, server_dir):
        if nodes_dir == inside or nodes_dir.is_relative_to(inside):
            raise UsageError(
                f"he-secret-dir {nodes_dir} lies in {inside}: whoever gets the results or the server's "
                "he-dir could decrypt the run; choose a folder outside both (or leave he-secret-dir unset)"
            )
    explicit = (("he-secret-dir", nodes_dir, SECRET_FILE), ("he-dir", server_dir, PUBLIC_FILE))
    for key, folder, file in explicit:
        if getattr(cfg, key.replace("-", "_")) and (folder / file).exists():  # <run-dir>/he goes with its run
            raise UsageError(
                f"{key} {folder} already holds keys ({file}): new keys would make the run that made them "
                f"undecryptable; use an empty folder, leave {key} unset, or --resume"
            )
    provision(
        nodes_dir, server_dir, clip=cfg.he_clip, max_weight=max_weight, values_per_slot=cfg.he_pack,
        scheme=cfg.he_scheme,
    )


def gpu_share(value: str, num_clients: int, run_config: dict[str, Any]) -> float:
    """Ray's GPU share per client actor: ``--client-gpus`` by hand, or ``auto``, which packs
    as many clients on a GPU as its memory holds at the task's per-client estimate."""
    import torch

    from fedloom.client.resources import check_gpu_share
    from fedloom.client.resources import gpu_share as packed_share

    if value != "auto":
        try:
            return check_gpu_share(float(value))
        except ValueError as exc:  # a word, or a share Ray refuses
            raise UsageError(str(exc) if value.replace(".", "", 1).isdigit() else
                             f"invalid --client-gpus {value!r}; valid: auto, a fraction in [0, 1] "
                             "or a whole number of GPUs per client") from None
    if not torch.cuda.is_available():
        return 0.0
    from fedloom.config import parse_run_config
    from fedloom.tasks.registry import get_task

    cfg = parse_run_config(run_config)
    return packed_share(
        num_clients=num_clients, num_gpus=torch.cuda.device_count(),
        gpu_memory_gib=min(torch.cuda.get_device_properties(i).total_memory
                           for i in range(torch.cuda.device_count())) / 2**30,
        client_memory_gib=get_task(cfg.task, cfg.task_options()).gpu_memory_gib(),
    )


def simulate(
    run_config: dict[str, Any], num_clients: int, client_cpus: float, client_gpus: float, verbose: bool,
    *, apps: tuple[Any, Any] | None = None, app_dir: Path = APP_DIR,
    ray_address: str = "",
) -> None:
    """Start Flower's simulation runtime (Ray backend) with fedloom's ServerApp and ClientApp,
    or ``apps`` (a ServerApp and a ClientApp of any Flower app; the clients' run config is
    ``app_dir``'s pyproject table with ``run_config`` over it); on the Ray cluster at
    ``ray_address`` (``HOST:PORT``) when given."""
    from fedloom.flower_compat import population_scale, run_simulation, seeded_node_ids

    if apps is None:
        from fedloom.client.app import app as client_app
        from fedloom.server.app import app as server_app
    else:
        server_app, client_app = apps

    backend_config = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": {
            "include_dashboard": False,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
            **({"address": ray_address} if ray_address else {}),  # ray.init joins, Flower disconnects
        },
    }
    with seeded_node_ids(int(run_config.get("seed", 0))), population_scale():
        run_simulation(
            run_config=run_config, num_supernodes=num_clients, client_app=client_app,
            server_app=server_app, backend_config=backend_config, app_dir=str(app_dir), verbose=verbose,
        )


def quiet_flower_logs() -> None:
    """Flower's INFO lines and its tracebacks of injected failures off (``--verbose`` keeps them)."""
    from fedloom.client.faults import QuietInjectedFailures

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, QuietInjectedFailures) for f in flwr_logger.filters):
        flwr_logger.addFilter(QuietInjectedFailures())


def main(argv: list[str] | None = None) -> int:
    from fedloom.flower_compat import check_flower_version

    try:
        check_flower_version()
    except RuntimeError as exc:
        print(f"run_sim.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        args = build_parser().parse_args(argv)
        run_config = resolve_config(args)
        client_gpus = gpu_share(args.client_gpus, args.num_clients, run_config)
        ray_address = probe(run_config["ray-address"])[0] if run_config["ray-address"] else ""
    except (UsageError, ValueError, FileNotFoundError, ClusterUnreachable) as exc:
        print(f"run_sim.py: error: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:
        quiet_flower_logs()
    from fedloom.server.outcome import NoRoundCompleted

    try:
        simulate(run_config, args.num_clients, args.client_cpus, client_gpus, args.verbose, ray_address=ray_address)
    except NoRoundCompleted as exc:  # the results folder holds what there is
        print(f"run_sim.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
