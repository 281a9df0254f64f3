"""The fedloom ClientApp (``fedloom.client.app:app``).

The partition comes from the node config (``partition-id``, ``num-partitions``),
so the same app runs in simulation and on SuperNodes on other machines. A node may
also set ``data-dir`` in its node config to override the run config's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedloom.client.attacks import attackers, poison
from fedloom.client.compress import encode_update, received_state
from fedloom.client.faults import inject_faults
from fedloom.client.he_client import decrypt_global, encrypt_local, secret_path
from fedloom.client.resources import (
    deterministic_cuda,
    peak_memory_metrics,
    reset_peak_memory,
    training_device,
)
from fedloom.client.privacy import ACCOUNT_KEY, dp_clipping_mod, sample_dp_round
from fedloom.client.state import load_state, save_state
from fedloom.compression.flat import flatten, unflatten
from fedloom.compression.sparse import randk_indices
from fedloom.compression.spec import Chain
from fedloom.privacy import he
from fedloom.privacy.dp import make_dp_ready
from fedloom.config import INITIAL_LOSS_KEY, RUN_ID_KEY, DPMode, RunConfig, parse_run_config
from fedloom.strategies.calibration import QUERY_BATCHNORM, QUERY_KEY, SUMS_KEY
from fedloom.strategies.compressed import SEED_KEY
from fedloom.strategies.encrypted import BLOCK_WEIGHTS_KEY, KEY_ID_KEY, TOTAL_WEIGHT_KEY
from fedloom.strategies.federated_metrics import statistics_metrics
from fedloom.strategies.instrumented import NUM_PARTITIONS_KEY, PARTITION_ID_KEY
from fedloom.tasks.base import Task
from fedloom.tasks.batchnorm import batchnorm_sums
from fedloom.tasks.head import freeze_classifier
from fedloom.tasks.registry import client_split, client_test_split, get_task, load_task_data
from fedloom.tasks.training import evaluate, predict, scheduled_lr, train_local

app = ClientApp(mods=[dp_clipping_mod])  # the mod acts only for client-side DP clipping


@lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return parse_run_config(dict(items))


def run_config(context: Context) -> RunConfig:
    """The run config, parsed once per process."""
    torch.set_num_threads(1)  # one core per Ray actor / SuperNode process
    deterministic_cuda()  # seeded runs repeat on a GPU too
    return _parse(tuple(sorted(context.run_config.items())))


def node_partition(context: Context) -> tuple[int, int]:
    """This node's ``partition-id`` and ``num-partitions``: whole numbers, 0 <= id < n."""
    try:
        pid, nparts = context.node_config["partition-id"], context.node_config["num-partitions"]
    except KeyError as exc:
        raise ValueError(
            f"node config lacks {exc}; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=N"'
        ) from None
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (pid, nparts))
    if not whole or not 0 <= pid < nparts:
        raise ValueError(
            f"invalid node config partition-id={pid!r} num-partitions={nparts!r}; "
            "valid: whole numbers with 0 <= partition-id < num-partitions"
        )
    return pid, nparts


def data_dir(cfg: RunConfig, context: Context) -> str:
    return str(context.node_config.get("data-dir", cfg.data_dir))


def client_state_dir(cfg: RunConfig, context: Context, partition_id: int, run_id: str = "") -> Path:
    """Where this client's persistent state lives: node config ``state-dir``, else the run dir,
    then the run's ID (from the server; a resumed run keeps it) and the partition.

    Keyed by run so that a node's runs never share a DP account or residuals: a new run
    must not inherit an old one's, nor prune its files by round number.
    """
    root = context.node_config.get("state-dir") or str(Path(cfg.run_dir or "runs") / "client-state")
    folder = Path(str(root)).expanduser()
    return (folder / run_id if run_id else folder) / str(partition_id)


def device() -> str:
    return training_device()


def _architecture(cfg: RunConfig, directory: str) -> torch.nn.Module:
    """The run's model as the server built it, before its weights are loaded."""
    task = get_task(cfg.task, cfg.task_options())
    model = task.build_model(load_task_data(cfg.task, directory, cfg.dataset, cfg.task_options()))
    if cfg.dp is DPMode.SAMPLE:
        model = make_dp_ready(model)
    if cfg.freeze_classifier:
        freeze_classifier(model)
    return model


def _model(
    cfg: RunConfig, directory: str, arrays: ArrayRecord, he_total: int | list[int] = 0,
    he_key: Path | None = None,
) -> torch.nn.Module:
    model = _architecture(cfg, directory)
    if he_total:  # the encrypted weighted sum of last round's clients
        assert he_key is not None
        model.load_state_dict(decrypt_global(arrays, he_total, model.state_dict(), he_key))
        return model
    model.load_state_dict(received_state(arrays, model.state_dict(), cfg.compression_down))
    return model


def he_inputs(cfg: RunConfig, msg: Message, context: Context) -> tuple[int | list[int], Path | None]:
    """Total weight of an encrypted global model (0: plain; one per ciphertext with partial
    uploads) and this node's secret key path."""
    if not cfg.he:
        return 0, None
    config = msg.content["config"]
    block_weights = config.get(BLOCK_WEIGHTS_KEY)
    total = [int(w) for w in block_weights] if block_weights else int(config.get(TOTAL_WEIGHT_KEY, 0))
    key = secret_path(cfg.he_secret_dir, cfg.he_dir, context.node_config)
    he.check_key_id(he.load_params(key.parent), str(config.get(KEY_ID_KEY, "")), str(key))
    return total, key


def he_upload_blocks(up: Chain, config: ConfigRecord) -> list[int] | None:
    """The ciphertexts this round uploads: all (``None``), or randk's shared random subset."""
    block_weights = config.get(BLOCK_WEIGHTS_KEY)
    if up.transform is None or not block_weights:
        return None
    return randk_indices(len(block_weights), float(up.transform.param), int(config[SEED_KEY])).tolist()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = run_config(context)
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    task = get_task(cfg.task, cfg.task_options())
    split = client_split(
        cfg.task, directory, cfg.dataset, cfg.partition, nparts, cfg.seed, pid, cfg.task_options()
    )
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    state_dir = client_state_dir(cfg, context, pid, str(config.get(RUN_ID_KEY, "")))
    load_state(context.state, state_dir, server_round, never_rewound=(ACCOUNT_KEY,))
    inject_faults(
        fail_rate=cfg.fail_rate, straggler_rate=cfg.straggler_rate,
        straggler_delay=cfg.straggler_delay, seed=cfg.seed, server_round=server_round,
        partition_id=pid,
    )
    he_total, he_key = he_inputs(cfg, msg, context)
    model = _model(cfg, directory, msg.content["arrays"], he_total, he_key)
    up = cfg.compression
    attacking = cfg.attack != "none" and pid in attackers(nparts, cfg.attack_fraction, cfg.seed)
    start: dict[str, np.ndarray] | None = None  # global weights as received
    if not up.is_none or attacking:
        start = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    metrics: dict[str, float] = {"num-examples": len(split), PARTITION_ID_KEY: pid, NUM_PARTITIONS_KEY: nparts}
    if config.get(INITIAL_LOSS_KEY, False):  # q-FFL weights clients by the global model's loss
        metrics["train_loss_initial"] = evaluate(model, task, split, device=device())["loss"]
    seed = cfg.seed * 100_003 + server_round * 1_009 + pid
    lr = scheduled_lr(cfg.lr, cfg.lr_schedule, server_round, cfg.num_server_rounds)
    dp_settings = cfg.sample_dp()
    reset_peak_memory(device())
    if dp_settings is not None:  # DP-SGD; a client out of budget replies without an update
        outcome, report = sample_dp_round(
            model, task, split, settings=dp_settings, state=context.state, partition_id=pid,
            epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=lr,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=seed, device=device(),
        )
        metrics.update(report)
        if not outcome.trained:
            return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
        metrics["train_loss"] = outcome.loss
    else:
        metrics["train_loss"] = train_local(
            model,
            task,
            split,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            lr=lr,
            momentum=cfg.momentum,
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            seed=seed,
            device=device(),
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            logit_adjustment=cfg.logit_adjustment,
        )
    metrics.update(peak_memory_metrics(device()))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if attacking and start is not None:
        rng = np.random.default_rng([cfg.seed, server_round, pid, 0xBAD])
        update = poison(flatten(state) - flatten(start), cfg.attack, scale=cfg.attack_scale, rng=rng)
        state = {k: torch.from_numpy(v) for k, v in unflatten(flatten(start) + update, start).items()}
    if he_key is not None:
        arrays = encrypt_local(state, len(split), he_key, he_upload_blocks(up, config))
    elif up.is_none:
        arrays = ArrayRecord(state)
    else:
        assert start is not None
        arrays = encode_update(
            up, start, {k: v.numpy() for k, v in state.items()}, state=context.state,
            seed=int(config.get(SEED_KEY, 0)),
            rng=np.random.default_rng([cfg.seed, server_round, pid]),
        )
    save_state(context.state, state_dir, server_round)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def evaluation_metrics(task: Task, logits: torch.Tensor, labels: torch.Tensor, loss: float) -> dict[str, Any]:
    """What a client reports from its test share: the task's metrics, the loss, the
    example count Flower weights them by, and the statistics for the metrics that do
    not average (:mod:`strategies.federated_metrics`)."""
    metrics = {**task.metrics(logits, labels), "loss": loss, "num-examples": len(labels)}
    return {**metrics, **statistics_metrics(task.metric_statistics(logits, labels))}


@app.query()
def query(msg: Message, context: Context) -> Message:
    """BatchNorm sums of the round's aggregate (sent in full) over this client's training
    data, for :class:`strategies.calibration.BatchNormCalibration`."""
    cfg = run_config(context)
    asked = msg.content["config"].get(QUERY_KEY)
    if asked != QUERY_BATCHNORM:
        raise ValueError(f"unknown query {asked!r}; valid: {QUERY_BATCHNORM}")
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    split = client_split(
        cfg.task, directory, cfg.dataset, cfg.partition, nparts, cfg.seed, pid, cfg.task_options()
    )
    model = _architecture(cfg, directory)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    sums = batchnorm_sums(model, split, batch_size=cfg.batch_size, device=device())
    record = ArrayRecord({k: Array(v) for k, v in sums.items()})
    return Message(content=RecordDict({SUMS_KEY: record}), reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    cfg = run_config(context)
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    split = client_test_split(cfg.task, directory, cfg.dataset, nparts, pid, cfg.task_options())
    model = _model(cfg, directory, msg.content["arrays"], *he_inputs(cfg, msg, context))
    task = get_task(cfg.task, cfg.task_options())
    logits, loss = predict(model, task, split, device=device())
    metrics = evaluation_metrics(task, logits, torch.from_numpy(np.asarray(split.y)), loss)
    content = RecordDict({"metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
