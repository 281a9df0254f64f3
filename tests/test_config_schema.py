"""The run-config schema: one declaration per key, from which the defaults, the
run_sim.py flags, the README reference and the pyproject check derive."""

import argparse
import tomllib
import warnings
from pathlib import Path

import pytest

from fedloom.compression.spec import Chain
from fedloom.config import DEFAULTS, KEYS, DPMode, parse_run_config, resolve_derived
from fedloom.config import reference
from fedloom.config.flags import add_key_flags, flag_values
from fedloom.tasks.partition import PartitionSpec
from fedloom.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_table_and_schema_agree():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert sorted(table) == sorted(DEFAULTS), "keys in one and not the other"
    for name, value in table.items():
        assert value == DEFAULTS[name] and type(value) is type(DEFAULTS[name]), name


def test_readme_reference_is_current():
    text = (ROOT / "README.md").read_text()
    assert reference.updated(text) == text, "run: python -m fedloom.config.reference"


def test_the_pyproject_table_is_the_generated_one():
    text = (ROOT / "pyproject.toml").read_text()
    assert reference.updated_pyproject(text) == text, "run: python -m fedloom.config.reference"
    table = tomllib.loads(reference.updated_pyproject(text.replace('seed = 42', 'seed = 7')))
    assert table["tool"]["flwr"]["app"]["config"]["seed"] == 42  # rewritten from the schema
    assert table["tool"]["pytest"] == tomllib.loads(text)["tool"]["pytest"]  # the rest untouched


def test_reference_lists_every_key_once():
    table = reference.render()
    for k in KEYS:
        assert table.count(f"| `{k.name}` |") == 1, k.name


def test_no_zero_sentinels_in_the_defaults():
    assert DEFAULTS["batch-size"] == "auto" and DEFAULTS["lr"] == "auto"
    cfg = parse_run_config({})
    assert (cfg.batch_size, cfg.lr) == (16, 0.05)  # digits' own
    # pointcloud's measured best (Adam; tests/test_task_defaults.py has the whole set)
    assert (parse_run_config({"task": "pointcloud"}).batch_size, parse_run_config({"task": "pointcloud"}).lr) == (8, 0.001)


def test_an_old_zero_still_means_the_task_default_with_a_warning():
    with pytest.warns(FutureWarning, match='batch-size=0 for the task\'s default is deprecated; write batch-size="auto"'):
        cfg = parse_run_config({"batch-size": 0, "lr": 0.0})
    assert (cfg.batch_size, cfg.lr) == (16, 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_run_config({"batch-size": 8})  # a real value: no warning


def test_derived_defaults_are_resolved_in_one_function_for_both_launchers():
    task = get_task("digits")
    raw = {"batch-size": "auto", "lr": "auto", "min-train-nodes": "auto",
           "min-available-nodes": "auto", "fraction-evaluate": "auto", "he": True}
    sim, deployed = dict(raw), dict(raw)
    resolve_derived(sim, task, num_nodes=1)  # run_sim.py knows the federation's size
    resolve_derived(deployed, task)  # flwr run does not
    assert (sim["min-train-nodes"], sim["min-available-nodes"]) == (1, 1)
    assert (deployed["min-train-nodes"], deployed["min-available-nodes"]) == (2, 2)
    assert sim["fraction-evaluate"] == deployed["fraction-evaluate"] == 1.0  # he: clients evaluate
    # flwr run with he=true used to fail on the table's fraction-evaluate=0.0
    assert parse_run_config({"he": True}).fraction_evaluate == 1.0
    assert parse_run_config({}).fraction_evaluate == 0.0
    assert parse_run_config({"min-available-nodes": 3}, num_nodes=10).min_available_nodes == 3


def test_parsed_values_are_objects_and_go_back_to_their_text():
    cfg = parse_run_config({"compression": "topk:0.01+qsgd:8", "partition": "Shards:2", "dp": "client",
                            "dp-noise": 1.0})
    assert isinstance(cfg.compression, Chain) and isinstance(cfg.partition, PartitionSpec)
    assert cfg.dp is DPMode.CLIENT
    plain = cfg.to_run_config()
    assert (plain["compression"], plain["partition"], plain["dp"]) == ("topk:0.01+qsgd:8", "shards:2", "client")
    assert all(type(v) in (str, int, float, bool) for v in plain.values())
    assert parse_run_config(plain) == cfg  # config.json reloads to the same config


def test_flags_come_from_the_schema_and_keep_their_names():
    parser = argparse.ArgumentParser()
    add_key_flags(parser)
    args = parser.parse_args(["--rounds", "3", "--fraction", "0.5", "--he", "--batch-size", "auto",
                              "--dp-clipping-side", "client"])
    assert flag_values(args) == {"num-server-rounds": 3, "fraction-train": 0.5, "he": True,
                                 "batch-size": "auto", "dp-clipping-side": "client"}
    help_text = " ".join(parser.format_help().split())
    assert "[default: the task's best measured value (README: Per-task defaults)]" in help_text


def test_every_choice_error_lists_the_valid_values():
    with pytest.raises(ValueError, match="invalid dp='central'; valid: none, sample, client"):
        parse_run_config({"dp": "central"})
    with pytest.raises(ValueError, match="invalid image-size=30; valid: 28, 64, 128, 224"):
        parse_run_config({"image-size": 30})
    with pytest.raises(ValueError, match="batch-size='x' is not a valid int .*or auto"):
        parse_run_config({"batch-size": "x"})
