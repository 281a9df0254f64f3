"""An in-process grid for SecAgg+ tests: the server strategy talks to the real client
handlers (client/secagg.py) of simulated nodes, each with its own ``Context``; nodes
can be made to fail at a chosen stage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedloom.client import secagg as client
from fedloom.compression.sparse import randk_indices
from fedloom.protocol.keys import COMPRESSION_SEED as SEED_KEY
from fedloom.protocol import secagg as P
from fedloom.strategies.instrumented import InstrumentedStrategy
from fedloom.strategies.secagg import SecAggStrategy
from fedloom.strategies.validation import ValidatingStrategy

HANDLERS: dict[str, Callable[[Message, Context], Message]] = {
    P.SETUP: client.setup, P.SHARE_KEYS: client.share_keys, P.UNMASK: client.unmask,
}


class LocalGrid:
    """``send_and_receive`` runs each message on its node; ``updates`` are what the nodes
    train (flat float32), ``weights`` their example counts, ``fail`` node -> the message
    type at which it crashes (``"train"`` for the masked upload)."""

    def __init__(self, updates: dict[int, np.ndarray], weights: dict[int, int], fail: dict[int, str] | None = None,
                 randk: float = 1.0):
        self.updates, self.weights, self.fail, self.randk = updates, weights, fail or {}, randk
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
                         for n in updates}
        self.seen: list[Message] = []  # every message a node received
        self.client_seconds = 0.0  # time spent in the client handlers, all nodes together

    def get_node_ids(self) -> Iterable[int]:
        return list(self.updates)

    def _handle(self, msg: Message) -> Message:
        node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
        self.seen.append(msg)
        if self.fail.get(node) == kind:
            return Message(Error(code=0, reason=f"node {node} dropped at {kind}"), reply_to=msg)
        if kind == "train":
            vec = self.updates[node]
            if self.randk < 1:  # the round's shared coordinates, as client/secagg.upload_vector sends
                vec = vec[randk_indices(vec.size, self.randk, int(msg.content["config"][SEED_KEY]))]
            arrays = client.masked_update(msg, self.contexts[node], vec, self.weights[node])
            metrics = MetricRecord({"num-examples": self.weights[node], "train_loss": float(node)})
            return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
        return HANDLERS[kind](msg, self.contexts[node])

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        t0 = time.perf_counter()
        replies = [self._handle(m) for m in messages]
        self.client_seconds += time.perf_counter() - t0
        return replies


def build(*, threshold: float = 0.6, bits: int = 16, clip: float = 2.0, max_weight: int = 10_000,
          min_nodes: int = 2, neighbours: int = 0, randk: float = 1.0) -> InstrumentedStrategy:
    inner = FedAvg(min_train_nodes=min_nodes, min_available_nodes=min_nodes, fraction_evaluate=0.0)
    secure = SecAggStrategy(ValidatingStrategy(inner, max_weight), threshold=threshold, bits=bits,
                            clip=clip, max_weight=max_weight, neighbours=neighbours, randk_fraction=randk)
    return InstrumentedStrategy(secure, min_replies=min_nodes)


def run_round(strategy: InstrumentedStrategy, grid: LocalGrid, start: dict[str, np.ndarray],
              server_round: int = 1) -> tuple[ArrayRecord | None, list[Message]]:
    """One train round as ``Strategy.start`` runs it; returns the aggregate and the replies."""
    arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(messages)
    uploads = [m for m in replies if not m.has_error()]
    snapshot = [Message(RecordDict(dict(m.content.items())), reply_to=sent)
                for m, sent in zip(replies, messages, strict=True) if not m.has_error()]
    aggregate, _ = strategy.aggregate_train(server_round, replies)
    return aggregate, snapshot or uploads
