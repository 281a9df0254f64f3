"""Reply validation, split from aggregation: bad replies never reach the average.

:func:`check_train_reply` is a pure check of one reply's content against the
global model's layout; :class:`ValidatingStrategy` applies it to every train reply
and hands only the good ones to the inner strategy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloom.protocol.keys import NUM_EXAMPLES

from .delegating import DelegatingStrategy, Rejection

Layout = dict[str, tuple[tuple[int, ...], str]]


def layout_of(arrays: ArrayRecord) -> Layout:
    """Name -> (shape, dtype) of every array in ``arrays``."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in arrays.items()}


def check_train_reply(content: RecordDict, layout: Layout, *, max_examples: int) -> str | None:
    """Why ``content`` must not be aggregated, or ``None`` when it is sound."""
    if len(content.array_records) != 1:
        return f"expected 1 ArrayRecord, got {len(content.array_records)}"
    arrays = next(iter(content.array_records.values()))
    missing = sorted(set(layout) - set(arrays.keys()))
    extra = sorted(set(arrays.keys()) - set(layout))
    if missing or extra:
        return f"array names differ from the global model (missing {missing}, unexpected {extra})"
    for name, (shape, dtype) in layout.items():
        got = arrays[name]
        if tuple(got.shape) != shape or str(got.dtype) != dtype:
            return f"{name}: got {got.dtype}{list(got.shape)}, expected {dtype}{list(shape)}"
        values = got.numpy()
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"{name}: non-finite values"
    if len(content.metric_records) != 1:
        return f"expected 1 MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    n = metrics.get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not float(n).is_integer():
        return f"{NUM_EXAMPLES} must be an integer, got {n!r}"
    if not 1 <= n <= max_examples:
        return f"{NUM_EXAMPLES}={n} outside [1, {max_examples}]"
    for key, value in metrics.items():
        entries = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in entries):
            return f"metric {key} is not finite"
    return None


def cast_to_layout(arrays: ArrayRecord, layout: Layout) -> ArrayRecord:
    """``arrays`` with each array in the dtype ``layout`` gives it (as sent to the clients).

    Flower's FedAdam and QFedAvg compute in float64 (numpy 2 promotes float32 arrays
    times float64 scalars); a float64 global model would make every float32 reply of
    the next round fail :func:`check_train_reply`, and the model would stop changing.
    """
    if all(str(arrays[k].dtype) == layout[k][1] for k in arrays if k in layout):
        return arrays
    return ArrayRecord({
        k: Array(np.ascontiguousarray(v.numpy().astype(layout[k][1]))) if k in layout else v
        for k, v in arrays.items()
    })


@dataclass
class ValidatingStrategy(DelegatingStrategy):
    """Delegates to ``inner`` after dropping train replies that fail validation."""

    inner: Strategy
    max_examples: int
    layout: Layout = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.layout = layout_of(arrays)
        self.rejected = []
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        keep = []
        for msg in replies:
            reason = None if msg.has_error() else check_train_reply(
                msg.content, self.layout, max_examples=self.max_examples
            )
            if reason is None:
                keep.append(msg)
                continue
            self.rejected.append(Rejection(msg.metadata.src_node_id, reason))
            log(WARNING, "round %d: rejected reply from node %d: %s",
                server_round, msg.metadata.src_node_id, reason)
        empty_round_wanted = isinstance(self.inner, DelegatingStrategy) and self.inner.releases_without_replies
        if not any(not m.has_error() for m in keep) and not empty_round_wanted:
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, keep)
        return (None if arrays is None else cast_to_layout(arrays, self.layout)), metrics
