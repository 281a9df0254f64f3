"""Reply validation: bad replies are rejected before aggregation, never averaged in."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedloom.strategies.registry import strategy_names
from fedloom.strategies.validation import ValidatingStrategy, check_train_reply, layout_of

GLOBAL = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.zeros(2, np.float32))})
LAYOUT = layout_of(GLOBAL)


def content(w, b, n=10, **metrics):
    arrays = ArrayRecord({"w": Array(np.asarray(w)), "b": Array(np.asarray(b))})
    return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n, **metrics})})


def reply(node_id, body):
    """A real reply Message from ``node_id`` to a train instruction."""
    instruction = Message(
        content=RecordDict({"config": ConfigRecord()}), dst_node_id=node_id, message_type="train"
    )
    return Message(content=body, reply_to=instruction)  # src = the instruction's dst


GOOD = (np.ones((2, 2), np.float32), np.ones(2, np.float32))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (content(np.full((2, 2), np.nan, np.float32), GOOD[1]), "w: non-finite values"),
        (content(np.ones((3, 2), np.float32), GOOD[1]), "w: got float32[3, 2], expected float32[2, 2]"),
        (content(np.ones((2, 2), np.float64), GOOD[1]), "w: got float64[2, 2], expected float32[2, 2]"),
        (RecordDict({"arrays": ArrayRecord({"w": Array(GOOD[0])}), "metrics": MetricRecord({"num-examples": 1})}),
         "missing ['b']"),
        (content(*GOOD, n=-3), "num-examples=-3 outside [1, 1000]"),
        (content(*GOOD, n=10**9), "num-examples=1000000000 outside [1, 1000]"),
        (content(*GOOD, n=2.5), "num-examples must be an integer, got 2.5"),
        (content(*GOOD, train_loss=float("inf")), "metric train_loss is not finite"),
        (RecordDict({"metrics": MetricRecord({"num-examples": 1})}), "expected 1 ArrayRecord, got 0"),
    ],
)
def test_bad_replies_have_a_reason(body, reason):
    assert reason in check_train_reply(body, LAYOUT, max_examples=1000)


def test_sound_reply_passes():
    assert check_train_reply(content(*GOOD), LAYOUT, max_examples=1000) is None


def test_rejected_replies_leave_the_average_unchanged(task_identity):
    # Prepare: two sound replies (weights 1 and 3, counts 10 and 30) and two bad ones.
    strategy = ValidatingStrategy(FedAvg(), max_examples=1000)
    strategy.layout = LAYOUT
    replies = [
        reply(1, content(np.ones((2, 2), np.float32), np.ones(2, np.float32), n=10)),
        reply(2, content(np.full((2, 2), 3, np.float32), np.full(2, 3, np.float32), n=30)),
        reply(3, content(np.full((2, 2), np.nan, np.float32), np.zeros(2, np.float32), n=10)),
        reply(4, content(np.ones((3, 3), np.float32), np.zeros(2, np.float32), n=10)),
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: (1*10 + 3*30) / 40 = 2.5 everywhere; the NaN and 3x3 replies are out.
    assert np.allclose(arrays["w"].numpy(), 2.5) and np.allclose(arrays["b"].numpy(), 2.5)
    assert [(r.node_id, r.reason.split(":")[0]) for r in strategy.rejected] == [(3, "w"), (4, "w")]


def test_only_bad_replies_means_no_update(task_identity):
    strategy = ValidatingStrategy(FedAvg(), max_examples=1000)
    strategy.layout = LAYOUT
    bad = reply(5, content(np.full((2, 2), np.inf, np.float32), GOOD[1]))
    assert strategy.aggregate_train(1, [bad]) == (None, None)
    assert len(strategy.rejected) == 1


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_keeps_learning_after_round_one(name, task_identity):
    # FedAdam and QFedAvg compute in float64; the global model must still go out as the
    # float32 the clients send back, or every round-2 reply fails validation and the
    # model stops changing.
    from unittest.mock import Mock

    from flwr.serverapp import Grid

    from fedloom.strategies.chain import strategy_params
    from fedloom.config import parse_run_config
    from fedloom.strategies.registry import build_strategy

    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(range(1, 8))
    rng = np.random.default_rng(0)
    cfg = parse_run_config({"strategy": name, "min-train-nodes": 7, "min-available-nodes": 7})
    strategy = ValidatingStrategy(build_strategy(name, strategy_params(cfg)), max_examples=1000)
    arrays = ArrayRecord({"w": Array(rng.standard_normal(20).astype(np.float32))})
    models = [arrays["w"].numpy()]
    for server_round in (1, 2, 3):
        replies = []
        for msg in strategy.configure_train(server_round, arrays, ConfigRecord(), grid):
            sent = msg.content["arrays"]["w"].numpy()
            body = RecordDict({
                "arrays": ArrayRecord({"w": Array((sent + 0.1 * rng.standard_normal(20)).astype(np.float32))}),
                "metrics": MetricRecord({"num-examples": 10, "train_loss": 1.0, "train_loss_initial": 1.0}),
            })
            replies.append(Message(content=body, reply_to=msg))
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert strategy.rejected == [], (server_round, strategy.rejected[:1])
        assert arrays["w"].numpy().dtype == np.float32
        models.append(arrays["w"].numpy())
    assert all(not np.array_equal(a, b) for a, b in zip(models, models[1:]))
