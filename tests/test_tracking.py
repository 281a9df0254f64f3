"""tensorboard=true: event files read back with TensorBoard's own EventAccumulator."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from fedloom.server.tracking import TensorBoardLog, scalars


def read_events(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def read_scalars(folder):
    events = read_events(folder)
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def read_hparams(folder):
    content = read_events(folder).PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return values, sorted(m.name.tag for m in experiment.metric_infos)


def test_scalars_keep_finite_numbers_only():
    row = {"round": 3, "accuracy": 0.5, "auc": float("nan"), "num_clients": 2, "flag": True, "note": "x"}
    assert scalars(row) == {"accuracy": 0.5, "num_clients": 2.0}


def test_rows_and_config_round_trip_and_resume_drops_the_rerun_rounds(tmp_path):
    log = TensorBoardLog(tmp_path, {"task": "digits", "lr": 0.05, "he": False, "seed": 7})
    for r in (1, 2, 3):
        log.add_row({"round": r, "accuracy": 0.1 * r, "loss": 2.0 / r, "bytes_up": 1000 * r})
    log.close()
    # resumed from the checkpoint of round 1: round 2 runs again, round 3 is gone
    resumed = TensorBoardLog(tmp_path, {"task": "digits", "lr": 0.05, "he": False, "seed": 7}, resume_after=1)
    resumed.add_row({"round": 2, "accuracy": 0.25, "loss": 0.9, "bytes_up": 2000})
    resumed.close()
    got = read_scalars(tmp_path)
    assert got["accuracy"] == pytest.approx({1: 0.1, 2: 0.25})
    assert got["loss"] == pytest.approx({1: 2.0, 2: 0.9}) and got["bytes_up"] == {1: 1000, 2: 2000}
    values, metrics = read_hparams(tmp_path)
    assert values == {"task": "digits", "lr": pytest.approx(0.05), "he": "false", "seed": 7}
    assert metrics == ["accuracy", "bytes_up", "loss"]


@pytest.mark.e2e
def test_tensorboard_run_writes_the_metrics_rows_and_run_config(digits_runs):
    run_dir = digits_runs[0] / "plain"  # tensorboard=True
    assert list(run_dir.glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    got = read_scalars(run_dir)
    expected = {}
    for row in rows:
        for key, value in scalars(row).items():
            expected.setdefault(key, {})[row["round"]] = value
    assert set(got) == set(expected) and {"accuracy", "loss", "train_loss", "bytes_up"} <= set(got)
    for tag, by_round in expected.items():
        assert got[tag] == pytest.approx(by_round, rel=1e-6), tag  # float32 in the event file
    values, _ = read_hparams(run_dir)
    run_config = json.loads((run_dir / "config.json").read_text())["run_config"]
    assert values["tensorboard"] == "true" and values["task"] == run_config["task"] == "digits"
    assert values["lr"] == pytest.approx(run_config["lr"]) and values["run-dir"] == str(run_dir)
    assert set(values) == set(run_config)
