"""The fedloom ClientApp (``fedloom.client.app:app``).

The partition comes from the node config (``partition-id``, ``num-partitions``),
so the same app runs in simulation and on SuperNodes on other machines. A node may
also set ``data-dir`` in its node config to override the run config's.
"""

from __future__ import annotations

from typing import Any, cast
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues, ConfigScalar
from flwr.clientapp import ClientApp

from fedloom.client import secagg
from fedloom.client.attacks import attackers, poison
from fedloom.client.compress import encode_update, received_state
from fedloom.client.faults import inject_faults
from fedloom.client.he_client import decrypt_global, encrypt_local, secret_path
from fedloom.client.resources import (
    node_report,
    peak_memory_metrics,
    reset_peak_memory,
)
from fedloom.client.privacy import (
    ACCOUNT_KEY,
    dp_clipping_mod,
    private_reply_metrics,
    sample_dp_round,
    upload_weight,
)
from fedloom.client.settings import round_settings, run_config
from fedloom.client.state import load_state, save_state
from fedloom.compression.flat import flatten, unflatten
from fedloom.compression.sparse import randk_indices
from fedloom.compression.spec import Chain
from fedloom.privacy import he
from fedloom.privacy.dp import make_dp_ready
from fedloom.config import DPMode, RunConfig
from fedloom.protocol import requests
from fedloom.protocol.keys import (
    ARRAYS, BATCHNORM_SUMS, COMPRESSION_SEED, CONFIG, HE_BLOCK_WEIGHTS, HE_KEY_ID, HE_TOTAL_WEIGHT,
    LOSS, METRICS, NUM_EXAMPLES, NUM_PARTITIONS, PARTITION_ID, PROXIMAL_MU, QUERY, QUERY_BATCHNORM,
    INITIAL_LOSS, RUN_ID, SERVER_ROUND, TRAIN_LOSS, TRAIN_LOSS_INITIAL,
)
from fedloom.protocol.records import statistics_metrics
from fedloom.protocol.keys import NODE_RECORD, REPORT_NODE_KEY
from fedloom.tasks.base import Task
from fedloom.tasks.batchnorm import batchnorm_sums
from fedloom.tasks.head import freeze_classifier
from fedloom.tasks.registry import client_split, client_test_split, get_task, load_task_data
from fedloom.tasks.training import compute_device, evaluate, predict, train_local

app = ClientApp(mods=[dp_clipping_mod])  # the mod acts only for client-side DP clipping
app.query("secagg_share_keys")(secagg.share_keys)  # SecAgg+'s exchanges around the train message
app.query("secagg_unmask")(secagg.unmask)


@app.query("secagg_setup")
def secagg_setup(msg: Message, context: Context) -> Message:
    """SecAgg+'s first exchange, held to this client's own run config (client/secagg.py)."""
    cfg = run_config(context)
    return secagg.setup(msg, context, min_threshold=cfg.secagg_threshold, noise=cfg.dp == "client")




def node_partition(context: Context) -> tuple[int, int]:
    """This node's ``partition-id`` and ``num-partitions``: whole numbers, 0 <= id < n."""
    try:
        pid, nparts = context.node_config["partition-id"], context.node_config["num-partitions"]
    except KeyError as exc:
        raise ValueError(
            f"node config lacks {exc}; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=N"'
        ) from None
    if (
        not isinstance(pid, int) or isinstance(pid, bool)
        or not isinstance(nparts, int) or isinstance(nparts, bool)
        or not 0 <= pid < nparts
    ):
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


def _scalar(value: ConfigRecordValues) -> ConfigScalar:
    """A config value for ``int()`` or ``float()``; a list raises ``TypeError``, as they would."""
    if isinstance(value, list):
        raise TypeError(f"expected a number, got the list {value!r}")
    return value


def he_inputs(cfg: RunConfig, msg: Message, context: Context) -> tuple[int | list[int], Path | None]:
    """Total weight of an encrypted global model (0: plain; one per ciphertext with partial
    uploads) and this node's secret key path."""
    if not cfg.he:
        return 0, None
    config = cast(ConfigRecord, msg.content[CONFIG])
    block_weights = cast("list[int] | None", config.get(HE_BLOCK_WEIGHTS))  # as strategies/encrypted.py sends it
    total = (
        [int(w) for w in block_weights] if block_weights else int(_scalar(config.get(HE_TOTAL_WEIGHT, 0)))
    )
    key = secret_path(cfg.he_secret_dir, cfg.he_dir, context.node_config)
    he.check_key_id(he.load_params(key.parent), str(config.get(HE_KEY_ID, "")), str(key))
    return total, key


def he_upload_blocks(up: Chain, config: ConfigRecord) -> list[int] | None:
    """The ciphertexts this round uploads: all (``None``), or randk's shared random subset."""
    block_weights = cast("list[int] | None", config.get(HE_BLOCK_WEIGHTS))  # as strategies/encrypted.py sends it
    if up.transform is None or not block_weights:
        return None
    fraction = cast(float, up.transform.param)  # randk's: parse_spec gives every transform its parameter
    return randk_indices(len(block_weights), float(fraction), int(_scalar(config[COMPRESSION_SEED]))).tolist()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = run_config(context)
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    task = get_task(cfg.task, cfg.task_options())
    split = client_split(
        cfg.task, directory, cfg.dataset, cfg.partition, nparts, cfg.seed, pid, cfg.task_options()
    )
    config = cast(ConfigRecord, msg.content[CONFIG])
    server_round = int(_scalar(config.get(SERVER_ROUND, 0)))
    settings = round_settings(cfg, config)  # the message's lr, local-epochs, batch-size first
    state_dir = client_state_dir(cfg, context, pid, str(config.get(RUN_ID, "")))
    load_state(context.state, state_dir, server_round, never_rewound=(ACCOUNT_KEY,), transient=(secagg.STATE_KEY,))
    inject_faults(
        fail_rate=cfg.fail_rate, straggler_rate=cfg.straggler_rate,
        straggler_delay=cfg.straggler_delay, seed=cfg.seed, server_round=server_round,
        partition_id=pid,
    )
    he_total, he_key = he_inputs(cfg, msg, context)
    model = _model(cfg, directory, cast(ArrayRecord, msg.content[ARRAYS]), he_total, he_key)
    up = cfg.compression
    attacking = cfg.attack != "none" and pid in attackers(nparts, cfg.attack_fraction, cfg.seed)
    start: dict[str, np.ndarray] | None = None  # global weights as received
    if not up.is_none or attacking or cfg.secagg:
        start = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    metrics: dict[str, float] = {NUM_EXAMPLES: len(split)}
    if requests.asked(config, requests.PARTITION):
        metrics.update({PARTITION_ID: pid, NUM_PARTITIONS: nparts})
    # q-FFL weights clients by the global model's loss: a statistic no epsilon covers.
    if config.get(INITIAL_LOSS, False) and cfg.dp is DPMode.NONE:
        metrics[TRAIN_LOSS_INITIAL] = evaluate(model, task, split, device=compute_device())["loss"]
    seed = cfg.seed * 100_003 + server_round * 1_009 + pid
    dp_settings = cfg.sample_dp()
    reset_peak_memory(compute_device())
    if dp_settings is not None:  # DP-SGD; a client out of budget replies without an update
        outcome, report = sample_dp_round(
            model, task, split, settings=dp_settings, state=context.state, partition_id=pid,
            epochs=settings.local_epochs, batch_size=settings.batch_size, lr=settings.lr,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=seed, device=compute_device(),
        )
        if requests.asked(config, requests.PRIVACY):
            metrics.update(report)
        if not outcome.trained:
            reply = private_reply_metrics(metrics, dp=cfg.dp)
            return Message(content=RecordDict({METRICS: MetricRecord(reply)}), reply_to=msg)
        metrics[TRAIN_LOSS] = outcome.loss
    else:
        metrics[TRAIN_LOSS] = train_local(
            model,
            task,
            split,
            epochs=settings.local_epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            momentum=cfg.momentum,
            proximal_mu=float(_scalar(config.get(PROXIMAL_MU, 0.0))),
            seed=seed,
            device=compute_device(),
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            logit_adjustment=cfg.logit_adjustment,
        )
    metrics.update(peak_memory_metrics(compute_device()))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if attacking and start is not None:
        rng = np.random.default_rng([cfg.seed, server_round, pid, 0xBAD])
        update = poison(flatten(state) - flatten(start), cfg.attack, scale=cfg.attack_scale, rng=rng)
        state = {k: torch.from_numpy(v) for k, v in unflatten(flatten(start) + update, start).items()}
    if cfg.secagg:  # the update quantized, weighted and masked: the server learns only the sum
        assert start is not None
        vector = secagg.upload_vector(
            flatten(state) - flatten(start), up=up, start=start, state=context.state,
            clipping_norm=cfg.dp_clipping_norm if cfg.dp == "client" else 0.0,
            seed=int(_scalar(config.get(COMPRESSION_SEED, 0))),
        )
        arrays = secagg.masked_update(msg, context, vector, upload_weight(len(split), dp=cfg.dp))
    elif he_key is not None:
        weight = upload_weight(len(split), dp=cfg.dp)
        arrays = encrypt_local(state, weight, he_key, he_upload_blocks(up, config))
    elif up.is_none:
        arrays = ArrayRecord(state)
    else:
        assert start is not None
        arrays = encode_update(
            up, start, {k: v.numpy() for k, v in state.items()}, state=context.state,
            seed=int(_scalar(config.get(COMPRESSION_SEED, 0))),
            rng=np.random.default_rng([cfg.seed, server_round, pid]),
        )
    save_state(context.state, state_dir, server_round, transient=(secagg.STATE_KEY,))
    content = RecordDict({ARRAYS: arrays, METRICS: MetricRecord(private_reply_metrics(metrics, dp=cfg.dp))})
    if config.get(REPORT_NODE_KEY):  # on a Ray cluster: where this client ran
        content[NODE_RECORD] = node_report()
    return Message(content=content, reply_to=msg)


def evaluation_metrics(
    task: Task, logits: torch.Tensor, labels: torch.Tensor, loss: float, *, statistics: bool = False
) -> dict[str, Any]:
    """What a client reports from its test share: the task's metrics, the loss and the
    example count Flower weights them by; with ``statistics`` (a fedloom server asks for
    them) also those of the metrics that do not average (:mod:`protocol.records`)."""
    metrics = {**task.metrics(logits, labels), LOSS: loss, NUM_EXAMPLES: len(labels)}
    if not statistics:
        return metrics
    return {**metrics, **statistics_metrics(task.metric_statistics(logits, labels))}


@app.query()
def query(msg: Message, context: Context) -> Message:
    """BatchNorm sums of the round's aggregate (sent in full) over this client's training
    data, for :class:`strategies.calibration.BatchNormCalibration`."""
    cfg = run_config(context)
    asked = msg.content[CONFIG].get(QUERY)
    if asked != QUERY_BATCHNORM:
        raise ValueError(f"unknown query {asked!r}; valid: {QUERY_BATCHNORM}")
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    split = client_split(
        cfg.task, directory, cfg.dataset, cfg.partition, nparts, cfg.seed, pid, cfg.task_options()
    )
    model = _architecture(cfg, directory)
    model.load_state_dict(cast(ArrayRecord, msg.content[ARRAYS]).to_torch_state_dict())
    sums = batchnorm_sums(model, split, batch_size=cfg.batch_size, device=compute_device())
    record = ArrayRecord({k: Array(v) for k, v in sums.items()})
    return Message(content=RecordDict({BATCHNORM_SUMS: record}), reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    cfg = run_config(context)
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    split = client_test_split(cfg.task, directory, cfg.dataset, nparts, pid, cfg.task_options())
    model = _model(cfg, directory, cast(ArrayRecord, msg.content[ARRAYS]), *he_inputs(cfg, msg, context))
    task = get_task(cfg.task, cfg.task_options())
    logits, loss = predict(model, task, split, device=compute_device())
    statistics = requests.asked(msg.content[CONFIG], requests.STATISTICS)
    metrics = evaluation_metrics(task, logits, torch.from_numpy(np.asarray(split.y)), loss, statistics=statistics)
    content = RecordDict({METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
