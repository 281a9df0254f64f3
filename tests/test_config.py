import tomllib
from pathlib import Path

import pytest

from fedloom.config import DEFAULTS, parse_run_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_mirror_pyproject():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == DEFAULTS


def test_parse_fills_defaults_and_coerces_strings():
    cfg = parse_run_config({"lr": "0.1", "num-server-rounds": "3", "partition": "SHARDS:2"})
    assert cfg.lr == 0.1 and cfg.num_server_rounds == 3 and str(cfg.partition) == "shards:2"
    assert cfg.task == "digits" and cfg.dataset == "digits"
    assert cfg.to_run_config()["num-server-rounds"] == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "cifar"}, "unknown task 'cifar'; valid: digits"),
        ({"dataset": "svhn"}, "unknown dataset 'svhn' for task 'digits'; valid: digits"),
        ({"lr": "-1"}, "invalid lr=-1.0; valid: > 0"),
        ({"num-server-rounds": 0}, "invalid num-server-rounds=0; valid: >= 1"),
        ({"fraction-train": 1.5}, "invalid fraction-train=1.5; valid: 0 < f <= 1"),
        ({"batch-size": "many"}, "batch-size='many' is not a valid int"),
        ({"local-epochs": "one"}, "local-epochs='one' is not a valid number"),
        ({"local-epochs": 0}, "invalid local-epochs=0; valid: > 0 (fractions such as 0.5 allowed)"),
        ({"batch-size": 1.5}, "batch-size=1.5 is not a valid int"),
        ({"local-epochs": float("inf")}, "local-epochs=inf is not a valid number (finite, not true/false)"),
        ({"dp-target-epsilon": "inf"}, "dp-target-epsilon='inf' is not a valid float"),
        ({"num-server-rounds": True}, "num-server-rounds=True is not a valid int"),
        ({"seed": 2**64}, "invalid seed=18446744073709551616; valid: 0 <= seed < 2**63"),
        ({"partition": "zipf"}, "invalid partition 'zipf'"),
        ({"learning-rate": 0.1}, "unknown run-config key(s) learning-rate; valid: task"),
        ({"optimizer": "rmsprop"}, "invalid optimizer='rmsprop'; valid: sgd, adam"),
        ({"optimizer": "adam", "dp": "sample", "dp-noise": 1.0}, "not supported with dp=sample"),
    ],
)
def test_bad_values_name_the_problem(overrides, message):
    with pytest.raises(ValueError) as err:
        parse_run_config(overrides)
    assert message in str(err.value)


def test_lr_schedule_cosine_anneals_over_the_rounds_and_bad_names_fail():
    import math

    from fedloom.tasks.training import scheduled_lr

    assert [scheduled_lr(0.1, "constant", r, 4) for r in (1, 4)] == [0.1, 0.1]
    cosine = [scheduled_lr(0.1, "cosine", r, 4) for r in (1, 2, 3, 4)]
    assert cosine[0] == 0.1 and cosine[2] == pytest.approx(0.05)
    assert cosine[3] == pytest.approx(0.05 * (1 + math.cos(math.pi * 3 / 4)))
    assert all(a > b > 0 for a, b in zip(cosine, cosine[1:]))
    assert parse_run_config({"lr-schedule": "cosine"}).lr_schedule == "cosine"
    with pytest.raises(ValueError, match="invalid lr-schedule='step'; valid: constant, cosine"):
        parse_run_config({"lr-schedule": "step"})


def test_local_epochs_take_fractions_and_whole_numbers_stay_ints():
    assert parse_run_config({"local-epochs": "0.5"}).local_epochs == 0.5
    whole = parse_run_config({"local-epochs": 2.0}).to_run_config()["local-epochs"]
    assert whole == 2 and isinstance(whole, int)  # config.json keeps 2, not 2.0
