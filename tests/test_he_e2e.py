"""Encrypted simulations end to end, and invalid combinations."""

import json

import pytest

import run_sim

pytestmark = pytest.mark.e2e


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_encrypted_run_matches_plaintext_accuracy(tmp_path):
    common = ["--num-clients", "3", "--rounds", "2", "--seed", "5"]
    assert run_sim.main([*common, "--he", "--run-dir", str(tmp_path / "he")]) == 0
    assert run_sim.main([*common, "--run-config", "fraction-evaluate=1.0", "--run-dir", str(tmp_path / "plain")]) == 0
    he_rows, plain_rows = rows(tmp_path / "he"), rows(tmp_path / "plain")
    assert abs(he_rows[-1]["accuracy"] - plain_rows[-1]["accuracy"]) <= 0.005
    assert he_rows[-1]["accuracy"] > he_rows[0]["accuracy"] - 0.05 and he_rows[-1]["accuracy"] > 0.8
    # Under HE the reported accuracy is the federated one: the server cannot decrypt.
    assert he_rows[-1]["accuracy"] == he_rows[-1]["fed_accuracy"]
    assert he_rows[-1]["bytes_up"] > plain_rows[-1]["bytes_up"]
    run = tmp_path / "he"
    assert (run / "model_encrypted.pt").is_file() and not (run / "model.pt").exists()
    assert (run / "he" / "public.ctx").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "fedmedian"], "strategy 'fedmedian' does not work with --he"),
        (["--strategy", "fedadam"], "strategies that work with --he: fedavg, fedprox"),
        (["--compression", "topk:0.1"], "codecs that work with --he: none"),
        (["--run-config", "fraction-evaluate=0"], "--he needs federated evaluation"),
    ],
)
def test_invalid_he_combinations_exit_2(argv, message, capsys, tmp_path):
    assert run_sim.main(["--he", *argv, "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
