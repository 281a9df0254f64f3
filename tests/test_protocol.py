"""The wire protocol: Flower's conventions both ways, extra reports only when asked,
training settings from the message first, unknown run-config keys tolerated by the client."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedloom.client import notices
from fedloom.client.app import evaluation_metrics, train
from fedloom.client.settings import known_keys, round_settings
from fedloom.protocol import keys, requests
from fedloom.protocol.training import TrainSettings, settings_from_config
from fedloom.config import parse_run_config
from fedloom.strategies.train_settings import TrainSettingsStrategy
from fedloom.strategies.validation import check_train_reply, layout_of
from fedloom.tasks.base import TaskOptions
from fedloom.tasks.pointcloud import PointCloudTask
from fedloom.tasks.registry import get_task, load_task_data

FALLBACK = TrainSettings(lr=0.05, local_epochs=1, batch_size=16)


def test_flowers_conventions_are_the_names_on_the_wire():
    assert (keys.ARRAYS, keys.CONFIG, keys.METRICS, keys.NUM_EXAMPLES) == ("arrays", "config", "metrics", "num-examples")
    strategy = FedAvg()  # the defaults a stock Flower strategy talks with
    assert (strategy.arrayrecord_key, strategy.configrecord_key, strategy.weighted_by_key) == (
        keys.ARRAYS, keys.CONFIG, keys.NUM_EXAMPLES)


def test_settings_in_the_message_win_and_the_differences_are_named():
    settings, differences = settings_from_config({"lr": 0.1, "batch-size": 16}, FALLBACK)
    assert settings == TrainSettings(lr=0.1, local_epochs=1, batch_size=16)  # local-epochs: run config's
    assert differences == ["lr=0.1 (run config: 0.05)"]
    assert settings_from_config({}, FALLBACK) == (FALLBACK, [])
    assert settings_from_config({"local-epochs": 0.5}, FALLBACK)[0].local_epochs == 0.5
    assert settings_from_config({"local-epochs": 2.0}, FALLBACK)[0].local_epochs == 2


@pytest.mark.parametrize(("config", "message"), [
    ({"lr": 0.0}, r"train config lr=0.0 is not a valid learning rate; valid: a number > 0"),
    ({"lr": "fast"}, r"train config lr='fast'"),
    ({"batch-size": 2.5}, r"train config batch-size=2.5 is not valid; valid: a whole number >= 1"),
    ({"batch-size": True}, r"batch-size=True"),
    ({"local-epochs": -1}, r"local-epochs=-1 is not valid; valid: a number > 0"),
])
def test_bad_settings_in_the_message_are_one_clear_error(config, message):
    with pytest.raises(ValueError, match=message):
        settings_from_config(config, FALLBACK)


def test_the_fedloom_server_sends_each_rounds_resolved_settings(task_identity):
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    cfg = parse_run_config({"lr-schedule": "cosine", "num-server-rounds": 4, "local-epochs": 0.5})
    strategy = TrainSettingsStrategy(FedAvg(), lr=cfg.lr, lr_schedule=cfg.lr_schedule, num_rounds=4,
                                     local_epochs=cfg.local_epochs, batch_size=cfg.batch_size)
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    sent = {}
    for server_round in (1, 3):
        config = next(iter(strategy.configure_train(server_round, arrays, ConfigRecord({"x": 1}), grid))).content["config"]
        sent[server_round] = dict(config)
    # digits: the task's lr 0.05 and batch size 16, resolved; cosine: 0.05 * (1 + cos(pi * 2/4)) / 2.
    assert sent[1] == {"x": 1, "lr": 0.05, "local-epochs": 0.5, "batch-size": 16, "server-round": 1}
    assert sent[3]["lr"] == pytest.approx(0.025) and sent[3]["server-round"] == 3
    # The fedloom client computes the same from its run config: nothing to warn about.
    assert settings_from_config(sent[3], round_settings(cfg, {"server-round": 3}))[1] == []


def test_reports_are_asked_for_by_name():
    config = requests.ask(requests.PARTITION, requests.STATISTICS)
    assert config == {"fedloom-report": ["partition", "statistics"]}
    assert requests.asked(config, requests.STATISTICS) and not requests.asked(config, requests.PRIVACY)
    assert not requests.asked({}, requests.PARTITION)
    with pytest.raises(ValueError, match="unknown report.*everything; valid: partition, privacy, statistics"):
        requests.ask("everything")


def test_evaluation_statistics_travel_only_when_asked():
    task = PointCloudTask().configure(TaskOptions())
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = evaluation_metrics(task, logits, labels, 0.5)
    assert set(plain) == {"accuracy", "mean_class_accuracy", "loss", "num-examples"}
    assert all(isinstance(v, (int, float)) for v in plain.values())  # what a stock strategy averages
    asked = evaluation_metrics(task, logits, labels, 0.5, statistics=True)
    assert {"stat.class_correct", "stat.class_total"} <= set(asked)


def client_reply(run_config, config, arrays):
    context = SimpleNamespace(run_config=run_config, state=RecordDict(),
                              node_config={"partition-id": 0, "num-partitions": 2})
    msg = Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(config)}),
                  dst_node_id=1, message_type="train")
    return train(msg, context).content


@pytest.fixture()
def digits_arrays():
    torch.manual_seed(0)
    model = get_task("digits").build_model(load_task_data("digits", "unused", "digits"))
    return ArrayRecord(model.state_dict())


def test_the_client_trains_with_the_messages_settings_and_reports_only_scalars(tmp_path, digits_arrays, task_identity):
    foreign = {"run-dir": str(tmp_path), "learning-rate": 0.3, "num-server-rounds": 3}  # another app's key
    notices._GIVEN.discard("unknown-run-config")
    from_message = client_reply(foreign, {"server-round": 1, "lr": 0.2, "batch-size": 32}, digits_arrays)
    from_run_config = client_reply({"run-dir": str(tmp_path), "lr": 0.2, "batch-size": 32},
                                   {"server-round": 1}, digits_arrays)
    assert "unknown-run-config" in notices._GIVEN  # warned once; later calls stay quiet
    assert not notices.warn_once("unknown-run-config", "again")
    a, b = (c["arrays"].to_torch_state_dict() for c in (from_message, from_run_config))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the message's lr and batch size were used
    assert set(from_message["metrics"]) == {"num-examples", "train_loss"}  # a stock strategy's fare
    asked = client_reply({"run-dir": str(tmp_path)}, {"server-round": 1, **requests.ask(requests.PARTITION)},
                         digits_arrays)
    assert asked["metrics"]["partition-id"] == 0 and asked["metrics"]["num-partitions"] == 2


def test_unknown_keys_are_left_out_by_the_client_and_refused_by_the_server():
    notices._GIVEN.discard("unknown-run-config")
    assert known_keys({"lr": 0.1, "learning-rate": 0.1, "zzz": 1}) == {"lr": 0.1}
    assert "unknown-run-config" in notices._GIVEN
    with pytest.raises(ValueError, match="unknown run-config key"):
        parse_run_config({"learning-rate": 0.1})


def test_validation_bounds_num_examples_by_the_config_not_the_servers_data():
    arrays = ArrayRecord({"w": Array(np.ones(2, np.float32))})
    big = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 50_000})})
    cfg = parse_run_config({})  # digits: the server's own training set has 1,437 examples
    assert check_train_reply(big, layout_of(arrays), max_examples=cfg.max_num_examples) is None
    tight = parse_run_config({"max-num-examples": 1000})
    assert "num-examples=50000 outside [1, 1000]" in check_train_reply(big, layout_of(arrays), max_examples=1000)
    assert tight.max_num_examples == 1000
    with pytest.raises(ValueError, match=r"invalid max-num-examples=0; valid: >= 1"):
        parse_run_config({"max-num-examples": 0})
