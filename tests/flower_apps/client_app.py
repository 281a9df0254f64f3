"""A ClientApp as Flower's quickstart templates write it: the training settings come from
the train message's ``config`` (``lr``, ``local-epochs``, ``batch-size``), the reply is
``arrays`` + ``metrics`` with ``num-examples``. No fedloom imports."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .task import Net, load_data, test, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    config = msg.content["config"]
    loss = train(model, x, y, lr=config["lr"], epochs=int(config["local-epochs"]), batch_size=config["batch-size"])
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data()
    loss, accuracy = test(model, x, y)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
