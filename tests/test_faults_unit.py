import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedloom.client.attacks import attackers, poison
from fedloom.client.faults import InjectedFailure, inject_faults
from fedloom.client.state import load_state, save_state


def test_poison_by_hand():
    u = np.array([1.0, -2.0, 0.5], np.float32)
    rng = np.random.default_rng(0)
    assert poison(u, "sign-flip", scale=4, rng=rng).tolist() == [-4.0, 8.0, -2.0]
    assert poison(u, "scaled", scale=10, rng=rng).tolist() == [10.0, -20.0, 5.0]
    noise = poison(np.ones(100_000, np.float32), "gaussian", scale=3, rng=rng)
    assert abs(noise.std() - 3.0) < 0.05 and abs(noise.mean()) < 0.05  # rms(u) = 1
    with pytest.raises(ValueError, match="valid: none, sign-flip, gaussian, scaled"):
        poison(u, "label-flip", scale=1, rng=rng)


def test_attackers_are_a_seeded_share():
    chosen = attackers(10, 0.2, seed=1)
    assert len(chosen) == 2 and chosen == attackers(10, 0.2, seed=1)
    assert len(attackers(10, 0.25, seed=1)) == 3 and attackers(10, 0.0, seed=1) == frozenset()


def test_fault_injection_rates():
    def fails(rate, round_):
        try:
            inject_faults(fail_rate=rate, straggler_rate=0, straggler_delay=0, seed=0,
                          server_round=round_, partition_id=3)
        except InjectedFailure:
            return True
        return False

    outcomes = [fails(0.3, r) for r in range(1000)]
    assert 0.25 < np.mean(outcomes) < 0.35
    assert outcomes == [fails(0.3, r) for r in range(1000)]  # deterministic
    assert not any(fails(0.0, r) for r in range(100))


def test_client_state_survives_a_new_process_and_rewinds_for_a_rerun(tmp_path):
    state = RecordDict({"residual": ArrayRecord({"r": Array(np.array([1.0, 2.0]))}),
                        "dp": ConfigRecord({"steps": 7})})
    save_state(state, tmp_path, server_round=3)
    state["dp"] = ConfigRecord({"steps": 9})
    save_state(state, tmp_path, server_round=4)
    save_state(state, tmp_path, server_round=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-4.pkl", "round-5.pkl"]
    # A fresh process re-running round 5 after a resume starts from round 4's state.
    fresh = RecordDict()
    assert load_state(fresh, tmp_path, server_round=5) == 4
    assert fresh["dp"]["steps"] == 9 and fresh["residual"]["r"].numpy().tolist() == [1.0, 2.0]
    # A process that already holds state keeps it.
    assert load_state(state, tmp_path, server_round=6) is None
    assert load_state(RecordDict(), tmp_path / "none", server_round=2) is None



def test_a_rerun_round_keeps_the_dp_account_of_the_run_it_replaces(tmp_path):
    # Round 5 trained and replied, then the server died before its checkpoint: the
    # re-run is a second release, so the account must count round 5's steps twice.
    state = RecordDict({"residual": ArrayRecord({"r": Array(np.array([4.0]))}),
                        "dp-account": ConfigRecord({"steps": 40})})
    save_state(state, tmp_path, server_round=4)
    state["residual"] = ArrayRecord({"r": Array(np.array([5.0]))})
    state["dp-account"] = ConfigRecord({"steps": 50})
    save_state(state, tmp_path, server_round=5)
    fresh = RecordDict()
    assert load_state(fresh, tmp_path, server_round=5, never_rewound=("dp-account",)) == 4
    assert fresh["residual"]["r"].numpy().tolist() == [4.0]  # rewound
    assert fresh["dp-account"]["steps"] == 50  # not rewound


def test_checkpointed_rng_states_include_the_client_sampler():
    from flwr.serverapp.strategy import strategy_utils

    from fedloom.server.checkpoint import restore_rng_states, rng_states
    from fedloom.server.sampling import SAMPLING_RNG, use_private_sampling_rng

    use_private_sampling_rng(5)
    assert strategy_utils.random is SAMPLING_RNG  # what Flower's sample_nodes draws from
    SAMPLING_RNG.random()
    saved = rng_states()
    expected = [SAMPLING_RNG.sample(range(100), 3) for _ in range(4)]
    use_private_sampling_rng(99)  # a resumed process starts from the seed...
    restore_rng_states(saved)  # ...and the checkpoint puts the sampler where it was
    assert [SAMPLING_RNG.sample(range(100), 3) for _ in range(4)] == expected


@pytest.mark.parametrize(
    "node_config",
    [{"partition-id": 1.9, "num-partitions": 2}, {"partition-id": True, "num-partitions": 2},
     {"partition-id": 2, "num-partitions": 2}, {"partition-id": -1, "num-partitions": 2},
     {"partition-id": "x", "num-partitions": 2}],
)
def test_a_nodes_partition_must_be_a_whole_number_in_range(node_config):
    from types import SimpleNamespace

    from fedloom.client.app import node_partition

    assert node_partition(SimpleNamespace(node_config={"partition-id": 1, "num-partitions": 2})) == (1, 2)
    with pytest.raises(ValueError, match="valid: whole numbers with 0 <= partition-id < num-partitions"):
        node_partition(SimpleNamespace(node_config=node_config))


def test_secret_files_are_owner_only_even_when_they_existed_wider(tmp_path):
    import stat

    from fedloom.privacy.files import write_private

    path = tmp_path / "key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600


SIMULATION_REASON = (  # a Ray actor's ClientApp raised; Flower's error reason, as sent
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
    "(pid=1, ip=192.0.2.2)\n  File \"client/faults.py\", line 22, in inject_faults\n"
    "    raise InjectedFailure(\nclient.faults.InjectedFailure: injected failure (fail-rate=0.3) in round 2, "
    "partition 4\n\nThe above exception was the direct cause of the following exception:\n\n"
    "ray::ClientAppActor.run()\nflwr.clientapp.client_app.ClientAppException: \n"
    "Exception ClientAppException occurred. Message: injected failure (fail-rate=0.3) in round 2, partition 4'>"
)


@pytest.mark.parametrize(("reason", "line"), [
    (SIMULATION_REASON, "InjectedFailure: injected failure (fail-rate=0.3) in round 2, partition 4"),
    ("<class 'KeyError'>:<''lr''>", "KeyError: 'lr'"),  # a SuperNode's ClientApp raised
    ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
     "Message: out of memory'>", "out of memory"),
    ("Error: Message Unavailable -\n the node is gone", "Error: Message Unavailable - the node is gone"),
])
def test_a_failed_replys_reason_is_one_line_naming_the_clients_exception(reason, line):
    from fedloom.strategies.instrumented import failure_reason

    assert failure_reason(reason) == line


def test_failed_replies_are_the_error_replies_and_the_silent_nodes(task_identity):
    from flwr.app import Message, RecordDict
    from flwr.common import Error

    from fedloom.strategies.instrumented import failed_replies

    sent = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (11, 12, 13)]
    replies = [Message(RecordDict(), reply_to=sent[0]), Message(Error(0, "<class 'ValueError'>:<'nan'>"), reply_to=sent[1])]
    failed = failed_replies("train", [11, 12, 13], replies, {12: (4, 10)})
    assert [(f["node_id"], f.get("partition_id"), f["reason"]) for f in failed] == [
        (12, 4, "ValueError: nan"), (13, None, "no reply before the round timed out"),
    ]


def test_a_resume_keeps_the_failures_of_the_rounds_it_keeps(tmp_path):
    from fedloom.server.results import FAILURES, ResultsFolder

    results = ResultsFolder(tmp_path)
    results.add_row({"round": 1})
    assert not (tmp_path / FAILURES).exists()  # written from the first failure on
    for r in (2, 3):
        results.add_row({"round": r})
        results.add_failures(r, [{"phase": "train", "node_id": 7, "reason": "boom"}])
    again = ResultsFolder(tmp_path)
    again.restore_rows([{"round": 1}, {"round": 2}])  # the checkpoint was after round 2
    again.add_failures(3, [{"phase": "evaluate", "node_id": 8, "reason": "late"}])
    lines = [json.loads(x) for x in (tmp_path / FAILURES).read_text().splitlines()]
    assert [(f["round"], f["node_id"]) for f in lines] == [(2, 7), (3, 8)]
