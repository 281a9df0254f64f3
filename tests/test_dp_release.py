"""Under DP, a client sends only what the accountant covers or what is public (issue 32)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedloom.client.privacy import DP_WEIGHT, private_reply_metrics, upload_weight
from fedloom.config import DPMode, parse_run_config
from fedloom.strategies.registry import check_strategy_config
from fedloom.tasks.registry import get_task, load_task_data


def test_dp_replies_keep_only_the_partition_and_the_privacy_report():
    sent = {"num-examples": 713, "train_loss": 0.42, "train_loss_initial": 1.3, "partition-id": 3,
            "num-partitions": 5, "dp-epsilon": 0.8, "dp-exhausted": 0}
    for dp in (DPMode.SAMPLE, DPMode.CLIENT):
        assert private_reply_metrics(sent, dp=dp) == {
            "num-examples": DP_WEIGHT, "partition-id": 3, "num-partitions": 5, "dp-epsilon": 0.8,
            "dp-exhausted": 0,
        }
    assert private_reply_metrics(sent, dp=DPMode.NONE) == sent
    assert upload_weight(713, dp=DPMode.SAMPLE) == upload_weight(713, dp=DPMode.CLIENT) == 1
    assert upload_weight(713, dp=DPMode.NONE) == 713


@pytest.fixture()
def train_reply(task_identity, tmp_path):
    """The metrics of one real ``client.app.train`` reply for ``run_config``."""
    from fedloom.client.app import train

    def run(run_config: dict) -> dict:
        cfg = {"task": "digits", "run-dir": str(tmp_path), **run_config}
        data = load_task_data("digits", "", "", parse_run_config(cfg).task_options())
        model = get_task("digits").build_model(data)
        if cfg.get("dp") == "sample":
            from fedloom.privacy.dp import make_dp_ready

            model = make_dp_ready(model)
        context = SimpleNamespace(run_config=cfg, state=RecordDict(),
                                  node_config={"partition-id": 0, "num-partitions": 2})
        msg = Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                          "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=1, message_type="train")
        return dict(train(msg, context).content["metrics"])

    return run


@pytest.mark.parametrize("dp", [
    {"dp": "sample", "dp-noise": 1.0},
    {"dp": "client", "dp-noise": 1.0},
])
def test_a_dp_client_sends_no_loss_and_an_equal_weight(train_reply, dp):
    plain = train_reply({})
    assert "train_loss" in plain and plain["num-examples"] > 1  # what DP must not send
    metrics = train_reply(dp)
    assert "train_loss" not in metrics
    assert metrics["num-examples"] == 1
    assert set(metrics) <= {"num-examples", "partition-id", "num-partitions", "dp-epsilon", "dp-exhausted"}


@pytest.mark.parametrize("dp", ["sample", "client"])
def test_qfedavg_is_refused_with_dp_naming_why(dp):
    cfg = parse_run_config({"strategy": "qfedavg", "dp": dp, "dp-noise": 1.0})
    with pytest.raises(ValueError, match=f"strategy 'qfedavg' does not work with dp={dp}: it weights each client by its loss"):
        check_strategy_config(cfg)


def test_the_ledger_refuses_a_client_whose_epsilon_goes_backwards_for_good():
    from fedloom.privacy.accounting import EpsilonLedger, EpsilonWentBack

    ledger = EpsilonLedger(population=2)
    ledger.record_client(1, 0, 1.0, trained=True)
    ledger.record_client(2, 0, 1.0 - 1e-12, trained=True)  # float noise is not a reset
    with pytest.raises(EpsilonWentBack, match=r"client 0 reported epsilon 0\.4 after 1: .* account was lost"):
        ledger.record_client(3, 0, 0.4, trained=True)
    with pytest.raises(EpsilonWentBack):  # a reset account that catches up is still one
        ledger.record_client(4, 0, 1.5, trained=True)
    ledger.record_client(4, 1, 0.2, trained=True)
    assert ledger.latest == {0: 1.0, 1: 0.2}


def test_a_backwards_epsilon_is_left_out_and_reported_in_failures():
    from unittest.mock import Mock

    from flwr.app import MetricRecord

    from fedloom.privacy.accounting import EpsilonLedger
    from fedloom.strategies.delegating import rejections
    from fedloom.strategies.instrumented import rejected_replies
    from fedloom.strategies.private import SampleDPStrategy

    inner = Mock()
    inner.aggregate_train.return_value = (ArrayRecord(), MetricRecord())
    strategy = SampleDPStrategy(inner, ledger=EpsilonLedger(population=2), target_epsilon=0.0)

    def reply(node: int, pid: int, eps: float) -> Mock:
        msg = Mock(spec=Message)
        msg.has_error.return_value = False
        msg.content = RecordDict({"arrays": ArrayRecord(), "metrics": MetricRecord(
            {"num-examples": 1, "partition-id": pid, "dp-epsilon": eps, "dp-exhausted": 0})})
        msg.metadata.src_node_id = node
        return msg

    strategy.aggregate_train(1, [reply(7, 0, 2.0), reply(8, 1, 1.0)])
    strategy.aggregate_train(2, [reply(7, 0, 0.5), reply(8, 1, 1.5)])
    (_, passed), _ = inner.aggregate_train.call_args
    assert [m.metadata.src_node_id for m in passed] == [8]
    (failure,) = rejected_replies(rejections(strategy), {7: (0, 2)})
    assert failure["node_id"] == 7 and failure["partition_id"] == 0
    assert failure["reason"].startswith("rejected: client 0 reported epsilon 0.5 after 2")


def test_the_server_refuses_an_he_folder_with_a_secret_key(tmp_path):
    from fedloom.strategies.encrypted import EncryptedFedAvg

    (tmp_path / "secret.ctx").write_bytes(b"a secret key")
    with pytest.raises(ValueError, match="secret.ctx is in the server's he-dir: the server must hold public.ctx only"):
        EncryptedFedAvg(he_dir=str(tmp_path), num_parameters=10, max_weight=10)

