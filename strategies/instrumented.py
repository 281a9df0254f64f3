"""A wrapper strategy that measures each round without changing it.

It forwards every call to the inner strategy and records what crossed the wire:
payload bytes down (configure) and up (replies), replies aggregated, failures, and
the aggregated train / federated-evaluation metrics. The one thing it changes is the
order of the replies, which it puts in :func:`~strategies.ordering.canonical_order` so
that a seeded run aggregates, and so ends, the same way every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import WARNING
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloom.flower_compat import failure_reason, strip_ansi
from fedloom.protocol.keys import NODE_CONFIG_KEYS, NUM_PARTITIONS, PARTITION_ID
from fedloom.protocol.records import pooled_statistics, remove_statistics

from .delegating import DelegatingStrategy, Rejection, chain_of, rejections
from .nodes import reported_nodes
from .ordering import canonical_order


def _is_payload(value: object) -> bool:
    """Bytes, or a list of bytes (keys, shares and ciphertexts of secure aggregation)."""
    return isinstance(value, bytes) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, bytes) for v in value)
    )


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's serialized payload: every array's buffer and byte config."""
    total = sum(rec.count_bytes() for rec in content.array_records.values())
    for rec in content.config_records.values():
        total += sum(_value_bytes(v) for v in rec.values() if _is_payload(v))
    return total


def _value_bytes(value: object) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_value_bytes(v) for v in value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes):
        return len(value)
    return 8  # int64 / float64


def record_bytes(content: RecordDict) -> int:
    """Bytes of a message's metric and config records beside its payload: keys and
    strings at their UTF-8 length, numbers at 8 (int64 / float64), booleans at 1. The
    byte configs are payload (:func:`payload_bytes`). Small for scalar metrics; the
    per-example statistics of federated AUC (:mod:`fedloom.protocol.records`) make them large."""
    records: list[MetricRecord | ConfigRecord] = [*content.metric_records.values(), *content.config_records.values()]
    return sum(
        len(k.encode()) + (0 if _is_payload(v) else _value_bytes(v))  # metrics hold no bytes
        for rec in records for k, v in rec.items()
    )


def traffic(messages: Iterable[Message]) -> tuple[int, int]:
    """(:func:`payload_bytes`, :func:`record_bytes`) summed over the messages that carry
    content (error replies carry none)."""
    contents = [m.content for m in messages if not m.has_error()]
    return sum(payload_bytes(c) for c in contents), sum(record_bytes(c) for c in contents)


def failed_replies(
    phase: str, sent: list[int], replies: list[Message], partitions: dict[int, tuple[int, int]]
) -> list[dict[str, Any]]:
    """One entry (``phase``, ``node_id``, ``reason``; ``partition_id`` when the node has
    reported one, ``detail``: Flower's whole error reason) per error reply, and per node of
    ``sent`` that did not reply at all (its reply missed the round's timeout)."""
    failed = [
        {"phase": phase, "node_id": m.metadata.src_node_id, "reason": failure_reason(m.error.reason or "") or
         f"error code {m.error.code}", "detail": strip_ansi(m.error.reason or "")}
        for m in replies if m.has_error()
    ]
    replied = {m.metadata.src_node_id for m in replies}
    silent = [n for n in sent if n not in replied][: max(len(sent) - len(replies), 0)]
    failed += [{"phase": phase, "node_id": n, "reason": "no reply before the round timed out"} for n in silent]
    for f in failed:
        if f["node_id"] in partitions:
            f["partition_id"] = partitions[f["node_id"]][0]
    return failed


def rejected_replies(
    rejected: Iterable[Rejection], partitions: dict[int, tuple[int, int]]
) -> list[dict[str, Any]]:
    """One failures.jsonl entry per reply a wrapper left out this round, reason first."""
    out = []
    for r in rejected:
        entry: dict[str, Any] = {"phase": "train", "node_id": r.node_id, "reason": f"rejected: {r.reason}"}
        if r.node_id in partitions:
            entry["partition_id"] = partitions[r.node_id][0]
        out.append(entry)
    return out


def reported_partitions(replies: Iterable[Message]) -> dict[int, tuple[int, int]]:
    """node ID -> (partition-id, num-partitions) of every reply that reports them. The
    server checks them (two nodes on one partition train on the same data) and records them."""
    out = {}
    for msg in replies:
        if msg.has_error():
            continue
        for record in msg.content.metric_records.values():
            if PARTITION_ID in record and NUM_PARTITIONS in record:
                pid, count = record[PARTITION_ID], record[NUM_PARTITIONS]
                if isinstance(pid, (int, float)) and isinstance(count, (int, float)):
                    out[msg.metadata.src_node_id] = (int(pid), int(count))
    return out


def partition_problems(partitions: dict[int, tuple[int, int]]) -> list[str]:
    """What is wrong with the nodes' partitions: one id on several nodes, or nodes that
    disagree on the number of partitions."""
    problems = []
    by_id: dict[int, list[int]] = {}
    for node, (pid, _) in partitions.items():
        by_id.setdefault(pid, []).append(node)
    for pid, nodes in sorted(by_id.items()):
        if len(nodes) > 1:
            problems.append(f"nodes {', '.join(map(str, sorted(nodes)))} share partition-id {pid} (they train on the same data)")
    counts = sorted({n for _, n in partitions.values()})
    if len(counts) > 1:
        problems.append(f"nodes disagree on num-partitions: {', '.join(map(str, counts))}")
    return problems


@dataclass
class RoundStats:
    started: float = field(default_factory=time.perf_counter)
    sampled: int = 0
    num_clients: int = 0
    failures: int = 0
    rejected: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    record_bytes_up: int = 0  # metric and config records (record_bytes)
    record_bytes_down: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)  # failed_replies, train then evaluate
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)


def _scalars(record: MetricRecord | None) -> dict[str, float]:
    return {k: float(v) for k, v in (record or {}).items() if isinstance(v, (int, float))}


class TooFewReplies(RuntimeError):
    """A round got fewer replies than it needs; the run ends there."""


class InstrumentedStrategy(DelegatingStrategy):
    """Delegates to ``inner``; ``stats`` holds the current round's measurements.

    ``round_offset`` shifts the round numbers the inner chain sees, so a resumed run
    continues at round ``offset + 1`` while Flower's loop counts from 1 again. A round
    with fewer than ``min_replies`` replies raises :class:`TooFewReplies`.
    ``finish_metrics`` (the task's ``metrics_from_statistics``) turns the statistics
    the evaluation replies carry, pooled, into the metrics that do not average.
    """

    def __init__(
        self, inner: Strategy, *, min_replies: int = 1,
        finish_metrics: Callable[[dict[str, list[np.ndarray]]], dict[str, float]] | None = None,
    ) -> None:
        self.inner = inner
        self.finish_metrics = finish_metrics
        self.partitions: dict[int, tuple[int, int]] = {}  # node ID -> reported partition
        self.ran_on: dict[int, dict[str, Any]] = {}  # node ID -> where it ran this round (nodes.py)
        self.stats = RoundStats()
        self.round_offset = 0
        self.min_replies = min_replies
        self.on_model_out: Callable[[int], None] | None = None  # before evaluation sends the model
        self._sent: list[int] = []  # nodes of the round's current phase

    def _extra_failed(self) -> None:
        """Failures in messages a wrapper sent beside the round's own (their phase names them)."""
        for s in chain_of(self.inner):
            self.stats.failed += getattr(s, "extra_failed", ())

    def _count_up(self, replies: Iterable[Message]) -> None:
        payload, records = traffic(replies)
        self.stats.bytes_up += payload
        self.stats.record_bytes_up += records

    def _count_down(self, messages: Iterable[Message]) -> None:
        payload, records = traffic(messages)
        self.stats.bytes_down += payload
        self.stats.record_bytes_down += records

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.stats = RoundStats()
        server_round += self.round_offset
        try:
            messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        except TooFewReplies:  # a wrapper's own exchanges (secure aggregation) lost too many
            self._extra_failed()
            raise
        self.stats.sampled = len(messages)
        self._count_down(messages)
        self._sent = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = canonical_order(replies)
        ok = [m for m in replies if not m.has_error()]
        self.stats.failures = self.stats.sampled - len(ok)
        self.stats.failed = failed_replies("train", self._sent, replies, self.partitions)
        self._count_up(ok)
        if len(ok) < min(self.min_replies, self.stats.sampled):  # dp=client's Poisson draw may be smaller
            raise TooFewReplies(
                f"round {server_round + self.round_offset}: only {len(ok)} of "
                f"{self.stats.sampled} sampled clients replied (min-train-nodes={self.min_replies}); "
                "the model of the previous round stands"
            )
        self.partitions.update(reported_partitions(ok))
        self.ran_on = reported_nodes(ok)
        for problem in partition_problems(self.partitions):
            log(WARNING, "round %d: %s (node config partition-id / num-partitions)",
                server_round + self.round_offset, problem)
        try:
            arrays, metrics = self.inner.aggregate_train(server_round + self.round_offset, replies)
        except TooFewReplies:
            self._extra_failed()
            raise
        rejected = rejections(self.inner)
        self.stats.rejected = len(rejected)
        self.stats.failed += rejected_replies(rejected, self.partitions)
        # Messages a wrapper sent beside the round's own (BatchNorm calibration queries).
        for s in chain_of(self.inner):
            if isinstance(s, DelegatingStrategy):
                self._count_up(s.extra_up)
                self._count_down(s.extra_down)
        self._extra_failed()
        self.stats.num_clients = len(ok) - self.stats.rejected if arrays is not None else 0
        if metrics is not None:  # the inner strategy averaged the node config like a metric
            for key in NODE_CONFIG_KEYS:
                metrics.pop(key, None)
        self.stats.train_metrics = _scalars(metrics)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        if messages and self.on_model_out is not None:
            self.on_model_out(server_round)
        self._count_down(messages)
        self._sent = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = canonical_order(replies)
        self._count_up(replies)
        self.stats.failed += failed_replies("evaluate", self._sent, replies, self.partitions)
        # The statistics leave the replies before the strategy sees them: Flower averages
        # list metrics element by element, and the shares' lists differ in length.
        contents = [m.content for m in replies if not m.has_error()]
        pooled = pooled_statistics(contents)
        remove_statistics(contents)
        metrics = self.inner.aggregate_evaluate(server_round + self.round_offset, replies)
        if metrics is not None and pooled and self.finish_metrics is not None:
            for key, value in self.finish_metrics(pooled).items():
                metrics[key] = value
        self.stats.evaluate_metrics = _scalars(metrics)
        return metrics
