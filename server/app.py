"""The fedloom ServerApp (``fedloom.server.app:app``)."""

from __future__ import annotations

import json
import random
import re
import secrets
import time
from dataclasses import asdict
from importlib import metadata
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedloom.config import DPMode, RunConfig, parse_run_config
from fedloom.config.load import task_default_choices
from fedloom.flower_compat import check_flower_version
from fedloom.privacy.dp import make_dp_ready
from fedloom.strategies.chain import instrumented, strategy_chain, strategy_params
from fedloom.strategies.delegating import chain_of
from fedloom.protocol import requests
from fedloom.protocol.keys import INITIAL_LOSS, RUN_ID
from fedloom.protocol.records import record_ciphertexts
from fedloom.strategies.encrypted import EncryptedFedAvg
from fedloom.strategies.instrumented import InstrumentedStrategy, TooFewReplies
from fedloom.protocol.keys import REPORT_NODE_KEY
from fedloom.strategies.nodes import ray_cluster_nodes
from fedloom.strategies.private import PrivacyBudgetExhausted
from fedloom.strategies.registry import check_strategy_config
from fedloom.tasks.base import Task, TaskData
from fedloom.strategies.state import load_chain_state
from fedloom.tasks.batchnorm import batch_norm_layers
from fedloom.tasks.head import freeze_classifier
from fedloom.tasks.partition import label_counts
from fedloom.tasks.registry import get_task, load_task_data, partitions

from .best import BestRound
from .checkpoint import load_checkpoint, restore_rng_states
from .monitor import RoundMonitor, connected_nodes
from .outcome import check_completed
from .plots import plot_metrics
from .tracking import TensorBoardLog
from .privacy import restore_releases, trim_epsilons, write_epsilons
from .progress import RunProgress
from .results import ResultsFolder
from .sampling import use_private_sampling_rng

PACKAGES = ("flwr", "torch", "numpy", "ray", "opacus", "tenseal", "scikit-learn")

app = ServerApp()


def default_run_dir(cfg: RunConfig) -> Path:
    strategy = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.strategy.rsplit(":", 1)[-1])
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.task}-{strategy}"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def partitions_record(cfg: RunConfig, num_partitions: int) -> dict[str, Any]:
    """Sizes and label counts of every client's partition."""
    options = cfg.task_options()
    data = load_task_data(cfg.task, cfg.data_dir, cfg.dataset, options)
    parts = partitions(
        cfg.task, cfg.data_dir, cfg.dataset, cfg.partition, num_partitions, cfg.seed, options
    )
    counts = label_counts(np.asarray(data.train.y), list(parts), data.num_classes)
    return {
        "partition": str(cfg.partition),
        "seed": cfg.seed,
        "num_partitions": num_partitions,
        "clients": [
            {"partition_id": i, "size": int(len(p)), "label_counts": c}
            for i, (p, c) in enumerate(zip(parts, counts, strict=True))
        ],
    }


def run_server(grid: Grid, cfg: RunConfig, auto: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run ``cfg.num_server_rounds`` rounds on ``grid``; return the metrics rows.

    With ``resume`` set, continue from the checkpoint in ``run-dir`` instead of
    starting over: model, strategy state, RNG states and metrics rows come back.
    ``auto``: the keys left at ``auto`` with their values and why (``config.json``).
    """
    seed_everything(cfg.seed)
    task = get_task(cfg.task, cfg.task_options())
    data = load_task_data(cfg.task, cfg.data_dir, cfg.dataset, cfg.task_options())
    model = global_model(cfg, task, data)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    checkpoint = load_checkpoint(run_dir) if cfg.resume else None
    chain = strategy_chain(
        cfg, max_examples=len(data.train), num_parameters=sum(v.numel() for v in model.state_dict().values()),
        batch_norm=bool(batch_norm_layers(model)),
    )
    if checkpoint:
        load_chain_state(chain, checkpoint["strategy"])
    results = ResultsFolder(run_dir)  # after the strategy is built: a refused one leaves no empty folder
    strategy = instrumented(chain, cfg, task.metrics_from_statistics)
    previous = json.loads((results.path / "config.json").read_text()) if checkpoint else {}
    record = run_record(cfg, model, data, run_id=previous.get("run_id", "") if checkpoint else secrets.token_hex(8))
    initial = ArrayRecord(model.state_dict())
    if checkpoint:
        initial = resume(checkpoint, cfg, model, chain, strategy, results)
        record["resumed_at_rounds"] = [*previous.get("resumed_at_rounds", []), checkpoint["round"]]
        record["num_clients"] = previous.get("num_clients")
    record["auto"] = auto or previous.get("auto", {})  # a resumed run's config has no auto left
    results.write_json("config.json", record)

    def first_round_done() -> None:
        record["num_clients"] = connected_nodes(grid)
        results.write_json("config.json", record)
        results.write_json("partitions.json", nodes_record(cfg, strategy, record["num_clients"]),
                           per_line=("clients", "nodes"))
        if cfg.ray_address:  # the cluster joined; nodes.jsonl says where each client ran
            record["ray_cluster"] = {"address": cfg.ray_address, "nodes": ray_cluster_nodes()}
            results.write_json("config.json", record)

    best = BestRound(cfg.best_metric, results) if cfg.best_metric != "none" else None
    if best is not None and checkpoint:
        best.load_state_dict(checkpoint["best"] or {})
        if checkpoint["rows"]:  # a kill between the checkpoint and best.* missed this offer
            best.offer(checkpoint["rows"][-1], initial)
    tracking = TensorBoardLog(
        results.path, cfg.to_run_config(), resume_after=checkpoint["round"] if checkpoint else 0
    ) if cfg.tensorboard else None
    title = f"{cfg.task} · {cfg.strategy}"
    with RunProgress(cfg.num_server_rounds, title) as progress:
        progress.advance_to(strategy.round_offset)
        monitor = RoundMonitor(
            task=task, data=data, model=model, strategy=strategy, results=results,
            progress=progress, total_rounds=cfg.num_server_rounds, on_first_round=first_round_done,
            central=not cfg.he, initial_arrays=initial, best=best, tracking=tracking,
        )
        rows_before, remaining = len(results.rows), cfg.num_server_rounds - strategy.round_offset
        ended = train_rounds(grid, cfg, strategy, monitor, initial, run_id=record["run_id"])
    if tracking is not None:
        tracking.close()
    save_final_model(cfg, chain, model, monitor.last_arrays, results)
    plot_metrics(results.rows, results.path, title)
    progress.summary(results.rows, str(results.path))
    if best is not None and best.round is not None:
        progress.console.print(f"best round {best.round} by {best.metric} ({best.value:.4f}): best.pt")
    check_completed(len(results.rows) - rows_before, remaining, ended)
    return results.rows


def seed_everything(seed: int) -> None:
    use_private_sampling_rng(seed)  # which clients train each round
    random.seed(seed)  # user strategies may draw from the global `random`
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_model(cfg: RunConfig, task: Task, data: TaskData) -> torch.nn.Module:
    """The model the run starts from, as the clients build it."""
    model = task.build_model(data)
    if cfg.dp is DPMode.SAMPLE:
        model = make_dp_ready(model)
    if cfg.freeze_classifier:  # FedBABU: this random head stays the global head
        freeze_classifier(model, reinit=True)
    return model


def run_record(cfg: RunConfig, model: torch.nn.Module, data: TaskData, *, run_id: str) -> dict[str, Any]:
    """What ``config.json`` records about the run."""
    return {
        "run_id": run_id,
        "run_config": cfg.to_run_config(),
        "seed": cfg.seed,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_classes": data.num_classes,
        "num_train_examples": len(data.train),
        "num_test_examples": len(data.test),
        "strategy_params": asdict(strategy_params(cfg)),
        "packages": package_versions(),
    }


def resume(
    checkpoint: dict[str, Any], cfg: RunConfig, model: torch.nn.Module, chain: Strategy,
    strategy: InstrumentedStrategy, results: ResultsFolder,
) -> ArrayRecord:
    """Bring back a checkpoint's model, rows, DP releases and RNG states; return the
    arrays the next round starts from."""
    initial = ArrayRecord({k: Array(v) for k, v in checkpoint["arrays"].items()})
    if not cfg.he:  # under HE the arrays are the encrypted aggregate
        model.load_state_dict(initial.to_torch_state_dict())
    results.restore_rows(checkpoint["rows"])
    trim_epsilons(results.path, checkpoint["round"])
    released = restore_releases(chain, results.path)
    if released is not None:
        log(WARNING, "round %d's noised model reached clients before the run stopped; "
            "its re-run is counted as a second release (dp=client)", released)
    restore_rng_states(checkpoint["rng"])
    strategy.round_offset = checkpoint["round"]
    return initial


def nodes_record(cfg: RunConfig, strategy: InstrumentedStrategy, num_clients: int) -> dict[str, Any]:
    """``partitions.json``: every partition's size and labels, and which node holds which."""
    reported = strategy.partitions  # deployment: what the nodes' node config says
    counts = {n for _, n in reported.values()}
    num_partitions = counts.pop() if len(counts) == 1 else num_clients
    record = partitions_record(cfg, num_partitions)
    record["nodes"] = [{"node_id": node, "partition_id": pid} for node, (pid, _) in sorted(reported.items())]
    return record


def train_rounds(
    grid: Grid, cfg: RunConfig, strategy: InstrumentedStrategy, monitor: RoundMonitor,
    initial: ArrayRecord, *, run_id: str,
) -> str:
    """The rounds still to run; a spent privacy budget or too few clients end them cleanly.
    Returns why they ended early ('' when they all ran)."""
    remaining = cfg.num_server_rounds - strategy.round_offset
    if remaining <= 0:
        return ""
    console = monitor.progress.console
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=remaining,
            timeout=cfg.round_timeout,
            train_config=ConfigRecord({
                RUN_ID: run_id,
                INITIAL_LOSS: check_strategy_config(cfg).needs_initial_loss,
                **requests.ask(requests.PARTITION, requests.PRIVACY),
                **({REPORT_NODE_KEY: True} if cfg.ray_address else {}),
            }),
            evaluate_config=ConfigRecord(requests.ask(requests.STATISTICS)),
            evaluate_fn=monitor.evaluate_fn,
        )
        return ""
    except PrivacyBudgetExhausted as exc:  # a clean end: the last model stands
        ended = f"privacy budget exhausted: {exc}"
    except TooFewReplies as exc:
        monitor.report_failures(max(monitor.last_round, strategy.round_offset) + 1)  # the one that ended it
        ended = f"too few clients remain: {exc}"
    console.print(f"run ended early, {ended}", soft_wrap=True)
    if monitor.privacy is not None:
        write_epsilons(monitor.privacy, monitor.results.path)  # the refusals
    return ended


def save_final_model(
    cfg: RunConfig, chain: Strategy, model: torch.nn.Module, final: ArrayRecord, results: ResultsFolder
) -> None:
    """``model.pt``, or under HE ``model_encrypted.pt``, which only the clients' secret key
    opens: ``python -m fedloom.client.decrypt_model RUN_DIR``."""
    if not cfg.he:
        results.save_torch("model.pt", final.to_torch_state_dict())
        return
    encrypted = chain_of(chain)[-1]
    assert isinstance(encrypted, EncryptedFedAvg)
    total = encrypted.total_weight
    results.save_torch("model_encrypted.pt", {
        "ciphertexts": record_ciphertexts(final) if total else None,
        "total_weight": total, "he_dir": cfg.he_dir,
        "key_id": encrypted.params.key_id,
        "block_weights": list(encrypted.block_weights) or None,
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    })


@app.main()
def main(grid: Grid, context: Context) -> None:
    check_flower_version()
    cfg = parse_run_config(context.run_config)
    check_strategy_config(cfg)
    run_server(grid, cfg, auto=task_default_choices(context.run_config, cfg))
