"""Per-task defaults: run-config keys left at ``auto`` take the task's best measured values."""

import re
from pathlib import Path
from types import MappingProxyType

import pytest

from fedloom.config import DEFAULTS, parse_run_config
from fedloom.config.load import task_default_choices
from fedloom.tasks.base import Task
from fedloom.tasks.defaults import auto_keys, check_task_defaults, defaults_table, is_auto
from fedloom.tasks.digits import DigitsTask
from fedloom.tasks.registry import get_task, task_names

ROOT = Path(__file__).resolve().parents[1]


def test_the_run_config_table_says_auto_for_exactly_the_task_default_keys():
    from fedloom.config import KEYS
    from fedloom.config.keys import TASK_AUTO

    assert sorted(k.name for k in KEYS if k.auto == TASK_AUTO) == sorted(auto_keys())
    assert all(DEFAULTS[k] == "auto" for k in auto_keys())
    for name in task_names():
        check_task_defaults(get_task(name))  # every key, the base's types


def test_pointcloud_defaults_are_the_modelnet10_benchmarks_best_row():
    cfg = parse_run_config({"task": "pointcloud"})
    assert (cfg.optimizer, cfg.lr, cfg.lr_schedule, cfg.batch_size, cfg.weight_decay) == ("adam", 0.001, "cosine", 8, 1e-4)
    assert (cfg.pointnet_norm, cfg.pointnet_transforms, cfg.model_width) == ("batch", "none", 0.5)
    assert (cfg.augment_rotation, cfg.logit_adjustment, cfg.freeze_classifier, cfg.num_points) == (0.0, 1.0, True, 1024)
    assert task_default_choices({"task": "pointcloud"}, cfg)["optimizer"] == {"value": "adam", "why": "pointcloud's default"}


def test_medmnist_defaults_are_breastmnist_run_l():
    cfg = parse_run_config({"task": "medmnist"})
    assert (cfg.resnet_norm, cfg.model_width, cfg.augment_images, cfg.local_epochs) == ("batch", 0.5, True, 2)
    assert (cfg.optimizer, cfg.lr, cfg.lr_schedule, cfg.weight_decay, cfg.batch_size) == ("sgd", 0.02, "cosine", 5e-4, 32)


def test_dp_sample_picks_what_dp_sgd_allows_and_says_why():
    private = {"task": "pointcloud", "dp": "sample", "dp-noise": 1.0}
    cfg = parse_run_config(private)
    assert (cfg.pointnet_norm, cfg.optimizer, cfg.lr, cfg.logit_adjustment) == ("group", "sgd", 0.01, 0.0)
    why = task_default_choices(private, cfg)["pointnet-norm"]["why"]
    assert why.startswith("dp=sample: group instead of pointcloud's batch (BatchNorm mixes the examples")
    assert parse_run_config({"task": "medmnist", "dp": "sample", "dp-noise": 1.0}).resnet_norm == "group"
    # dp=client allows BatchNorm and Adam: the task's usual defaults
    assert parse_run_config({"task": "pointcloud", "dp": "client", "dp-noise": 1.0}).pointnet_norm == "batch"
    # an explicit choice is the user's: still refused with DP-SGD, as before
    with pytest.raises(ValueError, match="pointnet-norm=batch does not work with dp=sample"):
        parse_run_config({"task": "pointcloud", "pointnet-norm": "batch", "dp": "sample", "dp-noise": 1.0})


def test_explicit_values_and_the_old_zero_sentinels_keep_working():
    given = {"task": "pointcloud", "lr": "0.01", "optimizer": "sgd", "pointnet-norm": "group"}
    cfg = parse_run_config(given)
    assert (cfg.lr, cfg.optimizer, cfg.pointnet_norm) == (0.01, "sgd", "group")
    chosen = task_default_choices(given, cfg)
    assert not {"lr", "optimizer", "pointnet-norm"} & set(chosen) and "batch-size" in chosen
    with pytest.warns(FutureWarning):
        old = parse_run_config({"task": "digits", "lr": 0, "batch-size": "0"})  # before auto: 0 = the task's
    assert (old.lr, old.batch_size) == (0.05, 16)
    assert parse_run_config({"lr": "AUTO", "local-epochs": "Auto"}).lr == 0.05
    assert is_auto("lr", "0.0") and not is_auto("lr", "0.1") and not is_auto("weight-decay", 0)
    with pytest.raises(ValueError, match=r"lr='fast' is not a valid float .*, or auto"):
        parse_run_config({"lr": "fast"})


def test_apps_resolve_auto_keys_to_the_same_values():
    raw = {"task": "pointcloud", "dp": "sample", "dp-noise": 1.0, "lr": 0.02}
    cfg = parse_run_config(raw)
    passed = {**cfg.to_run_config(), **dict.fromkeys(task_default_choices(raw, cfg), "auto")}
    assert passed["pointnet-norm"] == "auto" and passed["lr"] == 0.02
    again = parse_run_config(passed)
    assert again.to_run_config() == cfg.to_run_config()
    assert task_default_choices(passed, again) == task_default_choices(raw, cfg)


def test_a_task_with_incomplete_or_mistyped_defaults_is_refused():
    class Partial(DigitsTask):
        name = "partial"
        defaults = MappingProxyType({"lr": 0.1})

    class Mistyped(DigitsTask):
        name = "mistyped"
        defaults = MappingProxyType({**Task.defaults, "lr": 1})

    with pytest.raises(TypeError, match="partial.defaults must have the keys lr, batch-size"):
        check_task_defaults(Partial())
    with pytest.raises(TypeError, match=r"mistyped.defaults\['lr'\] = 1 is not a float"):
        check_task_defaults(Mistyped())


def test_readme_table_of_task_defaults_is_current():
    names = ("digits", "mnist", "medmnist", "pointcloud")
    assert set(names) == set(task_names())
    table = defaults_table([get_task(n) for n in names])
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README's per-task defaults table is stale; paste tasks.defaults.defaults_table()"
    assert re.search(r"\| key \| `digits`", readme)
