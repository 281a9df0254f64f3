"""Replies are aggregated in a canonical order, so a seeded run repeats bit for bit."""

import itertools

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedloom.strategies.instrumented import InstrumentedStrategy
from fedloom.strategies.ordering import canonical_order


def reply(node_id: int, weights: np.ndarray, examples: int) -> Message:
    instruction = Message(
        content=RecordDict({"config": ConfigRecord()}), dst_node_id=node_id, message_type="train"
    )
    body = RecordDict({
        "arrays": ArrayRecord({"w": Array(weights)}),
        "metrics": MetricRecord({"num-examples": examples, "train_loss": float(weights.mean())}),
    })
    return Message(content=body, reply_to=instruction)


def four_replies() -> list[Message]:
    rng = np.random.default_rng(0)
    return [reply(i + 1, rng.normal(size=4096).astype(np.float32), n)
            for i, n in enumerate((97, 113, 101, 89))]


def aggregate(strategy, replies) -> np.ndarray:
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays["w"].numpy()


def test_arrival_order_changes_fedavgs_bits_but_not_the_instrumented_chains(task_identity):
    replies = four_replies()
    orders = list(itertools.permutations(replies))
    raw = {aggregate(FedAvg(), order).tobytes() for order in orders}
    # Without a canonical order, float sums depend on arrival order (what this guards against).
    assert len(raw) > 1
    canonical = {aggregate(InstrumentedStrategy(FedAvg()), order).tobytes() for order in orders}
    assert len(canonical) == 1
    # ... and the canonical aggregate is still FedAvg's weighted mean.
    weights = np.array([97, 113, 101, 89], np.float64)
    expected = sum(w * r.content["arrays"]["w"].numpy().astype(np.float64)
                   for w, r in zip(weights, replies)) / weights.sum()
    np.testing.assert_allclose(np.frombuffer(canonical.pop(), np.float32), expected, rtol=1e-5, atol=1e-6)


def test_canonical_order_depends_on_content_only(task_identity):
    replies = four_replies()
    expected = [r.content.object_id for r in canonical_order(replies)]
    for order in itertools.permutations(replies):
        assert [r.content.object_id for r in canonical_order(order)] == expected
    # The same content from another node sorts to the same place.
    again = [reply(50 + i, r.content["arrays"]["w"].numpy(), int(r.content["metrics"]["num-examples"]))
             for i, r in enumerate(replies)]
    assert [r.content.object_id for r in canonical_order(again)] == expected


def test_partitions_the_nodes_report_are_checked():
    from fedloom.strategies.instrumented import partition_problems

    assert partition_problems({11: (0, 3), 12: (1, 3), 13: (2, 3)}) == []
    assert partition_problems({11: (0, 3), 12: (0, 3), 13: (2, 4)}) == [
        "nodes 11, 12 share partition-id 0 (they train on the same data)", "nodes disagree on num-partitions: 3, 4",
    ]
