"""Encrypted simulations end to end, and invalid combinations."""

import json
from pathlib import Path

import pytest
import torch

from fedloom import run_sim
from fedloom.client import decrypt_model
from fedloom.tasks.registry import get_task, load_task_data
from fedloom.tasks.training import evaluate

pytestmark = pytest.mark.e2e


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_encrypted_run_matches_plaintext_accuracy(tmp_path):
    common = ["--num-clients", "3", "--rounds", "2", "--seed", "5"]
    assert run_sim.main([*common, "--he", "--run-dir", str(tmp_path / "he")]) == 0
    assert run_sim.main([*common, "--run-config", "fraction-evaluate=1.0", "--run-dir", str(tmp_path / "plain")]) == 0
    he_rows, plain_rows = rows(tmp_path / "he"), rows(tmp_path / "plain")
    assert abs(he_rows[-1]["accuracy"] - plain_rows[-1]["accuracy"]) <= 0.005
    assert he_rows[-1]["central_seconds"] == 0 < plain_rows[-1]["central_seconds"]  # HE: no central pass
    # CKKS: 2,048 real slots per ciphertext, so 5 ciphertexts for the same 9,610 weights.
    assert run_sim.main([*common, "--he", "--he-scheme", "ckks", "--run-dir", str(tmp_path / "ckks")]) == 0
    ckks_rows = rows(tmp_path / "ckks")
    assert abs(ckks_rows[-1]["accuracy"] - plain_rows[-1]["accuracy"]) <= 0.005
    assert 1.6 < ckks_rows[-1]["bytes_up"] / he_rows[-1]["bytes_up"] < 1.8
    assert json.loads((tmp_path / "ckks" / "he" / "params.json").read_text())["scheme"] == "ckks"
    # randk under HE with two values per slot: the 9,610-parameter MLP takes 2 ciphertexts
    # instead of 3 (each 6% larger: its data prime has 60 bits instead of 56), and each
    # round uploads a shared random 1 of the 2. (Packed sums: tests/test_he.py.)
    assert run_sim.main([*common, "--he", "--compression", "randk:0.5", "--run-config", "he-pack=2",
                         "--run-dir", str(tmp_path / "randk")]) == 0
    randk_rows = rows(tmp_path / "randk")
    assert [round(r["bytes_up"] / h["bytes_up"], 2) for r, h in zip(randk_rows, he_rows)] == [0.35, 0.35]
    assert randk_rows[-1]["accuracy"] > 0.55  # half the model moves each round; measured 0.647 (chance 0.1)
    assert he_rows[-1]["accuracy"] > he_rows[0]["accuracy"] - 0.05 and he_rows[-1]["accuracy"] > 0.8
    # Under HE the reported accuracy is the federated one: the server cannot decrypt.
    assert he_rows[-1]["accuracy"] == he_rows[-1]["fed_accuracy"]
    assert he_rows[-1]["bytes_up"] > plain_rows[-1]["bytes_up"]
    run = tmp_path / "he"
    assert (run / "model_encrypted.pt").is_file() and not (run / "model.pt").exists()
    assert (run / "he" / "public.ctx").is_file()
    # The clients' secret key lives outside the results folder, readable by its owner only.
    assert not list(run.rglob("secret.ctx"))
    secret_dir = Path(json.loads((run / "config.json").read_text())["run_config"]["he-secret-dir"])
    assert (secret_dir / "secret.ctx").is_file() and not secret_dir.is_relative_to(tmp_path)
    assert (secret_dir / "secret.ctx").stat().st_mode & 0o077 == 0
    # A key holder decrypts the final model; it scores on the central test set like the
    # clients' federated evaluation of the same aggregate.
    assert decrypted_accuracy(run) > 0.8
    assert decrypted_accuracy(tmp_path / "randk") > 0.55


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


@pytest.mark.parametrize(("key", "file"), [("he-secret-dir", "secret.ctx"), ("he-dir", "public.ctx")])
def test_a_new_run_does_not_overwrite_keys_in_an_explicit_folder(key, file, tmp_path, capsys):
    # Another run's keys: new ones would make its encrypted model undecryptable.
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / file).write_bytes(b"another run's key")
    code = run_sim.main(["--he", "--run-dir", str(tmp_path / "run"), "--run-config", f'{key}="{keys}"'])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{key} {keys} already holds keys ({file})" in err and err.count("\n") == 1
    assert (keys / file).read_bytes() == b"another run's key"


@pytest.mark.parametrize("inside", ["run", "run/keys", "server-he"])
def test_the_secret_key_may_not_go_into_the_results_or_the_servers_folder(inside, tmp_path, capsys):
    argv = ["--he", "--run-dir", str(tmp_path / "run"), "--run-config",
            f'he-dir="{tmp_path / "server-he"}" he-secret-dir="{tmp_path / inside}"']
    assert run_sim.main(argv) == 2
    err = capsys.readouterr().err
    assert f"he-secret-dir {tmp_path / inside} lies in" in err and err.count("\n") == 1
    assert not list(tmp_path.rglob("*.ctx"))


def test_an_encrypted_run_resumes_with_its_clients_keys(tmp_path):
    run = tmp_path / "run"
    common = ["--num-clients", "2", "--seed", "3"]
    assert run_sim.main([*common, "--rounds", "1", "--he", "--run-dir", str(run)]) == 0
    first = json.loads((run / "config.json").read_text())["run_config"]
    assert run_sim.main(["--resume", str(run), "--rounds", "2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["run_config"]["he-secret-dir"] == first["he-secret-dir"]
    assert config["run_config"]["he-dir"] == first["he-dir"]
    assert [r["round"] for r in rows(run)] == [1, 2] and rows(run)[-1]["failures"] == 0
    assert decrypted_accuracy(run) > 0.7
