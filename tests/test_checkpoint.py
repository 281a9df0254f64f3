"""Checkpoints are plain-data state_dicts: they load with weights_only=True and resume exactly."""

from __future__ import annotations

import io
import json
import pickle
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvgM

from fedloom.server.checkpoint import CHECKPOINT, CheckpointError, checkpoint_payload, load_checkpoint
from fedloom.strategies.state import from_plain, load_strategy_state, strategy_state, to_plain


def _round(strategy, grid, start: ArrayRecord, value: float) -> ArrayRecord:
    sent = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    trained = ArrayRecord({"w": Array(np.full(4, value, np.float32))})
    replies = [Message(content=RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 3})}),
                       reply_to=m) for m in sent]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


@pytest.mark.parametrize("make", [
    lambda: FedAdam(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2, eta=0.1),
    lambda: FedAvgM(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2, server_momentum=0.9),
])
def test_flower_strategy_moments_survive_a_weights_only_round_trip(make, task_identity):
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    start = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    straight = make()
    after_one = _round(straight, grid, start, 1.0)
    buf = io.BytesIO()
    torch.save(strategy_state(straight), buf)
    buf.seek(0)
    resumed = make()
    load_strategy_state(resumed, torch.load(buf, weights_only=True, map_location="cpu"))
    # Second round: same moments (FedAdam m_t/v_t, FedAvgM momentum), same model, bit for bit.
    expected = _round(straight, grid, after_one, 2.0)
    got = _round(resumed, grid, after_one, 2.0)
    np.testing.assert_array_equal(got["w"].numpy(), expected["w"].numpy())
    fresh = _round(make(), grid, after_one, 2.0)  # without the state it differs
    assert not np.array_equal(fresh["w"].numpy(), expected["w"].numpy())


def test_plain_data_keeps_dtypes_and_refuses_objects():
    value = {"a": np.arange(3, dtype=np.float64), "b": [np.int64(4), "x", None],
             "r": ArrayRecord({"k": Array(np.ones(2, np.uint8))})}
    back = from_plain(to_plain(value))
    assert back["a"].dtype == np.float64 and back["b"] == [4, "x", None]
    assert back["r"]["k"].numpy().tolist() == [1, 1]
    with pytest.raises(TypeError, match="not plain data"):
        to_plain({"f": object()})


def test_a_checkpoint_loads_without_unpickling_and_an_old_pickled_one_is_refused(tmp_path):
    payload = checkpoint_payload(server_round=3, arrays={"w": np.ones(2, np.float32)},
                                 strategy=[{"class": "FedAvg", "state": {}}], rows=[{"round": 1}])
    (tmp_path / CHECKPOINT).write_bytes(payload)
    saved = load_checkpoint(tmp_path)
    assert saved["round"] == 3 and saved["arrays"]["w"].dtype == np.float32
    # The format before state_dicts: the strategy chain pickled, numpy arrays.
    buf = io.BytesIO()
    torch.save({"round": 3, "arrays": {"w": np.ones(2)}, "strategy": pickle.dumps(Mock)}, buf)
    (tmp_path / CHECKPOINT).write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a plain-data checkpoint"):
        load_checkpoint(tmp_path)


def test_resume_refuses_an_old_checkpoint_with_one_line(tmp_path, capsys):
    from fedloom import run_sim

    (tmp_path / "config.json").write_text(json.dumps({"run_config": {}, "num_clients": 2}))
    buf = io.BytesIO()
    torch.save({"round": 1, "strategy": pickle.dumps(Mock)}, buf)
    (tmp_path / CHECKPOINT).write_bytes(buf.getvalue())
    assert run_sim.main(["--resume", str(tmp_path)]) == 2
    assert "not a plain-data checkpoint" in capsys.readouterr().err
