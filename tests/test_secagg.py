"""Secure aggregation (SecAgg+): kernels, the protocol over an in-process grid, config checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from cryptography.fernet import InvalidToken
from flwr.app import Context, Message, RecordDict

from fedloom.client import secagg as client
from fedloom.client.state import load_state, save_state
from fedloom.compression.flat import flatten
from fedloom.privacy import secagg as sa
from fedloom.config import parse_run_config
from fedloom.protocol import secagg as P
from fedloom.strategies.instrumented import payload_bytes
from fedloom.strategies.secagg import SecureAggregationFailed
from fedloom.tasks.registry import client_split, get_task, load_task_data
from fedloom.tasks.training import train_local

from secagg_harness import LocalGrid, build, run_round

NODES = [101, 202, 303, 404, 505]


pytestmark = pytest.mark.usefixtures("task_identity")  # Messages need a run identity (conftest.py)


# -- kernels ------------------------------------------------------------------------


def test_threshold_modulus_and_bound_by_hand():
    assert [sa.threshold_count(0.6, n) for n in (2, 5, 10, 50)] == [2, 3, 6, 30]
    assert sa.threshold_count(0.1, 5) == 2  # never a single share
    assert sa.modulus_bits(16, 60_000) == 32  # 16 + ceil(log2(60001))
    assert sa.wire_dtype(32) == np.uint32 and sa.wire_dtype(33) == np.uint64
    assert sa.error_bound(16, 2.0) == 4.0 / 65536
    with pytest.raises(ValueError, match="secagg-bits <= 23"):
        sa.modulus_bits(30, 2**40)  # 30 + 41 bits do not fit uint64


def test_pairwise_masks_cancel_and_own_masks_come_off():
    q = [np.array([0, 5, 65536], np.uint64), np.array([7, 0, 1], np.uint64)]
    pair, own = os.urandom(32), [os.urandom(32), os.urandom(32)]
    ups = [sa.masked_upload(q[i], w, own_seed=own[i], pair_seeds={[2, 1][i]: pair}, node_id=i + 1, mod_bits=20)
           for i, w in enumerate((3, 2))]
    assert all((u < 2**20).all() for u in ups)
    total = sa.unmask_sum(ups, own_seeds=own, dropped_pairs=[], mod_bits=20)
    assert total.tolist() == [3 * 0 + 2 * 7, 3 * 5, 3 * 65536 + 2 * 1]
    # mean level (14 / 5) * (2 * 2 / 65536) - 2, by hand
    assert sa.mean_update(total, 5, bits=16, clip=2.0)[0] == pytest.approx(14 / 5 * 4 / 65536 - 2)


# -- the protocol ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_updates():
    """Updates of five digits clients after one local epoch from the same initial model."""
    task, data = get_task("digits"), load_task_data("digits", "data", "digits", None)
    torch.manual_seed(0)
    start = {k: v.numpy().copy() for k, v in task.build_model(data).state_dict().items()}
    updates, weights = {}, {}
    for pid, node in enumerate(NODES):
        split = client_split("digits", "data", "digits", "iid", len(NODES), 0, pid, None)
        model = task.build_model(data)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in start.items()})
        train_local(model, task, split, epochs=1, batch_size=16, lr=0.05, seed=pid)
        updates[node] = flatten({k: v.numpy() for k, v in model.state_dict().items()}) - flatten(start)
        weights[node] = len(split)
    return start, updates, weights


def weighted_mean(updates, weights, nodes, clip):
    return sum(weights[n] * np.clip(updates[n], -clip, clip).astype(np.float64) for n in nodes) / sum(weights[n] for n in nodes)


def test_aggregate_is_the_weighted_mean_within_the_quantization_bound(real_updates):
    start, updates, weights = real_updates
    for bits, clip in ((16, 2.0), (8, 0.05)):  # 0.05 clips some coordinates: the bound holds for the clipped ones
        aggregate, _ = run_round(build(bits=bits, clip=clip), LocalGrid(updates, weights), start)
        got = flatten({k: v.numpy() for k, v in aggregate.items()}) - flatten(start)
        error = np.abs(got - weighted_mean(updates, weights, NODES, clip)).max()
        assert error <= sa.error_bound(bits, clip) + 1e-6  # float32 model
    assert error > sa.error_bound(bits, clip) / 20  # 8 bits: the rounding is visible, not exact


def test_uploads_look_uniform_and_relayed_shares_are_sealed(real_updates):
    start, updates, weights = real_updates
    grid = LocalGrid(updates, weights)
    strategy = build()
    _, uploads = run_round(strategy, grid, start)
    mod = 2**sa.modulus_bits(16, 10_000)
    for msg in uploads:
        masked = msg.content["arrays"][P.MASKED].numpy().astype(np.float64)
        true = updates[msg.metadata.src_node_id]
        assert abs(np.corrcoef(masked, true)[0, 1]) < 0.05  # 9,610 values: ~0 +- 0.01
        assert abs(masked.mean() / mod - 0.5) < 0.02  # uniform on [0, mod)
    # Every share ciphertext the server relays opens only with the pair's key.
    relayed = [m for m in grid.seen if m.metadata.message_type == "train"]
    src, ctxt = relayed[0].content[P.RECORD][P.SOURCES][0], relayed[0].content[P.RECORD][P.CIPHERTEXTS][0]
    with pytest.raises(InvalidToken):
        sa.open_shares(sa.pair_key(*sa.new_key_pair()[:1], sa.new_key_pair()[1]), src, 0, ctxt)
    # No message to or from the server holds a client's mask seed or secret key.
    secrets = [ctx.state.config_records.get(client.STATE_KEY) for ctx in grid.contexts.values()]
    assert all(s is None for s in secrets)  # unmask consumed them; check the copies on the wire instead
    seen = b"".join(v for m in [*grid.seen, *strategy.inner.extra_up] for r in m.content.config_records.values()
                    for x in r.values() for v in (x if isinstance(x, list) else [x]) if isinstance(v, bytes))
    assert b"PRIVATE KEY" not in seen


def test_two_of_five_dropping_after_sharing_keys_still_give_the_survivors_sum(real_updates):
    start, updates, weights = real_updates
    strategy = build()
    aggregate, _ = run_round(strategy, LocalGrid(updates, weights, fail={202: "train", 404: "train"}), start)
    got = flatten({k: v.numpy() for k, v in aggregate.items()}) - flatten(start)
    survivors = [101, 303, 505]
    assert np.abs(got - weighted_mean(updates, weights, survivors, 2.0)).max() <= sa.error_bound(16, 2.0) + 1e-6
    assert sorted(f["node_id"] for f in strategy.stats.failed) == [202, 404]
    # and one survivor silent at unmask: the other two still hold 3 shares of every secret (its own count)
    strategy = build(threshold=0.4)
    aggregate, _ = run_round(strategy, LocalGrid(updates, weights, fail={202: "train", 303: P.UNMASK}), start)
    got = flatten({k: v.numpy() for k, v in aggregate.items()}) - flatten(start)
    assert np.abs(got - weighted_mean(updates, weights, [101, 303, 404, 505], 2.0)).max() <= 1e-4


def test_three_of_five_dropping_with_threshold_three_fails_the_round_cleanly(real_updates):
    start, updates, weights = real_updates
    strategy = build(threshold=0.6)  # 3 of 5
    with pytest.raises(SecureAggregationFailed, match="2 of 5 clients left, 3 .* needed"):
        run_round(strategy, LocalGrid(updates, weights, fail={n: "train" for n in (202, 303, 404)}), start)
    strategy = build()
    with pytest.raises(SecureAggregationFailed, match="at setup"):
        run_round(strategy, LocalGrid(updates, weights, fail={n: P.SETUP for n in (202, 303, 404)}), start)
    assert sorted(f["node_id"] for f in strategy.stats.failed) == [202, 303, 404]  # reported, phase named
    assert {f["phase"] for f in strategy.stats.failed} == {"secagg setup"}


def test_extra_messages_are_counted_in_bytes_as_serialized(real_updates):
    start, updates, weights = real_updates
    grid = LocalGrid(updates, weights)
    strategy = build()
    run_round(strategy, grid, start)
    keys_down = sum(len(v) for m in grid.seen if m.metadata.message_type == P.SHARE_KEYS
                    for k in (P.PK1S, P.PK2S) for v in m.content[P.RECORD][k])
    relayed = sum(len(v) for m in grid.seen if m.metadata.message_type == "train" for v in m.content[P.RECORD][P.CIPHERTEXTS])
    arrays_down = sum(payload_bytes(RecordDict({"arrays": m.content["arrays"]})) for m in grid.seen
                      if m.metadata.message_type == "train")
    assert strategy.stats.bytes_down == arrays_down + keys_down + relayed
    assert relayed > 0 and keys_down > 0
    masked = 5 * (4 * 9610 + 128)  # uint32 per parameter: 16 + 11 bits (1,437 examples)
    assert strategy.stats.bytes_up > masked + relayed  # keys, the shares up twice (sealed, then to unmask)


def test_a_client_never_reveals_both_secrets_of_one_client():
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    from flwr.app import ConfigRecord

    ctx.state.config_records[client.STATE_KEY] = ConfigRecord({
        P.ROUND: 1, "stage": "masked", P.THRESHOLD: 2, "seed-share-of": [1, 2], "seed-shares": [b"a", b"b"],
        "sk-share-of": [1, 2], "sk-shares": [b"c", b"d"],
    })
    msg = Message(RecordDict({P.RECORD: ConfigRecord({P.ROUND: 1, P.ACTIVE: [1, 2], P.DEAD: [2]})}),
                  dst_node_id=1, message_type=P.UNMASK)
    with pytest.raises(ValueError, match="both alive and dropped"):
        client.unmask(msg, ctx)


def test_the_rounds_secrets_stay_off_disk(tmp_path):
    from flwr.app import ConfigRecord

    state = RecordDict({client.STATE_KEY: ConfigRecord({"sk1": b"secret"}), "other": ConfigRecord({"x": 1})})
    save_state(state, tmp_path, 1, transient=(client.STATE_KEY,))
    assert b"secret" not in (tmp_path / "round-1.pkl").read_bytes()
    fresh = RecordDict({client.STATE_KEY: ConfigRecord({"sk1": b"new"})})  # setup ran before train
    assert load_state(fresh, tmp_path, 2, transient=(client.STATE_KEY,)) == 1 and "other" in fresh


@pytest.mark.parametrize("keys, message", [
    ({"he": True}, "--secagg does not work with --he"),
    ({"compression": "topk:0.1"}, r"codecs that work with --secagg: none, randk:FRACTION"),
    ({"compression": "qsgd:8"}, "qsgd"),
    ({"compression-down": "fp16"}, "compression-down=fp16 does not work with --secagg"),
    ({"dp": "client", "dp-noise": 1.0}, "needs dp-clipping-side=client and dp-clipping=fixed"),
    ({"secagg-bits": 31}, "valid: 1..30"),
    ({"secagg-threshold": 1.5}, "valid: 0 < t <= 1"),
    ({"secagg-neighbours": 1}, "invalid secagg-neighbours=1; valid: 0"),
])
def test_combinations_secagg_cannot_honour_are_refused_with_one_line(keys, message):
    with pytest.raises(ValueError, match=message):
        parse_run_config({"secagg": True, **keys})


@pytest.mark.parametrize("strategy", ["krum", "fedmedian", "qfedavg", "fedtrimmedavg", "bulyan"])
def test_strategies_that_need_single_updates_are_refused_by_capability(strategy):
    from fedloom.strategies.registry import check_strategy_config

    with pytest.raises(ValueError, match=f"strategy '{strategy}' does not work with --secagg: the server "
                                         "learns only the weighted sum.*with --secagg: .*fedadam.*fedavg"):
        check_strategy_config(parse_run_config({"secagg": True, "strategy": strategy}))


def test_combinations_that_work_are_accepted():
    from fedloom.strategies.registry import check_strategy_config

    cfg = parse_run_config({"secagg": True, "strategy": "fedadam", "compression": "randk:0.5"})
    check_strategy_config(cfg)
    assert cfg.secagg and str(cfg.compression) == "randk:0.5"
    cfg = parse_run_config({"secagg": True, "dp": "client", "dp-clipping-side": "client", "dp-noise": 1.0})
    assert cfg.dp == "client"


def test_distributed_dp_noise_comes_from_the_clients_at_the_accounted_level(real_updates):
    from flwr.serverapp.strategy import FedAvg

    from fedloom.privacy.accounting import EpsilonLedger
    from fedloom.strategies.instrumented import InstrumentedStrategy
    from fedloom.strategies.private import ClientDPStrategy
    from fedloom.strategies.secagg import SecAggStrategy
    from fedloom.strategies.validation import ValidatingStrategy

    start, updates, weights = real_updates
    dp = ClientDPStrategy(
        FedAvg(fraction_evaluate=0.0, min_train_nodes=5, min_available_nodes=5), ledger=EpsilonLedger(),
        clipping="fixed", side="client", noise_multiplier=1.0, clipping_norm=1.0, target_epsilon=0.0,
        delta=1e-5, num_rounds=3, fraction_train=1.0, min_train_nodes=5, min_available_nodes=5,
    )
    secure = SecAggStrategy(ValidatingStrategy(dp, 10_000), threshold=0.6, bits=16, clip=5.0,
                            max_weight=10_000, equal_weights=True)
    aggregate, _ = run_round(InstrumentedStrategy(secure, min_replies=5), LocalGrid(updates, weights), start)
    assert secure.noise_std == pytest.approx(1.0 / np.sqrt(3))  # z C / sqrt(t), t = 3 of 5
    noise = flatten({k: v.numpy() for k, v in aggregate.items()}) - flatten(start) - weighted_mean(
        updates, {n: 1 for n in NODES}, NODES, 5.0)
    # the mean of 5 clients' shares: std sqrt(5) * (1 / sqrt(3)) / 5 = 0.258 (central: 1 / 5 = 0.2)
    assert noise.std() == pytest.approx(np.sqrt(5 / 3) / 5, rel=0.05)
    assert dp.releases == 1 and dp.epsilon_after(1) > 0  # accounted as central DP-FedAvg
    too_tight = SecAggStrategy(ValidatingStrategy(dp, 10_000), threshold=0.6, bits=16, clip=2.0,
                               max_weight=10_000, equal_weights=True)
    with pytest.raises(ValueError, match="valid: secagg-clip >= 4.46"):
        run_round(InstrumentedStrategy(too_tight, min_replies=5), LocalGrid(updates, weights), start)


def test_upload_vector_clips_for_dp_and_keeps_randk_residuals():
    from fedloom.compression.spec import parse_spec

    update = np.array([3.0, 4.0, 0.0, 0.0], np.float32)
    assert np.linalg.norm(client.upload_vector(update, clipping_norm=1.0)) == pytest.approx(1.0)
    start = {"w": np.zeros(4, np.float32)}
    state = RecordDict()
    sent = client.upload_vector(update, up=parse_spec("randk:0.5"), start=start, state=state, seed=3)
    assert sent.size == 2 and "compression" in state  # the unsent half waits for the next round


def test_secagg_plus_neighbourhoods_unmask_with_dropouts():
    from fedloom.strategies.secagg import neighbourhoods

    graph = neighbourhoods(list(range(12)), 4, np.random.default_rng(0))
    assert all(len(g) == 5 and n in g for n, g in graph.items())  # 2 on either side, itself
    assert all(n in graph[m] for n, g in graph.items() for m in g)  # symmetric
    assert neighbourhoods([1, 2, 3], 4, np.random.default_rng(0)) == {n: {1, 2, 3} for n in (1, 2, 3)}
    rng = np.random.default_rng(1)
    nodes = list(range(11, 23))
    updates = {n: rng.normal(0, 0.05, 300).astype(np.float32) for n in nodes}
    weights = {n: int(rng.integers(10, 50)) for n in nodes}
    start = {"w": np.zeros(300, np.float32)}
    strategy = build(neighbours=4, threshold=0.6)  # 3 of each 5-client neighbourhood
    grid = LocalGrid(updates, weights, fail={14: "train"})
    aggregate, _ = run_round(strategy, grid, start)
    survivors = [n for n in nodes if n != 14]
    assert np.abs(aggregate["w"].numpy() - weighted_mean(updates, weights, survivors, 2.0)).max() <= sa.error_bound(16, 2.0)
    shared = [m for m in grid.seen if m.metadata.message_type == P.SHARE_KEYS]
    assert all(len(m.content[P.RECORD][P.NODE_IDS]) == 5 for m in shared)  # keys of the neighbourhood only


def test_randk_masks_the_rounds_shared_coordinates_only():
    rng = np.random.default_rng(2)
    updates = {n: rng.normal(0, 0.05, 400).astype(np.float32) for n in NODES}
    weights = {n: 10 for n in NODES}
    strategy = build(randk=0.25)
    aggregate, uploads = run_round(strategy, LocalGrid(updates, weights, randk=0.25), {"w": np.zeros(400, np.float32)})
    got = aggregate["w"].numpy()
    assert all(m.content["arrays"][P.MASKED].numpy().size == 100 for m in uploads)
    sent = got != 0
    assert sent.sum() == 100  # the others keep the global value
    assert np.abs(got[sent] - weighted_mean(updates, weights, NODES, 2.0)[sent]).max() <= sa.error_bound(16, 2.0)


def test_distributed_dp_with_a_clip_that_would_cut_the_noise_is_refused_at_start_up(capsys, tmp_path):
    from fedloom import run_sim

    args = ["--num-clients", "3", "--rounds", "1", "--secagg", "--dp", "client", "--run-dir", str(tmp_path),
            "--run-config", "dp-clipping-side=client dp-noise=1.0"]
    assert run_sim.main(args) == 2
    # 3 clients, threshold 2: noise share 1 / sqrt(2) per client; 1 + 6 * 0.707 = 5.24
    assert "valid: secagg-clip >= 5.24" in capsys.readouterr().err


def test_a_client_refuses_a_server_that_lowers_the_threshold_or_drops_the_noise():
    from flwr.app import ConfigRecord

    def setup_message(threshold: int, noise: float) -> Message:
        record = ConfigRecord({P.ROUND: 1, P.THRESHOLD: threshold, P.NUM_CLIENTS: 5, P.BITS: 16, P.CLIP: 2.0,
                               P.MOD_BITS: 27, P.EQUAL_WEIGHTS: False, P.NOISE_STD: noise})
        return Message(RecordDict({P.RECORD: record}), dst_node_id=1, message_type=P.SETUP)

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="distributed DP noise, but the server set none"):
        client.setup(setup_message(3, 0.0), ctx, noise=True)
    keys = [sa.new_key_pair()[1] for _ in range(10)]
    reply = client.setup(setup_message(2, 0.0), ctx, min_threshold=0.6)
    keys[0], keys[5] = reply.content[P.RECORD][P.PK1], reply.content[P.RECORD][P.PK2]
    share = Message(RecordDict({P.RECORD: ConfigRecord({P.ROUND: 1, P.NODE_IDS: [1, 2, 3, 4, 5],
                                                         P.PK1S: keys[:5], P.PK2S: keys[5:]})}),
                    dst_node_id=1, message_type=P.SHARE_KEYS)
    with pytest.raises(ValueError, match="asks for 2 shares of 5 .* fewer than secagg-threshold=0.6"):
        client.share_keys(share, ctx)
