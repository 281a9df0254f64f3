"""DecodingStrategy under InstrumentedStrategy: decoded aggregation and wire bytes."""

from __future__ import annotations

from unittest.mock import Mock

import numpy as np
import torch
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedloom.compression.flat import flatten, layout_of
from fedloom.compression.pipeline import encode
from fedloom.compression.spec import CodecContext, parse_spec
from fedloom.protocol.records import payload_record, record_payload
from fedloom.strategies.compressed import DecodingStrategy
from fedloom.strategies.instrumented import InstrumentedStrategy

NPY_HEADER = 128  # np.save header of a 1-d uint8 array


@pytest.fixture(autouse=True)
def task_identity() -> None:
    """Messages need a run and task id, as inside a ServerApp."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def global_arrays() -> ArrayRecord:
    return ArrayRecord({
        "w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "b": Array(np.zeros(2, dtype=np.float32)),
    })


def grid(nodes: list[int]) -> Grid:
    g = Mock(spec=Grid)
    g.get_node_ids.return_value = nodes
    return g


def reply(instruction: Message, arrays: ArrayRecord, examples: int) -> Message:
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, reply_to=instruction)  # src = the instruction's dst


def build(up: str, down: str = "none") -> InstrumentedStrategy:
    inner = FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0)
    wrapper = DecodingStrategy(inner, up=parse_spec(up), down=parse_spec(down), seed=1)
    return InstrumentedStrategy(wrapper)


def test_fp16_updates_are_decoded_against_the_global_model_and_bytes_are_exact():
    # Prepare
    strategy = build("fp16")
    sent = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), grid([11, 12])))
    base = {k: v.numpy() for k, v in global_arrays().items()}
    updates = [np.full(8, 1.0, np.float32), np.full(8, 3.0, np.float32)]
    ctx = CodecContext(layout_of(base))
    replies = [
        reply(m, payload_record(encode(parse_spec("fp16"), u, ctx)), 10)
        for m, u in zip(sent, updates, strict=True)
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: equal weights -> global + mean update (2.0); keys, shapes, dtypes kept
    assert arrays is not None and list(arrays.keys()) == ["w", "b"]
    np.testing.assert_allclose(arrays["w"].numpy(), base["w"] + 2.0)
    assert arrays["b"].numpy().dtype == np.float32 and arrays["b"].numpy().shape == (2,)
    # 8 values * 2 bytes, one npy header, key "payload", per client
    assert strategy.stats.bytes_up == 2 * (16 + NPY_HEADER + len("payload"))
    assert strategy.stats.num_clients == 2
    # the seed for randk's shared mask rides in the train config
    assert isinstance(sent[0].content["config"]["compression-seed"], int)


def test_bytes_up_equal_the_replies_serialized_arrays():
    strategy = build("topk:0.25+qsgd:8")
    sent = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), grid([1, 2])))
    ctx = CodecContext(((2, 3), (2,)), rng=np.random.default_rng(0))
    vec = np.arange(8, dtype=np.float32)
    records = [payload_record(encode(parse_spec("topk:0.25+qsgd:8"), vec * s, ctx)) for s in (1, -1)]
    expected = sum(r.count_bytes() for r in records)
    # k = 2 of 8: tag + 2 varints (bitmap: 1 byte + tag is smaller: 2 bytes) + norm + 2 levels
    assert [len(record_payload(r)) for r in records] == [2 + 4 + 2, 2 + 4 + 2]
    strategy.aggregate_train(1, [reply(m, r, 5) for m, r in zip(sent, records, strict=True)])
    assert strategy.stats.bytes_up == expected == 2 * (8 + NPY_HEADER + 7)


def test_malformed_payload_is_dropped_not_averaged():
    strategy = build("fp16")
    sent = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), grid([1, 2])))
    ones = np.ones(8, np.float32)
    good = payload_record(encode(parse_spec("fp16"), ones, CodecContext(((6,), (2,)))))
    bad = payload_record(b"\x00" * 5)  # wrong size for 8 fp16 values
    arrays, _ = strategy.aggregate_train(1, [reply(sent[0], good, 1), reply(sent[1], bad, 1)])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.arange(6).reshape(2, 3) + 1.0, rtol=1e-3)


@pytest.mark.parametrize("up", ["fp16", "none"])
def test_a_reply_with_another_record_kind_under_arrays_is_rejected_not_a_crash(up):
    strategy = build(up, down="fp16")
    sent = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), grid([1, 2])))
    ones = np.ones(8, np.float32)
    good = (payload_record(encode(parse_spec("fp16"), ones, CodecContext(((6,), (2,))))) if up == "fp16"
            else ArrayRecord({"w": Array(np.ones((2, 3), np.float32)), "b": Array(np.ones(2, np.float32))}))
    odd = Message(content=RecordDict({"arrays": MetricRecord({"x": 1.0}), "metrics": MetricRecord({"num-examples": 1})}),
                  reply_to=sent[1])
    arrays, _ = strategy.aggregate_train(1, [reply(sent[0], good, 1), odd])
    assert arrays is not None and strategy.stats.rejected == 1


def test_download_compression_sends_one_fp16_payload_per_client():
    strategy = build("none", down="fp16")
    sent = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), grid([1, 2, 3])))
    payload = record_payload(sent[0].content["arrays"])
    assert len(payload) == 8 * 2
    assert strategy.stats.bytes_down == 3 * (16 + NPY_HEADER + 7)
    decoded = np.frombuffer(payload, dtype="<f2").astype(np.float32)
    expected = flatten({k: v.numpy() for k, v in global_arrays().items()})
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("spec", ["topk:0.01+qsgd:8", "randk:0.1+fp16", "lowrank:2"])
def test_a_compressed_strategy_chain_checkpoints_as_plain_data(spec):
    # The checkpoint holds each strategy's state, not the chain: the resumed run builds
    # the chain (with its codecs) from the run config and loads the state into it.
    from fedloom.config import parse_run_config
    from fedloom.strategies.chain import strategy_chain
    from fedloom.strategies.state import chain_state, load_chain_state

    cfg = parse_run_config({"compression": spec, "compression-down": "fp16"})
    state = chain_state(strategy_chain(cfg, 1000, 10))
    assert [s["class"] for s in state][-3:] == ["DecodingStrategy", "ValidatingStrategy", "FedAvg"]
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    load_chain_state(strategy_chain(cfg, 1000, 10), torch.load(buf, weights_only=True))


@pytest.mark.parametrize("down", ["fp16", "qsgd:4"])
def test_full_weight_uploads_under_a_lossy_download_move_from_the_exact_model(down):
    # Clients start from the lossy model they decode; with no upload codec they send full
    # weights. The server must add their updates to its exact model, not adopt the lossy
    # one: a client that adds +1 to every weight moves the exact model by exactly +1.
    from fedloom.client.compress import received_state
    from fedloom.compression.spec import parse_down_spec

    rng = np.random.default_rng(0)
    exact = ArrayRecord({"w": Array(rng.standard_normal((16, 8)).astype(np.float32))})
    like = {"w": torch.zeros(16, 8)}
    strategy = DecodingStrategy(
        FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0),
        up=parse_spec("none"), down=parse_down_spec(down), seed=1,
    )
    sent = list(strategy.configure_train(1, exact, ConfigRecord(), grid([1, 2])))
    replies = []
    for msg in sent:
        start = received_state(msg.content["arrays"], like, parse_down_spec(down))["w"].numpy()
        assert not np.array_equal(start, exact["w"].numpy())  # the download is lossy
        replies.append(reply(msg, ArrayRecord({"w": Array(start + 1.0)}), 10))
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), exact["w"].numpy() + 1.0, atol=1e-5)


def test_a_diverged_round_does_not_spoil_the_error_feedback_residual():
    # One NaN update is dropped by the server; the residual must not carry the NaN into
    # every later upload (then the client could never contribute again).
    from fedloom.client.compress import RESIDUAL_KEY, STATE_KEY, encode_update

    up, state = parse_spec("topk:0.5"), RecordDict()
    start = {"w": np.zeros(4, dtype=np.float32)}
    ctx_args = dict(state=state, seed=0, rng=np.random.default_rng(0))
    encode_update(up, start, {"w": np.array([4, 3, 2, 1], dtype=np.float32)}, **ctx_args)
    kept = state[STATE_KEY][RESIDUAL_KEY].numpy().copy()
    assert kept.tolist() == [0, 0, 2, 1]
    encode_update(up, start, {"w": np.array([np.nan, 1, 1, 1], dtype=np.float32)}, **ctx_args)
    assert state[STATE_KEY][RESIDUAL_KEY].numpy().tolist() == kept.tolist()
    record = encode_update(up, start, {"w": np.array([1, 1, 1, 1], dtype=np.float32)}, **ctx_args)
    decoded = record_payload(record)
    assert decoded and np.isfinite(state[STATE_KEY][RESIDUAL_KEY].numpy()).all()



@pytest.mark.parametrize("down", ["fp16", "qsgd:4"])
def test_a_lossy_download_sends_the_batchnorm_statistics_exact(down):
    # A small running variance flattened beside larger weights quantizes to zero, and
    # BatchNorm then divides by sqrt(eps). The statistics ride exact beside the payload.
    from fedloom.client.compress import received_state
    from fedloom.compression.spec import parse_down_spec
    from fedloom.tasks.batchnorm import BatchNorm

    model = torch.nn.Sequential(torch.nn.Linear(4, 300), BatchNorm(300))
    with torch.no_grad():
        model[0].weight.uniform_(-2.0, 2.0)
        model[1].running_var.uniform_(1e-4, 1e-2)
        model[1].running_mean.uniform_(-1e-3, 1e-3)
    exact = ArrayRecord(model.state_dict())
    strategy = build("none", down=down)
    msg, _ = strategy.configure_train(1, exact, ConfigRecord(), grid([1, 2]))
    assert list(msg.content["arrays"].keys()) == ["payload", "1.running_mean", "1.running_var"]
    got = received_state(msg.content["arrays"], model.state_dict(), parse_down_spec(down))
    assert list(got) == list(model.state_dict())
    for key in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(got[key], model.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(got["0.weight"], model[0].weight)  # the rest is lossy
    # Counted in the download's bytes: the payload and the statistics' arrays.
    statistics = sum(exact[k].numpy().nbytes for k in ("1.running_mean", "1.running_var"))
    assert strategy.stats.bytes_down == 2 * msg.content["arrays"].count_bytes()
    assert msg.content["arrays"].count_bytes() > statistics
