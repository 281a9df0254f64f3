"""The fedloom ClientApp (``client.app:app``).

The partition comes from the node config (``partition-id``, ``num-partitions``),
so the same app runs in simulation and on SuperNodes on other machines. A node may
also set ``data-dir`` in its node config to override the run config's.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server.config import RunConfig, parse_run_config
from tasks.registry import client_split, client_test_split, get_task, load_task_data
from tasks.training import evaluate, train_local

app = ClientApp()


@lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return parse_run_config(dict(items))


def run_config(context: Context) -> RunConfig:
    """The run config, parsed once per process."""
    torch.set_num_threads(1)  # one core per Ray actor / SuperNode process
    return _parse(tuple(sorted(context.run_config.items())))


def node_partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(
            f"node config lacks {exc}; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=N"'
        ) from None


def data_dir(cfg: RunConfig, context: Context) -> str:
    return str(context.node_config.get("data-dir", cfg.data_dir))


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _model(cfg: RunConfig, directory: str, arrays: ArrayRecord) -> torch.nn.Module:
    task = get_task(cfg.task)
    model = task.build_model(load_task_data(cfg.task, directory, cfg.dataset))
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = run_config(context)
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    task = get_task(cfg.task)
    split = client_split(cfg.task, directory, cfg.dataset, cfg.partition, nparts, cfg.seed, pid)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    model = _model(cfg, directory, msg.content["arrays"])
    metrics: dict[str, float] = {"num-examples": len(split)}
    if cfg.strategy == "qfedavg":  # q-FFL weights clients by the global model's loss
        metrics["train_loss_initial"] = evaluate(model, task, split, device=device())["loss"]
    metrics["train_loss"] = train_local(
        model,
        task,
        split,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=cfg.seed * 100_003 + server_round * 1_009 + pid,
        device=device(),
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    cfg = run_config(context)
    pid, nparts = node_partition(context)
    directory = data_dir(cfg, context)
    split = client_test_split(cfg.task, directory, cfg.dataset, nparts, pid)
    model = _model(cfg, directory, msg.content["arrays"])
    metrics = evaluate(model, get_task(cfg.task), split, device=device())
    content = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": len(split)})})
    return Message(content=content, reply_to=msg)
