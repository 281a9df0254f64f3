"""The fedloom ServerApp (``fedloom.server.app:app``)."""

from __future__ import annotations

import json
import pickle
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

from fedloom.strategies.calibration import BatchNormCalibration
from fedloom.strategies.compressed import DecodingStrategy
from fedloom.privacy.dp import make_dp_ready
from fedloom.strategies.encrypted import EncryptedFedAvg, record_ciphertexts
from fedloom.strategies.instrumented import InstrumentedStrategy, TooFewReplies, chain_of
from fedloom.strategies.private import PrivacyBudgetExhausted
from fedloom.strategies.validation import ValidatingStrategy
from fedloom.strategies.registry import StrategyParams, build_strategy, check_strategy_config
from fedloom.tasks.batchnorm import batch_norm_layers
from fedloom.tasks.head import freeze_classifier
from fedloom.tasks.partition import label_counts
from fedloom.tasks.registry import get_task, load_task_data, partitions

from .best import BestRound
from .checkpoint import load_checkpoint, restore_rng_states
from fedloom.config import INITIAL_LOSS_KEY, RUN_ID_KEY, DPMode, RunConfig, parse_run_config
from .monitor import RoundMonitor, connected_nodes
from .plots import plot_metrics
from .privacy import (
    client_level,
    privacy_ledger,
    restore_releases,
    sample_level,
    trim_epsilons,
    write_epsilons,
)
from .progress import RunProgress
from .results import ResultsFolder
from .sampling import use_private_sampling_rng

PACKAGES = ("flwr", "torch", "numpy", "ray", "opacus", "tenseal", "scikit-learn")

app = ServerApp()


def strategy_params(cfg: RunConfig) -> StrategyParams:
    return StrategyParams(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_nodes,
        min_available_nodes=cfg.min_available_nodes,
        client_lr=cfg.lr,
        proximal_mu=cfg.proximal_mu,
        server_lr=cfg.server_lr,
        server_momentum=cfg.server_momentum,
        server_adaptive_lr=cfg.server_adaptive_lr,
        num_malicious=cfg.num_malicious,
        trimmed_beta=cfg.trimmed_beta,
        qfedavg_q=cfg.qfedavg_q,
    )


def compressed(inner: Strategy, cfg: RunConfig) -> Strategy:
    """``inner`` wrapped to decode compressed uploads, or as is when nothing is compressed."""
    if cfg.compression.is_none and cfg.compression_down.is_none:
        return inner
    return DecodingStrategy(inner, up=cfg.compression, down=cfg.compression_down, seed=cfg.seed)


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


def strategy_chain(
    cfg: RunConfig, max_examples: int, num_parameters: int, batch_norm: bool = False
) -> Strategy:
    """The strategy with fedloom's wrappers: decode uploads -> validate -> aggregate, then
    (models with BatchNorm) measure the aggregate's BatchNorm statistics on the clients."""
    ledger = privacy_ledger(cfg)  # DP: client-level clips after validation, sample-level
    if cfg.he:  # the server adds ciphertexts; config checks allow only fedavg / fedprox
        params = strategy_params(cfg)
        up = cfg.compression  # none or randk (config checks)
        proximal = check_strategy_config(cfg).proximal_term
        encrypted = EncryptedFedAvg(
            he_dir=cfg.he_dir, num_parameters=num_parameters, max_weight=max_examples,
            proximal_mu=cfg.proximal_mu if proximal else 0.0,
            block_fraction=float(up.transform.param) if up.transform is not None else 1.0,
            seed=cfg.seed, **params.common(),
        )
        return sample_level(encrypted, cfg, ledger)
    inner = client_level(build_strategy(cfg.strategy, strategy_params(cfg)), cfg, ledger)
    validated = ValidatingStrategy(inner, max_examples)
    chain = compressed(validated, cfg)
    if batch_norm and cfg.batchnorm_calibration and cfg.dp is DPMode.NONE:  # dp=client: the sums would be an un-noised release
        chain = BatchNormCalibration(chain, timeout=cfg.round_timeout)
    return sample_level(chain, cfg, ledger)  # drops spent clients first


def run_server(grid: Grid, cfg: RunConfig) -> list[dict[str, Any]]:
    """Run ``cfg.num_server_rounds`` rounds on ``grid``; return the metrics rows.

    With ``resume`` set, continue from the checkpoint in ``run-dir`` instead of
    starting over: model, strategy state, RNG states and metrics rows come back.
    """
    use_private_sampling_rng(cfg.seed)  # which clients train each round
    random.seed(cfg.seed)  # user strategies may draw from the global `random`
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task, cfg.task_options())
    data = load_task_data(cfg.task, cfg.data_dir, cfg.dataset, cfg.task_options())
    model = task.build_model(data)
    if cfg.dp is DPMode.SAMPLE:
        model = make_dp_ready(model)
    if cfg.freeze_classifier:  # FedBABU: this random head stays the global head
        freeze_classifier(model, reinit=True)
    results = ResultsFolder(Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg))
    checkpoint = load_checkpoint(results.path) if cfg.resume else None
    if checkpoint and checkpoint["strategy"] is not None:
        chain = pickle.loads(checkpoint["strategy"])
    else:
        chain = strategy_chain(
            cfg, max_examples=len(data.train), num_parameters=sum(v.numel() for v in model.state_dict().values()),
            batch_norm=bool(batch_norm_layers(model)),
        )
    strategy = InstrumentedStrategy(
        chain, min_replies=cfg.min_train_nodes, finish_metrics=task.metrics_from_statistics
    )
    previous = json.loads((results.path / "config.json").read_text()) if checkpoint else {}
    record: dict[str, Any] = {
        "run_id": previous.get("run_id", "") if checkpoint else secrets.token_hex(8),
        "run_config": cfg.to_run_config(),
        "seed": cfg.seed,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_classes": data.num_classes,
        "num_train_examples": len(data.train),
        "num_test_examples": len(data.test),
        "strategy_params": asdict(strategy_params(cfg)),
        "packages": package_versions(),
    }
    initial = ArrayRecord(model.state_dict())
    if checkpoint:
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
        record["resumed_at_rounds"] = [*previous.get("resumed_at_rounds", []), checkpoint["round"]]
        record["num_clients"] = previous.get("num_clients")
    results.write_json("config.json", record)

    def first_round_done() -> None:
        record["num_clients"] = connected_nodes(grid)
        results.write_json("config.json", record)
        reported = strategy.partitions  # deployment: what the nodes' node config says
        counts = {n for _, n in reported.values()}
        num_partitions = counts.pop() if len(counts) == 1 else record["num_clients"]
        partitions = partitions_record(cfg, num_partitions)
        partitions["nodes"] = [{"node_id": node, "partition_id": pid} for node, (pid, _) in sorted(reported.items())]
        results.write_json("partitions.json", partitions)

    best = BestRound(cfg.best_metric, results) if cfg.best_metric != "none" else None
    if best is not None and checkpoint:
        best.restore(checkpoint["round"])
        if checkpoint["rows"]:  # a kill between the checkpoint and best.* missed this offer
            best.offer(checkpoint["rows"][-1], initial)
    title = f"{cfg.task} · {cfg.strategy}"
    remaining = cfg.num_server_rounds - strategy.round_offset
    with RunProgress(cfg.num_server_rounds, title) as progress:
        progress.advance_to(strategy.round_offset)
        monitor = RoundMonitor(
            task=task, data=data, model=model, strategy=strategy, results=results,
            progress=progress, total_rounds=cfg.num_server_rounds, on_first_round=first_round_done,
            central=not cfg.he, initial_arrays=initial, best=best,
        )
        if remaining > 0:
            try:
                strategy.start(
                    grid=grid,
                    initial_arrays=initial,
                    num_rounds=remaining,
                    timeout=cfg.round_timeout,
                    train_config=ConfigRecord({
                        RUN_ID_KEY: record["run_id"],
                        INITIAL_LOSS_KEY: check_strategy_config(cfg).needs_initial_loss,
                    }),
                    evaluate_fn=monitor.evaluate_fn,
                )
            except PrivacyBudgetExhausted as exc:  # a clean end: the last model stands
                progress.console.print(f"run ended early, privacy budget exhausted: {exc}", soft_wrap=True)
                if monitor.privacy is not None:
                    write_epsilons(monitor.privacy, results.path)  # the refusals
            except TooFewReplies as exc:
                monitor.report_failures(max(monitor.last_round, strategy.round_offset) + 1)  # the one that ended it
                progress.console.print(f"run ended early, too few clients remain: {exc}", soft_wrap=True)
                if monitor.privacy is not None:
                    write_epsilons(monitor.privacy, results.path)  # the refusals
    final = monitor.last_arrays
    if cfg.he:  # only the clients' secret key opens it: python -m client.decrypt_model RUN_DIR
        encrypted = chain_of(chain)[-1]  # EncryptedFedAvg
        total = getattr(encrypted, "total_weight", 0)
        results.save_torch("model_encrypted.pt", {
            "ciphertexts": record_ciphertexts(final) if total else None,
            "total_weight": total, "he_dir": cfg.he_dir,
            "key_id": encrypted.params.key_id,  # type: ignore[attr-defined]
            "block_weights": list(getattr(encrypted, "block_weights", [])) or None,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        })
    else:
        results.save_torch("model.pt", final.to_torch_state_dict())
    plot_metrics(results.rows, results.path, title)
    progress.summary(results.rows, str(results.path))
    if best is not None and best.round is not None:
        progress.console.print(f"best round {best.round} by {best.metric} ({best.value:.4f}): best.pt")
    return results.rows


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    check_strategy_config(cfg)
    run_server(grid, cfg)
