#!/usr/bin/env python
"""Launch a local fedloom simulation: Flower's simulation engine, Ray clients.

Example: python run_sim.py --task mnist --data-dir ../shared/data --num-clients 10
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import random
import secrets
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
APP_DIR = Path(__file__).resolve().parent

# Flag -> run-config key. Flags left unset fall back to --run-config, then defaults.
FLAG_KEYS = {
    "task": "task",
    "dataset": "dataset",
    "data_dir": "data-dir",
    "rounds": "num-server-rounds",
    "fraction": "fraction-train",
    "local_epochs": "local-epochs",
    "batch_size": "batch-size",
    "lr": "lr",
    "partition": "partition",
    "strategy": "strategy",
    "seed": "seed",
    "run_dir": "run-dir",
    "fail_rate": "fail-rate",
    "straggler_rate": "straggler-rate",
    "straggler_delay": "straggler-delay",
    "attack": "attack",
    "attack_fraction": "attack-fraction",
    "he": "he",
    "he_scheme": "he-scheme",
    "compression": "compression",
    "compression_down": "compression-down",
    "dp": "dp",
    "dp_noise": "dp-noise",
    "dp_target_epsilon": "dp-target-epsilon",
    "dp_max_grad_norm": "dp-max-grad-norm",
    "dp_delta": "dp-delta",
    "dp_accountant": "dp-accountant",
    "dp_clipping": "dp-clipping",
    "dp_clipping_side": "dp-clipping-side",
    "dp_clipping_norm": "dp-clipping-norm",
}


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from fedloom.compression.spec import codec_usages
    from fedloom.server.config import DEFAULTS
    from fedloom.strategies.registry import strategy_names
    from fedloom.tasks.registry import task_names

    # Defaults are in the help texts: most options default to None here so that an
    # unset flag falls through to --run-config / --resume / DEFAULTS.
    p = Parser(description="Run a federated simulation whose clients are Ray actor processes.")
    d = DEFAULTS
    p.add_argument("--task", help=f"learning task: {', '.join(task_names())} [default: {d['task']}]")
    p.add_argument("--dataset", help="dataset, for tasks that offer several [default: the task's first]")
    p.add_argument("--data-dir", help=f"folder with the data files [default: {d['data-dir']}]")
    p.add_argument("--num-clients", type=int, help="number of simulated clients (SuperNodes) [default: 10]")
    p.add_argument("--rounds", type=int, help=f"federated rounds [default: {d['num-server-rounds']}]")
    p.add_argument("--fraction", type=float, help=f"share of clients sampled per round [default: {d['fraction-train']}]")
    p.add_argument(
        "--local-epochs", type=float,
        help=f"local epochs per round; a fraction such as 0.5 trains on a fresh random half of the "
        f"client's data each round [default: {d['local-epochs']}]",
    )
    p.add_argument("--batch-size", type=int, help="local batch size [default: the task's, digits 16, others 32]")
    p.add_argument("--lr", type=float, help="client learning rate [default: the task's, digits 0.05, others 0.01]")
    p.add_argument("--partition", help=f"iid, dirichlet:ALPHA or shards:K [default: {d['partition']}]")
    p.add_argument(
        "--strategy",
        help=f"{', '.join(strategy_names())}, or package.module:Class / file.py:Class "
        f"[default: {d['strategy']}]",
    )
    p.add_argument("--seed", type=int, help=f"seed for partitions, init and sampling [default: {d['seed']}]")
    p.add_argument("--run-dir", help="results folder [default: runs/<timestamp>-<task>-<strategy>]")
    p.add_argument(
        "--compression",
        help=f"upload codec chain: {codec_usages()}, or TRANSFORM+QUANTIZER such as "
        f"topk:0.01+qsgd:8 [default: {d['compression']}]",
    )
    p.add_argument(
        "--compression-down",
        help="download codec for the global model: none, fp16 or qsgd:BITS "
        f"[default: {d['compression-down']}]",
    )
    p.add_argument(
        "--dp", help="differential privacy: none, sample (Opacus DP-SGD on every client) or "
        f"client (client-level DP-FedAvg with Flower's DP wrappers) [default: {d['dp']}]",
    )
    p.add_argument(
        "--dp-noise", type=float,
        help="noise multiplier (sample: per-step gradient noise; client: noise on the aggregate); "
        "0 = calibrate from --dp-target-epsilon [default: 0]",
    )
    p.add_argument(
        "--dp-target-epsilon", type=float,
        help="privacy budget at --dp-delta (sample: per client, enforced; client: for the run); "
        "without --dp-noise the noise is calibrated to spend it in --rounds rounds [default: none]",
    )
    p.add_argument("--dp-max-grad-norm", type=float, help=f"sample: per-example gradient clipping bound [default: {d['dp-max-grad-norm']}]")
    p.add_argument("--dp-delta", type=float, help=f"delta of the reported (epsilon, delta) [default: {d['dp-delta']}]")
    p.add_argument("--dp-accountant", help=f"sample: Opacus accountant, rdp or prv [default: {d['dp-accountant']}]")
    p.add_argument("--dp-clipping", help=f"client: fixed or adaptive clipping of updates [default: {d['dp-clipping']}]")
    p.add_argument("--dp-clipping-side", help=f"client: clip on the server or the clients [default: {d['dp-clipping-side']}]")
    p.add_argument("--dp-clipping-norm", type=float, help=f"client: update clipping norm (initial norm when adaptive) [default: {d['dp-clipping-norm']}]")
    p.add_argument(
        "--run-config", default="",
        help='other run-config keys, e.g. "fraction-evaluate=0.5 momentum=0" (see pyproject.toml) [default: none]',
    )
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per client actor (Ray num_cpus) [default: 1]")
    p.add_argument(
        "--client-gpus", default="auto",
        help="GPU share per client actor (Ray num_gpus): a fraction in [0, 1] or whole GPUs; auto packs "
        "as many clients on a GPU as its memory holds at the task's estimate (digits 0.6 GiB, mnist 1.1, "
        "medmnist 1.1 at 28 px to 7.4 at 224, pointcloud 1.5), at most 32, and 0 without CUDA "
        "[default: auto]",
    )
    p.add_argument(
        "--he", action="store_const", const=True,
        help="encrypted aggregation: clients send ciphertexts the server can add but not read",
    )
    p.add_argument(
        "--he-scheme",
        help="TenSEAL scheme of --he: bfv (~15 bytes/parameter) or ckks (~32) [default: bfv]",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--fail-rate", type=float, help="fault injection: probability that a client's training raises [default: 0]")
    p.add_argument("--straggler-rate", type=float, help="fault injection: probability that a client sleeps [default: 0]")
    p.add_argument("--straggler-delay", type=float, help="seconds a straggler sleeps [default: 0]")
    p.add_argument("--attack", help="byzantine clients: none, sign-flip, gaussian, scaled [default: none]")
    p.add_argument("--attack-fraction", type=float, help="share of clients that attack [default: 0]")
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
    changed = [f"--{flag.replace('_', '-')}" for flag in FLAG_KEYS if flag != "rounds" and getattr(args, flag) is not None]
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
    from fedloom.server.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir)["round"])


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Validate everything a run needs before any process starts; return the run config."""
    from fedloom.server.config import parse_run_config
    from fedloom.server.privacy import check_privacy
    from fedloom.strategies.registry import build_strategy, min_replies
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
        raw = parse_overrides(args.run_config)
        raw.update({key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None})
    raw.setdefault("min-train-nodes", min(2, args.num_clients))
    raw.setdefault("min-available-nodes", args.num_clients)
    if raw.get("data-dir"):
        raw["data-dir"] = str(Path(raw["data-dir"]).expanduser().resolve())
    if raw.get("run-dir"):
        raw["run-dir"] = str(Path(raw["run-dir"]).expanduser().resolve())
    target, colon, attr = str(raw.get("strategy", "")).rpartition(":")
    if colon and target.endswith(".py"):  # a user's file: --resume may start elsewhere
        raw["strategy"] = f"{Path(target).expanduser().resolve()}:{attr}"
    if str(raw.get("he", "")).lower() in ("1", "true", "yes"):
        raw.setdefault("fraction-evaluate", 1.0)  # the server cannot evaluate under --he
    cfg = parse_run_config(raw)
    for key in ("min-train-nodes", "min-available-nodes"):
        value = getattr(cfg, key.replace("-", "_"))
        if value > args.num_clients:
            raise UsageError(f"{key}={value} exceeds --num-clients {args.num_clients}")
    from fedloom.server.app import strategy_params

    build_strategy(cfg.strategy, strategy_params(cfg))  # a user's class fails here, in one line
    per_round = max(int(args.num_clients * cfg.fraction_train), cfg.min_train_nodes)
    needed = min_replies(cfg.strategy, cfg.num_malicious)
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
    data = load_task_data(cfg.task, cfg.data_dir, cfg.dataset, cfg.task_options())  # cached above
    test_size = len(data.test)
    if cfg.fraction_evaluate > 0 and args.num_clients > test_size:
        raise UsageError(
            f"--num-clients {args.num_clients} exceeds the {test_size} test examples that federated "
            f"evaluation shares out (one part per client); use at most {test_size} clients"
            + ("" if cfg.he else " or fraction-evaluate=0")
        )
    resolved = cfg.to_run_config()
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
    from fedloom.server.config import parse_run_config
    from fedloom.tasks.registry import get_task

    cfg = parse_run_config(run_config)
    return packed_share(
        num_clients=num_clients, num_gpus=torch.cuda.device_count(),
        gpu_memory_gib=min(torch.cuda.get_device_properties(i).total_memory
                           for i in range(torch.cuda.device_count())) / 2**30,
        client_memory_gib=get_task(cfg.task, cfg.task_options()).gpu_memory_gib(),
    )


@contextmanager
def seeded_node_ids(seed: int) -> Iterator[None]:
    """Register the simulated nodes under IDs drawn from ``seed``, not ``os.urandom``.

    The server samples a round's clients among the node IDs with a seeded generator
    (``server/sampling.py``), and node i holds partition i; with random IDs the same
    seed picked other partitions on every run. Only node registration draws from the
    seeded stream.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import in_memory_linkstate

    register, draw = vce_api._register_nodes, in_memory_linkstate.generate_rand_int_from_bytes
    rng = random.Random(f"fedloom-node-ids-{seed}")

    def seeded_draw(num_bytes: int, exclude: set[int] | None = None) -> int:
        while (value := rng.getrandbits(8 * num_bytes)) in (exclude or ()):
            pass
        return value

    def register_seeded(*args: Any, **kwargs: Any) -> Any:
        in_memory_linkstate.generate_rand_int_from_bytes = seeded_draw
        try:
            return register(*args, **kwargs)
        finally:
            in_memory_linkstate.generate_rand_int_from_bytes = draw

    vce_api._register_nodes = register_seeded
    try:
        yield
    finally:
        vce_api._register_nodes = register


def simulate(run_config: dict[str, Any], num_clients: int, client_cpus: float, client_gpus: float, verbose: bool) -> None:
    """Start Flower's simulation runtime (Ray backend) with the ServerApp and ClientApp."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from fedloom.client.app import app as client_app
    from fedloom.server.app import app as server_app

    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.override_config = dict(run_config)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    # What flwr.simulation.run_simulation does for a run it creates itself.
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    backend_config = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": {
            "include_dashboard": False,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    with seeded_node_ids(int(run_config["seed"])):
        _run_simulation(
            num_supernodes=num_clients,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config=backend_config,
            server_app_context=context,
            app_dir=str(APP_DIR),
            is_app=True,  # clients fuse pyproject defaults with run.override_config
            run=run,
            verbose_logging=verbose,
        )


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        run_config = resolve_config(args)
        client_gpus = gpu_share(args.client_gpus, args.num_clients, run_config)
    except (UsageError, ValueError, FileNotFoundError) as exc:
        print(f"run_sim.py: error: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:
        from fedloom.client.faults import QuietInjectedFailures

        flwr_logger = logging.getLogger("flwr")
        flwr_logger.setLevel(logging.WARNING)
        if not any(isinstance(f, QuietInjectedFailures) for f in flwr_logger.filters):
            flwr_logger.addFilter(QuietInjectedFailures())
    from fedloom.server.outcome import NoRoundCompleted

    try:
        simulate(run_config, args.num_clients, args.client_cpus, client_gpus, args.verbose)
    except NoRoundCompleted as exc:  # the results folder holds what there is
        print(f"run_sim.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
