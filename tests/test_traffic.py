"""What the round rows count as traffic: payload bytes (arrays, byte configs) and the
metric and config records beside them (record bytes)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Error, MessageType

from fedloom.strategies.instrumented import payload_bytes, record_bytes, traffic


def content() -> RecordDict:
    return RecordDict({
        "arrays": ArrayRecord({"w": Array(np.zeros(10, np.float32))}),
        "metrics": MetricRecord({"loss": 0.5, "num-examples": 7, "stat.x": [1.0, 2.0, 3.0]}),
        "config": ConfigRecord({"name": "ab", "flag": True, "blob": b"xyz", "tags": ["é", "c"]}),
    })


def test_record_bytes_count_keys_and_values_but_not_the_payload():
    c = content()
    metrics = (4 + 8) + (12 + 8) + (6 + 3 * 8)
    config = (4 + 2) + (4 + 1) + 4 + (4 + 2 + 1)  # "é" is 2 bytes of UTF-8; the blob is payload
    assert record_bytes(c) == metrics + config
    assert payload_bytes(c) == c["arrays"].count_bytes() + 3


def test_traffic_leaves_error_replies_out(task_identity):
    sent = Message(content=content(), dst_node_id=1, message_type=MessageType.TRAIN)
    ok = Message(content(), reply_to=sent)
    failed = Message(Error(code=0, reason="boom"), reply_to=sent)
    assert traffic([ok, failed]) == (payload_bytes(ok.content), record_bytes(ok.content))
    assert traffic([]) == (0, 0)
