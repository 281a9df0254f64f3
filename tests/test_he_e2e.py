"""Encrypted simulations end to end, and invalid combinations."""

import json

import pytest
import torch

import run_sim
from client import decrypt_model
from tasks.registry import get_task, load_task_data
from tasks.training import evaluate

pytestmark = pytest.mark.e2e


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_encrypted_run_matches_plaintext_accuracy(tmp_path):
    common = ["--num-clients", "3", "--rounds", "2", "--seed", "5"]
    assert run_sim.main([*common, "--he", "--run-dir", str(tmp_path / "he")]) == 0
    assert run_sim.main([*common, "--run-config", "fraction-evaluate=1.0", "--run-dir", str(tmp_path / "plain")]) == 0
    assert run_sim.main([*common, "--he", "--run-config", "he-pack=2", "--run-dir", str(tmp_path / "packed")]) == 0
    he_rows, plain_rows, packed_rows = rows(tmp_path / "he"), rows(tmp_path / "plain"), rows(tmp_path / "packed")
    assert abs(he_rows[-1]["accuracy"] - plain_rows[-1]["accuracy"]) <= 0.005
    # Two values per slot: the 9,610-parameter MLP takes 2 ciphertexts instead of 3 (each
    # 6% larger: its data prime has 60 bits instead of 56).
    assert abs(packed_rows[-1]["accuracy"] - plain_rows[-1]["accuracy"]) <= 0.005
    assert packed_rows[-1]["bytes_up"] < 0.72 * he_rows[-1]["bytes_up"]
    # CKKS: 2,048 real slots per ciphertext, so 5 ciphertexts for the same 9,610 weights.
    assert run_sim.main([*common, "--he", "--he-scheme", "ckks", "--run-dir", str(tmp_path / "ckks")]) == 0
    ckks_rows = rows(tmp_path / "ckks")
    assert abs(ckks_rows[-1]["accuracy"] - plain_rows[-1]["accuracy"]) <= 0.005
    assert 1.6 < ckks_rows[-1]["bytes_up"] / he_rows[-1]["bytes_up"] < 1.8
    assert json.loads((tmp_path / "ckks" / "he" / "params.json").read_text())["scheme"] == "ckks"
    # randk under HE: each round uploads a shared random 2 of the 3 ciphertexts.
    assert run_sim.main([*common, "--he", "--compression", "randk:0.5", "--run-dir", str(tmp_path / "randk")]) == 0
    randk_rows = rows(tmp_path / "randk")
    assert [round(r["bytes_up"] / h["bytes_up"], 2) for r, h in zip(randk_rows, he_rows)] == [0.67, 0.67]
    assert randk_rows[-1]["accuracy"] > 0.7
    assert he_rows[-1]["accuracy"] > he_rows[0]["accuracy"] - 0.05 and he_rows[-1]["accuracy"] > 0.8
    # Under HE the reported accuracy is the federated one: the server cannot decrypt.
    assert he_rows[-1]["accuracy"] == he_rows[-1]["fed_accuracy"]
    assert he_rows[-1]["bytes_up"] > plain_rows[-1]["bytes_up"]
    run = tmp_path / "he"
    assert (run / "model_encrypted.pt").is_file() and not (run / "model.pt").exists()
    assert (run / "he" / "public.ctx").is_file()
    # A key holder decrypts the final model; it scores on the central test set like the
    # clients' federated evaluation of the same aggregate.
    assert decrypted_accuracy(run) > 0.8
    assert decrypted_accuracy(tmp_path / "randk") > 0.7


def decrypted_accuracy(run):
    assert decrypt_model.main([str(run)]) == 0
    task = get_task("digits")
    data = load_task_data("digits", "data", "")
    model = task.build_model(data)
    model.load_state_dict(torch.load(run / "model.pt"))
    return evaluate(model, task, data.test)["accuracy"]


def test_decrypt_model_errors_are_one_line(tmp_path, capsys):
    assert decrypt_model.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model_encrypted.pt not found" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "fedmedian"], "strategy 'fedmedian' does not work with --he"),
        (["--strategy", "fedadam"], "strategies that work with --he: fedavg, fedprox"),
        (["--compression", "topk:0.1"], "codecs that work with --he: none"),
        (["--run-config", "fraction-evaluate=0"], "--he needs federated evaluation"),
        (["--run-config", "he-pack=3"], "invalid he-pack=3; valid: 1, 2"),
        (["--he-scheme", "paillier"], "invalid he-scheme='paillier'; valid: bfv, ckks"),
        (["--he-scheme", "ckks", "--run-config", "he-pack=2"], "invalid he-pack=2 with he-scheme=ckks; valid: 1"),
        (["--compression-down", "fp16"], "compression-down=fp16 does not work with --he"),
    ],
)
def test_invalid_he_combinations_exit_2(argv, message, capsys, tmp_path):
    assert run_sim.main(["--he", *argv, "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_new_run_does_not_overwrite_keys_in_an_explicit_he_dir(tmp_path, capsys):
    # Another run's keys: new ones would make its encrypted model undecryptable.
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "secret.ctx").write_bytes(b"another run's key")
    code = run_sim.main(["--he", "--run-dir", str(tmp_path / "run"), "--run-config", f'he-dir="{keys}"'])
    assert code == 2
    err = capsys.readouterr().err
    assert f"he-dir {keys} already holds keys (secret.ctx)" in err and err.count("\n") == 1
    assert (keys / "secret.ctx").read_bytes() == b"another run's key"
