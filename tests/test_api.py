"""The Python API: fedloom.simulate / fedloom.load_run."""

import json
import subprocess
import sys

import pytest

import fedloom


def test_import_fedloom_loads_neither_torch_nor_flower():
    code = ("import sys, fedloom; assert callable(fedloom.simulate); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'flwr', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_keyword_raises_config_error_listing_the_valid_ones():
    with pytest.raises(fedloom.ConfigError) as err:
        fedloom.simulate(num_clients=2, rounds=1, fraction_evalaute=1.0)
    message = str(err.value)
    assert message.startswith("unknown keyword(s) fraction_evalaute; valid: ")
    assert "fraction_evaluate" in message and "num_clients" in message and "\n" not in message


def test_bad_values_raise_the_cli_message_before_anything_runs(tmp_path):
    with pytest.raises(fedloom.ConfigError, match=r"unknown strategy 'nope'; valid: .*fedavg"):
        fedloom.simulate(num_clients=2, rounds=1, strategy="nope", run_dir=str(tmp_path / "a"))
    with pytest.raises(fedloom.ConfigError, match=r"invalid fraction-train=1.5; valid: 0 < f <= 1"):
        fedloom.simulate(num_clients=2, rounds=1, fraction_train=1.5, run_dir=str(tmp_path / "b"))
    with pytest.raises(fedloom.ConfigError, match="give rounds or num_server_rounds, not both"):
        fedloom.simulate(rounds=1, num_server_rounds=2)
    with pytest.raises(fedloom.ConfigError, match="resume=True needs run_dir"):
        fedloom.simulate(resume=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_load_run_reads_a_results_folder_and_rejects_other_folders(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"run_config": {"task": "digits", "lr": 0.05}}))
    rows = [{"round": 1, "accuracy": 0.5, "bytes_up": 10}, {"round": 2, "accuracy": 0.75, "bytes_up": 10}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = fedloom.load_run(tmp_path)
    assert run.path == tmp_path.resolve() and run.rows == rows
    assert run.run_config == {"task": "digits", "lr": 0.05}
    assert run.final["accuracy"] == 0.75 and run.metric("accuracy") == [0.5, 0.75]
    with pytest.raises(KeyError, match="valid: accuracy, bytes_up, round"):
        run.metric("auc")
    with pytest.raises(FileNotFoundError, match="not a fedloom results folder"):
        fedloom.load_run(tmp_path / "missing")


@pytest.mark.e2e
def test_simulate_digits_returns_the_rows_config_and_folder(digits_runs):
    folder, run = digits_runs  # fedloom.simulate(task="digits", num_clients=2, rounds=2, seed=3, ...)
    assert run.path == (folder / "plain").resolve()
    assert [r["round"] for r in run.rows] == [1, 2] and run.final["accuracy"] > 0.5
    assert run.final["fed_accuracy"] == pytest.approx(run.final["accuracy"], abs=1e-6)
    assert run.run_config["seed"] == 3 and run.run_config["fraction-evaluate"] == 1.0
    assert run.config["num_clients"] == 2
    again = fedloom.load_run(run.path)
    assert again.rows == run.rows and again.config == run.config
