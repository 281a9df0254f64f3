#!/usr/bin/env python
"""Provision the keys of encrypted aggregation for a deployment, kept apart by who may hold them.

Example:
    python deploy/provision_he.py --nodes-dir he/nodes --server-dir he/server --task digits

Writes ``--nodes-dir/secret.ctx`` + ``params.json`` (copy both to every SuperNode
and start it with ``--he-secret-context <path>/secret.ctx``) and
``--server-dir/public.ctx`` + ``params.json`` (copy both to the SuperLink machine
and submit the run with ``he=true he-dir="<that folder>"``). The secret key never
enters the server folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, fail  # noqa: E402
from fedloom.privacy.he_profiles import PACKINGS, SCHEMES, packing_error  # noqa: E402  (plain data, no TenSEAL)


def provision_split(
    nodes_dir: Path, server_dir: Path, *, clip: float, max_weight: int, values_per_slot: int = 1,
    scheme: str = "bfv",
) -> None:
    """Generate the keys once; put secret.ctx in ``nodes_dir`` and public.ctx in ``server_dir``."""
    from fedloom.privacy import he

    try:
        he.provision(nodes_dir, server_dir, clip=clip, max_weight=max_weight, values_per_slot=values_per_slot, scheme=scheme)
    except ValueError as exc:
        fail(str(exc))


def train_size(task: str, data_dir: str, dataset: str) -> int:
    """Examples in the task's whole training set: the largest weight one client can have."""
    from fedloom.config import parse_run_config
    from fedloom.tasks.registry import load_task_data

    cfg = parse_run_config({"task": task, "data-dir": data_dir, "dataset": dataset})
    return len(load_task_data(cfg.task, cfg.data_dir, cfg.dataset, cfg.task_options()).train)


def main(argv: list[str] | None = None) -> None:
    p = Parser(
        description="Write HE keys: secret context for the nodes, public context for the server."
    )
    p.add_argument(
        "--nodes-dir", required=True, help="folder for secret.ctx + params.json (SuperNodes only)"
    )
    p.add_argument(
        "--server-dir",
        required=True,
        help="folder for public.ctx + params.json (SuperLink machine)",
    )
    p.add_argument(
        "--clip",
        type=float,
        default=8.0,
        help="|weight| bound of the fixed-point encoding [default: 8.0]",
    )
    p.add_argument(
        "--pack",
        type=int,
        default=1,
        help="fixed-point values per BFV slot: 1 (~15 B/param, ~1e-7 error) or 2 "
        "(~8 B/param, 1e-5 to 1e-3 error) [default: 1]",
    )
    p.add_argument(
        "--scheme",
        default="bfv",
        choices=SCHEMES,
        help="TenSEAL scheme: bfv (~15 B/param) or ckks (~32 B/param, one value per slot); "
        "params.json tells the server and the nodes which [default: bfv]",
    )
    p.add_argument(
        "--max-weight",
        type=int,
        help="largest sum of example counts in one round [default: the task's training-set size]",
    )
    p.add_argument("--task", default="digits", help="task, to size --max-weight [default: digits]")
    p.add_argument("--dataset", default="", help="dataset of the task [default: its first]")
    p.add_argument("--data-dir", default="data", help="data folder of the task [default: data]")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    args = p.parse_args(argv)
    nodes = Path(args.nodes_dir).expanduser().resolve()
    server = Path(args.server_dir).expanduser().resolve()
    if nodes == server:
        fail("--nodes-dir and --server-dir must differ: the server must never receive secret.ctx")
    if args.clip <= 0:
        fail(f"invalid --clip {args.clip}; valid: > 0")
    if args.pack not in PACKINGS:
        fail(f"invalid --pack {args.pack}; valid: {', '.join(map(str, PACKINGS))}")
    packing = packing_error(args.scheme, args.pack)
    if packing:  # before sizing the data set: nothing is loaded or written
        fail(f"invalid --pack {args.pack} with --scheme {args.scheme}; {packing}")
    if args.max_weight is not None and args.max_weight < 1:
        fail(f"invalid --max-weight {args.max_weight}; valid: >= 1")
    existing = [str(f) for f in (nodes / "secret.ctx", server / "public.ctx") if f.exists()]
    if existing and not args.force:
        fail(f"{', '.join(existing)} already exist(s); use --force to replace the keys")
    max_weight = args.max_weight
    if max_weight is None:
        try:
            max_weight = train_size(args.task, args.data_dir, args.dataset)
        except (ValueError, FileNotFoundError) as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    provision_split(
        nodes, server, clip=args.clip, max_weight=max_weight, values_per_slot=args.pack, scheme=args.scheme
    )
    print(f"wrote {nodes}/secret.ctx + params.json (copy to every SuperNode only)")
    print(f"wrote {server}/public.ctx + params.json (copy to the SuperLink machine)")
    print("run config: he=true fraction-evaluate=1.0 he-dir=<absolute path of the server copy>")


if __name__ == "__main__":
    main()
