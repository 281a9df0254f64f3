"""Deployment checks that need no running SuperLink: the run-config pre-check of
submit_run.py, ports in use, what the ServerApp does with a refused strategy and with
the nodes' partition keys (issue 35)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from unittest.mock import Mock

import pytest
from deploy_harness import DEPLOY, REPO, free_port, script

sys.path.insert(0, str(DEPLOY))
from _run_config import parse_items  # noqa: E402  (deploy/_run_config.py)


@pytest.mark.parametrize(
    "items",
    [
        ['num-server-rounds=2 run-dir="/srv/runs/a b"'],
        ["lr=0.1 he=true", 'strategy="fedprox"'],
        ["dp-delta=1e-5 task='digits'"],
    ],
)
def test_run_config_items_are_parsed_as_flower_parses_them(items: list[str]) -> None:
    from flwr.common.config import parse_config_args

    assert parse_items(items) == parse_config_args(items)


def _cli_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "flwr").mkdir(exist_ok=True)
    (tmp_path / "flwr" / "config.toml").write_text('[superlink.lab]\naddress = "127.0.0.1:9"\n')
    return {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(tmp_path / "flwr")}


@pytest.mark.parametrize("run_config", ['strategy="fedavgg"', 'num-server-rounds="2"', "num-rounds=2"])
def test_common_run_config_mistakes_fail_before_pytorch_is_imported(tmp_path: Path, run_config: str) -> None:
    # The pre-submit check took 9-12 s, most of it importing PyTorch and scikit-learn for
    # fedloom's parser; these mistakes are caught by the stage before it.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *script("submit_run.py")[1:], "--connection", "lab",
         "--run-config", run_config],
        capture_output=True, text=True, env=_cli_env(tmp_path), timeout=120, check=False,
    )

    assert done.returncode == 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "flwr" not in imported or run_config.startswith("strategy")  # only the strategy check needs Flower
    assert not imported & {"torch", "sklearn", "opacus", "tenseal"}
    assert done.stderr.strip().splitlines()[-1].startswith("error: --run-config")


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_runtime_port_in_use_is_named_before_flower_starts(tmp_path: Path) -> None:
    key, ca = tmp_path / "node-0", tmp_path / "ca.crt"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    ca.write_text("ca")
    with _listening() as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*script("start_supernode.py"), "--superlink", "127.0.0.1:9", "--ca", str(ca), "--key", str(key),
             "--partition-id", "1", "--num-partitions", "2", "--data-dir", str(tmp_path / "d"),
             "--state-dir", str(tmp_path / "s"), "--runtime-port", str(port)],
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --runtime-port {port} is in use (another SuperNode on this machine?); give each "
        "SuperNode on one machine its own --runtime-port, e.g. 9095, 9096, ..."
    ]


def test_a_file_that_is_no_ca_certificate_is_named(tmp_path: Path) -> None:
    key, ca = tmp_path / "node-0", tmp_path / "ca.crt"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    ca.write_text("not a certificate")
    with _listening() as link:  # something listens: the probe gets as far as reading --ca
        done = subprocess.run(
            [*script("start_supernode.py"), "--superlink", f"127.0.0.1:{link.getsockname()[1]}",
             "--ca", str(ca), "--key", str(key), "--partition-id", "0", "--num-partitions", "1",
             "--data-dir", str(tmp_path / "d"), "--state-dir", str(tmp_path / "s"),
             "--runtime-port", str(free_port())],
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {ca} is not a PEM CA certificate ("), done.stderr


def test_a_superlink_port_in_use_is_named(tmp_path: Path) -> None:
    with _listening() as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*script("start_superlink.py"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
             "--workdir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --port {port} is in use on 127.0.0.1 (another SuperLink?); pick another --port"
    )


def test_a_refused_strategy_leaves_no_results_folder(tmp_path: Path) -> None:
    # Deployed, the ServerApp is the last line of defence: an empty run-dir looked like a run.
    from fedloom.server.app import run_server
    from fedloom.config import parse_run_config

    run_dir = tmp_path / "runs" / "refused"
    cfg = parse_run_config({"strategy": "fedavgg", "run-dir": str(run_dir)})

    with pytest.raises(ValueError, match="unknown strategy 'fedavgg'"):
        run_server(Mock(), cfg)

    assert not run_dir.exists()


def test_partition_keys_are_read_but_not_averaged_into_train_metrics(task_identity) -> None:
    import numpy as np
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from fedloom.strategies.instrumented import InstrumentedStrategy

    strategy = InstrumentedStrategy(FedAvg())
    sent = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (11, 12)]
    strategy.stats.sampled = 2
    replies = [
        Message(RecordDict({
            "arrays": ArrayRecord([np.full(2, float(pid), dtype=np.float32)]),
            "metrics": MetricRecord({"num-examples": 10, "train_loss": 0.5 + pid,
                                     "partition-id": pid, "num-partitions": 2}),
        }), reply_to=msg)
        for pid, msg in enumerate(sent)
    ]

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert dict(metrics) == {"train_loss": 1.0}  # (0.5 + 1.5) / 2; no partition-id 0.5
    assert strategy.partitions == {11: (0, 2), 12: (1, 2)}
    assert arrays is not None and np.allclose(arrays.to_numpy_ndarrays()[0], 0.5)


def test_the_deploy_readme_commands_name_existing_scripts_and_flags() -> None:
    """Every ``python deploy/<script>.py --flag`` in the READMEs' deployment steps exists."""
    import re

    text = (REPO / "README.md").read_text() + (DEPLOY / "README.md").read_text()
    calls = re.findall(r"python deploy/(\w+\.py)((?:[ \t]+(?:\\\n\s*)?[^\s|;&`]+)*)", text)
    assert calls
    flags: dict[str, set[str]] = {}
    for name, args in calls:
        assert (DEPLOY / name).is_file(), name
        flags.setdefault(name, set()).update(re.findall(r"(?<!\S)(--[a-z][a-z-]*)", args))
    for name, used in flags.items():
        if name == "netns.py":  # subcommands, each with its own --help
            continue
        helptext = subprocess.run([*script(name), "--help"], capture_output=True, text=True,
                                  timeout=60, check=False).stdout
        assert used <= set(re.findall(r"--[a-z][a-z-]*", helptext)), f"{name}: {used}"
