"""A wrapper strategy that decodes compressed client updates before aggregation.

Compose as ``InstrumentedStrategy(DecodingStrategy(inner, ...))``: the outer
wrapper measures the compressed bytes on the wire, this one turns each reply's
payload back into full weights (global + decoded update, same keys, shapes and
dtypes as the global model) so any Flower strategy aggregates it unchanged.

It also puts the round's shared seed (``compression-seed``, randk's mask) in the
train config, and with download compression replaces the global arrays sent to
clients by an encoded payload. Updates are decoded against the exact global
model the server holds, so a lossy download only moves the point where clients
start training, never the server's copy. Uploads of full weights (no upload
codec) under a lossy download are rebased the same way: the server keeps the
lossy model each client decoded and aggregates exact global + (reply - lossy).
A download's BatchNorm statistics ride exact beside its payload (:mod:`compression.exact`).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloom.compression.exact import join_exact, split_exact
from fedloom.compression.flat import flatten, layout_of, unflatten
from fedloom.compression.pipeline import decode, encode
from fedloom.compression.spec import Chain, CodecContext
from fedloom.protocol.keys import ARRAYS, COMPRESSION_SEED
from fedloom.protocol.records import array_record, payload_record, record_payload

from .delegating import DelegatingStrategy
from .validation import Rejection

def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def round_seed(seed: int, server_round: int) -> int:
    """The seed every client of ``server_round`` shares (randk's mask)."""
    return int(np.random.default_rng([seed, server_round]).integers(2**31 - 1))


class DecodingStrategy(DelegatingStrategy):
    """Delegates to ``inner``; decodes uploads with ``up``, encodes downloads with ``down``."""

    def __init__(self, inner: Strategy, *, up: Chain, down: Chain, seed: int) -> None:
        if down.transform is not None:
            raise ValueError(f"download compression {down} must be none, fp16 or qsgd:BITS")
        self.inner, self.up, self.down, self.seed = inner, up, down, seed
        self.sent: dict[int, dict[str, np.ndarray]] = {}  # node id -> global arrays it got
        self.decoded: dict[int, dict[str, np.ndarray]] = {}  # node id -> what it decoded (lossy down)
        self.rejected: list[Rejection] = []  # this round's undecodable replies
        self.seed_of_round = 0

    def _encode_down(self, messages: list[Message], server_round: int) -> list[Message]:
        """Replace each distinct content's global arrays by one encoded payload; remember
        what each node will decode from it (:attr:`decoded`)."""
        if self.down.is_none:
            return messages
        rng = np.random.default_rng([self.seed, server_round, 1])
        encoded: dict[int, tuple[RecordDict, dict[str, np.ndarray]]] = {}
        self.decoded = {}
        for msg in messages:
            key = id(msg.content)
            if key not in encoded:
                content = RecordDict(dict(msg.content.items()))
                arrays = numpy_arrays(cast(ArrayRecord, content[ARRAYS]))
                coded, exact = split_exact(arrays)  # BatchNorm statistics ride exact
                payload = encode(self.down, flatten(coded), CodecContext(layout_of(coded), rng=rng))
                content[ARRAYS] = payload_record(payload, exact)
                decoded = unflatten(decode(self.down, payload, CodecContext(layout_of(coded))), coded)
                encoded[key] = content, join_exact(arrays, decoded, exact)
            msg.content, self.decoded[msg.metadata.dst_node_id] = encoded[key]
        return messages

    def rebase_reply(self, msg: Message) -> RecordDict:
        """Full weights trained from a lossy download, moved onto the exact global model."""
        base, lossy = self.sent.get(msg.metadata.src_node_id), self.decoded.get(msg.metadata.src_node_id)
        if base is None or lossy is None:
            raise ValueError("reply from a node that was not sent this round's model")
        got = numpy_arrays(array_record(msg.content, ARRAYS))
        if layout_of(got) != layout_of(base):
            return msg.content  # validation rejects it with the reason
        update = flatten(got).astype(np.float64) - flatten(lossy)
        weights = unflatten(flatten(base) + update, base)
        content = RecordDict(dict(msg.content.items()))
        content[ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})
        return content

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.seed_of_round = round_seed(self.seed, server_round)
        self.rejected = []
        config = ConfigRecord({**config, COMPRESSION_SEED: self.seed_of_round})
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        base: dict[int, dict[str, np.ndarray]] = {}
        self.sent = {
            m.metadata.dst_node_id: base.setdefault(
                id(m.content), numpy_arrays(cast(ArrayRecord, m.content[ARRAYS]))
            )
            for m in messages
        }
        return self._encode_down(messages, server_round)

    def decode_reply(self, msg: Message) -> RecordDict:
        """Full-weights content for ``msg``; ``ValueError`` if its payload is malformed."""
        base = self.sent.get(msg.metadata.src_node_id)
        if base is None:
            raise ValueError("reply from a node that was not sent this round's model")
        payload = record_payload(array_record(msg.content, ARRAYS))
        ctx = CodecContext(layout_of(base), seed=self.seed_of_round)
        update = decode(self.up, payload, ctx)
        if not np.all(np.isfinite(update)):
            raise ValueError("decoded update has non-finite values")
        weights = unflatten(flatten(base) + update, base)
        content = RecordDict(dict(msg.content.items()))
        content[ARRAYS] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in weights.items()}
        )
        return content

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.up.is_none and self.down.is_none:  # plain full weights from the exact model
            return self.inner.aggregate_train(server_round, replies)
        restore = self.rebase_reply if self.up.is_none else self.decode_reply
        kept = []
        for msg in replies:
            if not msg.has_error():
                try:
                    msg.content = restore(msg)
                except (KeyError, ValueError) as exc:
                    log(WARNING, "dropping reply from node %s: %s", msg.metadata.src_node_id, exc)
                    self.rejected.append(Rejection(msg.metadata.src_node_id, f"payload: {exc}"))
                    continue
            kept.append(msg)
        return self.inner.aggregate_train(server_round, kept)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        return self._encode_down(messages, server_round)
