"""BatchNorm statistics of each round's aggregate, measured by the clients.

:class:`BatchNormCalibration` wraps a plain (not encrypted, not ``dp=client``)
strategy chain. After the inner strategy aggregates a round, it sends the new
global model to that round's clients in a query message; each answers with
sums of its BatchNorm layers' inputs over its training data
(:func:`tasks.batchnorm.batchnorm_sums`), and the server sets every
``running_mean`` / ``running_var`` of the aggregate to the pooled moments.
Without this, the aggregate carries the average of running statistics that each
client measured on its own local model: under label skew that average is not
what the averaged model sees, and evaluation suffers (ModelNet10, Dirichlet 0.5:
see README). Clients that fail to answer are left out; with no answers the
averaged statistics stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloom.protocol.keys import ARRAYS, BATCHNORM_SUMS, CONFIG, QUERY, QUERY_BATCHNORM
from fedloom.tasks.batchnorm import pooled_moments

from .delegating import DelegatingStrategy
from .ordering import canonical_order


class BatchNormCalibration(DelegatingStrategy):
    """``inner`` whose aggregates get BatchNorm statistics measured on all clients' data."""

    def __init__(self, inner: Strategy, *, timeout: float | None = None) -> None:
        self.inner, self.timeout = inner, timeout
        self._grid: Grid | None = None
        self._nodes: list[int] = []
        # This round's queries and answers: InstrumentedStrategy counts their bytes.
        self.extra_down: list[Message] = []
        self.extra_up: list[Message] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._grid, self._nodes = grid, [m.metadata.dst_node_id for m in messages]
        self.extra_down, self.extra_up = [], []
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None or self._grid is None or not any(k.endswith(".running_var") for k in arrays):
            return arrays, metrics
        content = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({QUERY: QUERY_BATCHNORM})})
        queries = [
            Message(content=content, message_type=MessageType.QUERY, dst_node_id=node)
            for node in self._nodes
        ]
        self.extra_down = queries
        # Pooled in an order fixed by content, not arrival, so float sums repeat exactly.
        answers = [
            m for m in canonical_order(self._grid.send_and_receive(queries, timeout=self.timeout))
            if not m.has_error()
        ]
        self.extra_up = answers
        moments = pooled_moments(
            {k: v.numpy() for k, v in sums.items()}
            for sums in (m.content.get(BATCHNORM_SUMS) for m in answers) if isinstance(sums, ArrayRecord)
        )
        if not moments:
            log(WARNING, "round %d: no client measured the BatchNorm statistics; the averaged ones stay",
                server_round)
            return arrays, metrics
        calibrated = dict(arrays.items())
        for name, (mean, var) in moments.items():
            for key, value in ((f"{name}.running_mean", mean), (f"{name}.running_var", var)):
                if key in calibrated:
                    dtype = calibrated[key].numpy().dtype
                    calibrated[key] = Array(value.astype(dtype))
        return ArrayRecord(calibrated), metrics
