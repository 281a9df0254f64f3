"""Bad input: one clear line on stderr, exit status 2, nothing started."""

import subprocess
import sys
from pathlib import Path

import pytest

from fedloom import run_sim

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "cifar"], "unknown task 'cifar'; valid: digits"),
        (["--task", "mnist", "--dataset", "fashion"], "unknown dataset 'fashion' for task 'mnist'"),
        (["--strategy", "fedsgd"], "unknown strategy 'fedsgd'; valid: bulyan"),
        (["--partition", "zipf:1"], "invalid partition 'zipf:1'; valid: iid, dirichlet:ALPHA"),
        (["--rounds", "0"], "invalid num-server-rounds=0; valid: >= 1"),
        (["--rounds", "two"], "argument --rounds: invalid int value: 'two'"),
        (["--num-clients", "0"], "invalid --num-clients 0; valid: >= 1"),
        (["--lr", "-0.1"], "invalid lr=-0.1; valid: > 0"),
        (["--fraction", "2"], "invalid fraction-train=2.0"),
        (["--run-config", "learning-rate=3"], "unknown run-config key(s) learning-rate"),
        (["--run-config", "lr"], "--run-config item 'lr' is not key=value"),
        (["--num-clients", "1", "--run-config", "min-train-nodes=2"], "min-train-nodes=2 exceeds --num-clients 1"),
        (["--strategy", "krum", "--num-clients", "4", "--run-config", "num-malicious=1"], "needs >= 5 clients per round"),
        (["--client-gpus", "lots"], "invalid --client-gpus 'lots'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert run_sim.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_data_file_names_the_path(tmp_path, monkeypatch, capsys):
    from fedloom.tasks import mnist

    monkeypatch.setattr(mnist, "MIRRORS", ("http://127.0.0.1:9/",))
    assert run_sim.main(["--task", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"put mnist.npz in {tmp_path}" in err and err.count("\n") == 1


def test_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, "run_sim.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--task", "--dataset", "--data-dir", "--num-clients", "--rounds", "--fraction",
                 "--local-epochs", "--batch-size", "--lr", "--partition", "--strategy", "--seed",
                 "--run-dir", "--run-config", "--client-cpus", "--client-gpus"):
        assert flag in out
    # Unset flags fall through to the run config, so argparse's own default (None) is no default to show.
    assert "(default: None)" not in out and "[default: digits]" in out


def test_process_exit_status_is_2():
    proc = subprocess.run(
        [sys.executable, "run_sim.py", "--task", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "run_sim.py: error: unknown task 'nope'; valid: " + proc.stderr.split("valid: ")[1].strip()


def test_a_broken_user_strategy_fails_in_one_line_before_the_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "strats.py").write_text(
        "from flwr.serverapp.strategy import FedAvg\n"
        "class NeedsArg(FedAvg):\n"
        "    def __init__(self, alpha, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "def factory(**kwargs):\n"
        "    return 3\n"
    )
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    monkeypatch.chdir(tmp_path)  # a relative path, as a user types it
    cases = [
        ("strats.py:NeedsArg", "cannot be built from the keyword arguments fedloom passes"),
        ("strats.py:factory", "returned int, not a Strategy"),
        ("broken.py:X", f"cannot load strategy file {tmp_path / 'broken.py'}: ModuleNotFoundError"),
    ]
    for spec, message in cases:
        assert run_sim.main(["--strategy", spec, "--run-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()  # nothing started


def test_a_user_strategy_file_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    # --resume may start in another directory; config.json must still find the file.
    (tmp_path / "strats.py").write_text("from flwr.serverapp.strategy import FedAvg as Mine\n")
    monkeypatch.chdir(tmp_path)
    args = run_sim.build_parser().parse_args(["--strategy", "strats.py:Mine", "--num-clients", "2"])
    assert run_sim.resolve_config(args)["strategy"] == f"{tmp_path / 'strats.py'}:Mine"
