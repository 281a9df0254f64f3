"""Deployment: a SuperLink and SuperNodes as separate processes over TLS with node authentication.

The e2e tests start everything with the deploy/ scripts on loopback (free ports,
FLWR_HOME in a tmp folder per machine role, so ~/.flwr is untouched), run the
digits task with ``flwr run`` and check the results folder. The other tests check
that the scripts reject bad input with one line and exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_harness import Processes, flwr_json, free_port, script, wait_for_log, wait_for_nodes, wait_for_tls

HOST = "127.0.0.1"
CONNECTION = "fedloom-test"
NUM_NODES = 2
#: PATH for the SuperLink and SuperNodes without this venv's bin folder, as when a user runs
#: ``.venv/bin/python deploy/start_superlink.py`` without activating the venv: the scripts
#: must still find the Flower helpers (``flower-superexec``) they start by name.
_VENV_BIN = Path(sys.executable).parent.resolve()
PATH_WITHOUT_VENV = os.pathsep.join(
    d for d in os.environ.get("PATH", "").split(os.pathsep) if Path(d).resolve() != _VENV_BIN
)


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script(name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@dataclass
class Deployment:
    """A running SuperLink with ``NUM_NODES`` registered, connected SuperNodes."""

    root: Path
    procs: Processes
    port: int
    cli_env: dict[str, str]
    node_ids: list[int]

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.crt"

    def start_node(
        self, name: str, key: Path, partition_id: int, *extra: str
    ) -> subprocess.Popen[bytes]:
        """A SuperNode via deploy/start_supernode.py: its own FLWR_HOME, data, state and HE key."""
        home = self.root / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        he_dir = self.root / name / "he"  # this node's copy of the secret context
        he_dir.mkdir(parents=True, exist_ok=True)
        for file in ("secret.ctx", "params.json"):
            shutil.copy2(self.root / "he-nodes" / file, he_dir / file)
        return self.procs.start(
            name,
            [
                *script("start_supernode.py"),
                "--superlink",
                f"{HOST}:{self.port}",
                "--ca",
                str(self.ca),
                "--key",
                str(key),
                "--partition-id",
                str(partition_id),
                "--num-partitions",
                str(NUM_NODES),
                "--data-dir",
                str(self.root / name / "data"),
                "--state-dir",
                str(self.root / name / "state"),
                "--he-secret-context",
                str(he_dir / "secret.ctx"),
                "--runtime-port",
                str(free_port()),
                *extra,
            ],
            env={"FLWR_HOME": str(home), "PATH": PATH_WITHOUT_VENV},
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """CA and server certificate, SuperLink (TLS, node auth), keys registered, nodes online."""
    root = tmp_path_factory.mktemp("deploy")
    procs = Processes(root / "logs")
    try:
        port = free_port()
        cli_env = procs.env({"FLWR_HOME": str(root / "homes" / "cli")})
        done = run_script("make_certs.py", "--out", str(root / "certs"), "--host", HOST)
        assert done.returncode == 0, done.stderr
        names = [f"node-{i}" for i in range(NUM_NODES)]
        done = run_script(
            "make_node_keys.py",
            "--out",
            str(root / "keys"),
            *[a for n in [*names, "rogue"] for a in ("--name", n)],
        )
        assert done.returncode == 0, done.stderr
        done = run_script(
            "provision_he.py",
            "--nodes-dir",
            str(root / "he-nodes"),
            "--server-dir",
            str(root / "server" / "he"),
            "--task",
            "digits",
        )
        assert done.returncode == 0, done.stderr
        (root / "homes" / "superlink").mkdir(parents=True)
        (root / "server").mkdir(exist_ok=True)
        superlink = procs.start(
            "superlink",
            [
                *script("start_superlink.py"),
                "--certs",
                str(root / "certs"),
                "--host",
                HOST,
                "--port",
                str(port),
                "--workdir",
                str(root / "server"),
            ],
            env={"FLWR_HOME": str(root / "homes" / "superlink"), "PATH": PATH_WITHOUT_VENV},
        )
        wait_for_tls(HOST, port, root / "certs" / "ca.crt", superlink, timeout=60)
        done = run_script(
            "connect.py",
            "--name",
            CONNECTION,
            "--address",
            f"{HOST}:{port}",
            "--ca",
            str(root / "certs" / "ca.crt"),
            env=cli_env,
        )
        assert done.returncode == 0, done.stderr
        done = run_script(
            "register_nodes.py",
            "--connection",
            CONNECTION,
            *[str(root / "keys" / f"{n}.pub") for n in names],
            env=cli_env,
        )
        assert done.returncode == 0, done.stderr + procs.tail("superlink")
        node_ids = [int(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()]
        deployment = Deployment(root, procs, port, cli_env, node_ids)
        nodes = [deployment.start_node(n, root / "keys" / n, i) for i, n in enumerate(names)]
        try:
            wait_for_nodes(CONNECTION, cli_env, NUM_NODES, timeout=90, procs=nodes)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n{procs.tail('node-0')}\n{procs.tail('superlink')}")
        yield deployment
    finally:
        procs.stop_all()
        assert not procs.remaining(), f"processes left running: {procs.remaining()}"


@pytest.mark.e2e
def test_superlink_serves_tls_with_the_generated_certificate(deployment: Deployment) -> None:
    cert = wait_for_tls(
        HOST, deployment.port, deployment.ca, deployment.procs.started["superlink"], timeout=10
    )

    assert ("IP Address", HOST) in cert["subjectAltName"]  # type: ignore[operator]
    assert "--enable-supernode-auth" in deployment.procs.log("superlink")  # the exec line


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.e2e
def test_unregistered_node_is_refused_in_one_line_naming_its_key(deployment: Deployment) -> None:
    rogue = deployment.start_node("rogue", deployment.root / "keys" / "rogue", 0)

    returncode = rogue.wait(timeout=120)  # Flower alone said only "Exit Code: 305"

    key = deployment.root / "keys" / "rogue"
    assert returncode == 2
    assert last_line(deployment.procs.log("rogue")) == (
        f"error: the SuperLink at --superlink {HOST}:{deployment.port} refused this node: the public "
        f"key of --key {key} is not registered there (or another SuperNode with this key is online); "
        f"register it: python deploy/register_nodes.py {key}.pub --connection <name>"
    )
    assert "Exit Code: 305" not in deployment.procs.log("rogue")  # Flower's report gave way to ours
    assert "No SuperNode found with the given public key" in deployment.procs.log("superlink")
    nodes = flwr_json(["supernode", "list", CONNECTION], deployment.cli_env)["nodes"]
    online = {int(n["node-id"]) for n in nodes if n["status"] == "online"}  # type: ignore[union-attr,index]
    assert online == set(deployment.node_ids)


def node_args(deployment: Deployment, name: str, *transport: str) -> list[str]:
    """start_supernode.py's arguments for partition 0 with ``transport`` (--ca/--key or --insecure)."""
    return ["--superlink", f"{HOST}:{deployment.port}", *transport, "--partition-id", "0",
            "--num-partitions", str(NUM_NODES), "--data-dir", str(deployment.root / name / "data"),
            "--state-dir", str(deployment.root / name / "state"), "--runtime-port", str(free_port())]


@pytest.mark.e2e
def test_a_plain_text_node_against_the_tls_superlink_is_told_instead_of_retrying(
    deployment: Deployment,
) -> None:
    done = run_script("start_supernode.py", *node_args(deployment, "plain", "--insecure"), timeout=120)

    assert done.returncode == 2
    assert last_line(done.stderr) == (
        f"error: --superlink {HOST}:{deployment.port} speaks TLS and this node uses plain text "
        "(--insecure); drop --insecure and give the CA certificate (--ca ca.crt from make_certs.py)"
    )


@pytest.mark.e2e
def test_a_node_trusting_another_ca_is_told(deployment: Deployment, tmp_path: Path) -> None:
    assert run_script("make_certs.py", "--out", str(tmp_path / "other"), "--host", HOST).returncode == 0
    other = tmp_path / "other" / "ca.crt"
    transport = ("--ca", str(other), "--key", str(deployment.root / "keys" / "node-0"))

    done = run_script("start_supernode.py", *node_args(deployment, "other-ca", *transport), timeout=120)

    assert done.returncode == 2
    assert last_line(done.stderr).startswith(
        f"error: --superlink {HOST}:{deployment.port}: the SuperLink's certificate is not signed by "
        f"--ca {other} ("
    )


@pytest.mark.e2e
def test_submitting_over_a_plain_text_connection_to_the_tls_superlink_is_told(
    deployment: Deployment, tmp_path: Path,
) -> None:
    env = {**deployment.cli_env, "FLWR_HOME": str(tmp_path)}
    done = run_script("connect.py", "--name", "plain", "--address", f"{HOST}:{deployment.port}", "--insecure", env=env)
    assert done.returncode == 0, done.stderr

    done = run_script("submit_run.py", "--connection", "plain", env=env, timeout=180)

    assert done.returncode == 2
    assert last_line(done.stderr).startswith(
        f"error: the SuperLink of connection 'plain' ({HOST}:{deployment.port}) speaks TLS and "
        "connection 'plain' uses plain text (--insecure)"
    )


@pytest.mark.e2e
def test_a_tls_node_against_a_plain_text_superlink_is_told(deployment: Deployment, tmp_path: Path) -> None:
    procs = Processes(tmp_path / "logs")
    port = free_port()
    try:
        procs.start("plain-link", [*script("start_superlink.py"), "--insecure", "--host", HOST,
                                   "--port", str(port), "--workdir", str(tmp_path)],
                    env={"FLWR_HOME": str(tmp_path / "home")})
        wait_for_log(procs, "plain-link", f"Uvicorn running on http://{HOST}:{port}", timeout=90)
        transport = ("--ca", str(deployment.ca), "--key", str(deployment.root / "keys" / "node-0"))
        args = node_args(deployment, "tls-node", *transport)
        args[1] = f"{HOST}:{port}"

        done = run_script("start_supernode.py", *args, timeout=120)
    finally:
        procs.stop_all()

    assert done.returncode == 2
    assert last_line(done.stderr) == (
        f"error: --superlink {HOST}:{port} speaks plain text (the SuperLink runs with --insecure) "
        "and this node uses TLS; start the SuperLink with --certs, or this node with --insecure on "
        "a trusted test network"
    )
    assert not procs.remaining()


def submit(deployment: Deployment, run_config: str) -> subprocess.CompletedProcess[str]:
    """``deploy/submit_run.py`` with ``run_config`` against the test deployment."""
    return run_script(
        "submit_run.py", "--connection", CONNECTION, "--run-config", run_config,
        "--timeout", "300", env=deployment.cli_env, timeout=330,
    )


@pytest.mark.e2e
def test_two_rounds_of_digits_over_tls(deployment: Deployment) -> None:
    """DP-SGD and top-k uploads: accountant and residuals must survive rounds on each node."""
    run_dir = deployment.root / "server" / "runs" / "digits"
    run_config = (
        f'num-server-rounds=2 seed=7 dp="sample" dp-noise=0.5 dp-seeded-noise=true '
        f'compression="topk:0.5" run-dir="{run_dir}"'
    )

    done = submit(deployment, run_config)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "finished:completed" in done.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["num_clients"] == NUM_NODES and r["failures"] == 0 for r in rows)
    assert rows[0]["accuracy"] > 0.5  # from ~0.1 (chance) for the initial model
    assert rows[1]["accuracy"] >= rows[0]["accuracy"]
    assert rows[1]["loss"] < rows[0]["loss"]
    assert rows[1]["epsilon"] > rows[0]["epsilon"] > 0  # the budget spent in round 1 was kept
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num_clients"] == NUM_NODES
    assert config["run_config"]["num-server-rounds"] == 2
    partitions = json.loads((run_dir / "partitions.json").read_text())
    assert sorted(c["partition_id"] for c in partitions["clients"]) == [0, 1]
    for name in ("metrics.csv", "model.pt", "accuracy.png", "loss.png"):
        assert (run_dir / name).is_file(), name
    for i in range(NUM_NODES):  # client state on the node's disk: one folder per run, then partition
        saved = sorted(p.name for p in (deployment.root / f"node-{i}" / "state" / config["run_id"] / str(i)).iterdir())
        assert saved == ["round-1.pkl", "round-2.pkl"]


@pytest.mark.e2e
def test_a_failing_node_is_reported_with_its_exception(deployment: Deployment) -> None:
    """A SuperNode's ClientApp raises: the server names the node, its partition and the
    exception, on the console and in failures.jsonl."""
    run_dir = deployment.root / "server" / "runs" / "failing"
    done = submit(deployment, f'num-server-rounds=1 fail-rate=1.0 run-dir="{run_dir}"')

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]  # no round completed
    assert "finished:failed" in done.stdout
    failed = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["node_id"] for f in failed) == sorted(deployment.node_ids)
    for f in failed:
        assert (f["round"], f["phase"]) == (1, "train")
        assert re.fullmatch(r"InjectedFailure: injected failure \(fail-rate=1.0\) in round 1, partition [01]", f["reason"])
    assert "too few clients remain" in deployment.procs.log("superlink") + done.stdout


@pytest.mark.e2e
def test_encrypted_round_with_the_secret_key_only_on_the_nodes(deployment: Deployment) -> None:
    server_he = deployment.root / "server" / "he"
    run_dir = deployment.root / "server" / "runs" / "he"
    run_config = (
        f'num-server-rounds=1 seed=7 he=true he-dir="{server_he}" fraction-evaluate=1.0 '
        f'run-dir="{run_dir}"'
    )

    done = submit(deployment, run_config)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert sorted(p.name for p in server_he.iterdir()) == ["params.json", "public.ctx"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["num_clients"] == NUM_NODES
    assert rows[0]["fed_accuracy"] > 0.5  # evaluated by the nodes, which alone can decrypt
    assert (run_dir / "model_encrypted.pt").is_file() and not (run_dir / "model.pt").exists()


@pytest.mark.e2e
def test_secure_aggregation_round_over_tls(deployment: Deployment) -> None:
    """SecAgg+'s extra exchanges between SuperNodes over TLS; the round's secrets stay in
    memory on the nodes (no state file holds a private key)."""
    run_dir = deployment.root / "server" / "runs" / "secagg"

    done = submit(deployment, f'num-server-rounds=1 seed=7 secagg=true run-dir="{run_dir}"')

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["num_clients"] == NUM_NODES and rows[0]["failures"] == 0
    assert rows[0]["accuracy"] > 0.5
    run_id = json.loads((run_dir / "config.json").read_text())["run_id"]
    for i in range(NUM_NODES):
        for saved in (deployment.root / f"node-{i}" / "state" / run_id).rglob("*.pkl"):
            assert b"PRIVATE KEY" not in saved.read_bytes()


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("make_certs.py", ["--out", "{tmp}/c", "--host", "10.0.0.1:9093"], "invalid --host"),
        ("make_certs.py", ["--out", "{tmp}/c"], "--host"),
        ("make_certs.py", ["--out", "{tmp}/c", "--host", "0.0.0.0"], "a listening address, not one clients"),
        ("make_certs.py", ["--out", "{tmp}/c", "--host", "foo bar"], "invalid --host 'foo bar'"),
        ("connect.py", ["--address", "https://10.0.0.1:9093"], "without a scheme"),
        ("make_node_keys.py", ["--out", "{tmp}/k", "--name", "../evil"], "invalid --name"),
        ("connect.py", ["--address", "10.0.0.1:9093"], "plain text needs an explicit --insecure"),
        ("connect.py", ["--address", "10.0.0.1", "--insecure"], "is not HOST:PORT"),
        ("start_superlink.py", [], "plain text needs an explicit --insecure"),
        ("start_superlink.py", ["--certs", "{tmp}/missing"], "is not a directory"),
        (
            "start_supernode.py",
            [
                "--superlink",
                "10.0.0.1:9093",
                "--ca",
                "{tmp}/ca.crt",
                "--key",
                "{tmp}/k",
                "--partition-id",
                "2",
                "--num-partitions",
                "2",
                "--data-dir",
                "{tmp}/d",
                "--state-dir",
                "{tmp}/s",
            ],
            "invalid --partition-id 2; valid: 0..1",
        ),
        (
            "start_supernode.py",
            [
                "--superlink",
                "10.0.0.1:9093",
                "--ca",
                "{tmp}/nope.crt",
                "--key",
                "{tmp}/k",
                "--partition-id",
                "0",
                "--num-partitions",
                "2",
                "--data-dir",
                "{tmp}/d",
                "--state-dir",
                "{tmp}/s",
            ],
            "does not exist",
        ),
        (
            "register_nodes.py",
            ["{tmp}/x.pub", "--connection", "nowhere"],
            "no SuperLink connection",
        ),
        ("submit_run.py", ["--connection", "nowhere"], "no SuperLink connection"),
        ("submit_run.py", ["--connection", "lab"], "cannot reach the SuperLink of connection 'lab'"),
        (
            "submit_run.py",
            ["--connection", "lab", "--run-config", 'run-dir="runs/x"'],
            "must be an absolute path",
        ),
        (
            "submit_run.py",
            ["--connection", "lab", "--run-config", "lr=fast"],
            "values must be TOML",
        ),
        (
            "submit_run.py",
            ["--connection", "lab", "--run-config", 'run-dir="/abs'],
            "No closing quotation",
        ),
        (
            "submit_run.py",
            ["--connection", "lab", "--run-config", 'he=true he-dir="/s" fraction-evaluate=1.0 he-secret-dir="/k"'],
            "he-secret-dir is for simulations",
        ),
        # Everything the ServerApp would refuse fails before submitting (issue 35).
        ("submit_run.py", ["--connection", "lab", "--run-config", 'strategy="fedavgg"'],
         "unknown strategy 'fedavgg'; valid: bulyan, "),
        ("submit_run.py", ["--connection", "lab", "--run-config", 'num-server-rounds="2"'],
         "num-server-rounds='2' is a string, but num-server-rounds takes a number (default 10); "
         "write num-server-rounds=2 without quotes"),
        ("submit_run.py", ["--connection", "lab", "--run-config", "task=5"],
         'strings go in double quotes: task="5"'),
        ("submit_run.py", ["--connection", "lab", "--run-config", "num-rounds=2"],
         "unknown key(s) num-rounds; valid: task, "),
        ("submit_run.py", ["--connection", "lab", "--run-config", 'strategy="fedloom.strategies.nope:Mine"'],
         "cannot import strategy module 'fedloom.strategies.nope'"),
        ("submit_run.py", ["--connection", "lab", "--run-config",
                           'strategy="fedloom.strategies.registry:StrategyParams"'],
         "must subclass flwr.serverapp.strategy.Strategy"),
        ("submit_run.py", ["--connection", "lab", "--run-config", 'dp="client" strategy="krum" dp-noise=1.0'],
         "does not work with dp=client"),
        ("local_federation.py", ["--nodes", "0"], "invalid --nodes 0; valid: 1-16"),
        ("local_federation.py", ["--dir", "{tmp}/lf", "--run-config", 'strategy="fedavgg"'],
         "unknown strategy 'fedavgg'"),
        ("provision_he.py", ["--nodes-dir", "{tmp}/he", "--server-dir", "{tmp}/he"], "must differ"),
        ("provision_he.py", ["--nodes-dir", "{tmp}/n", "--server-dir", "{tmp}/s", "--pack", "3"],
         "invalid --pack 3; valid: 1, 2"),
        # refused before the data set is sized: the data folder does not exist
        ("provision_he.py", ["--nodes-dir", "{tmp}/n", "--server-dir", "{tmp}/s", "--scheme", "ckks",
                             "--pack", "2", "--data-dir", "{tmp}/missing"],
         "invalid --pack 2 with --scheme ckks; valid: 1 (a CKKS slot's 39-bit integer range"),
    ],
)
def test_scripts_reject_bad_input_in_one_line(
    tmp_path: Path, name: str, args: list[str], message: str
) -> None:
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text('[superlink.lab]\naddress = "127.0.0.1:9"\n')
    env = {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(tmp_path / "flwr")}

    done = run_script(name, *[a.format(tmp=tmp_path) for a in args], env=env, timeout=180)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_supernode_refuses_a_shared_state_dir_and_readable_secrets(tmp_path: Path) -> None:
    # The node unpickles its state: a folder others may write lets them run code as it.
    # Its private key and HE secret must be owner-only (copies between machines widen modes).
    key, ca, state = tmp_path / "node-0", tmp_path / "ca.crt", tmp_path / "state"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    ca.write_text("ca")
    state.mkdir()
    state.chmod(0o777)
    args = ["--superlink", "10.0.0.1:9093", "--ca", str(ca), "--key", str(key), "--partition-id", "0",
            "--num-partitions", "1", "--data-dir", str(tmp_path / "d"), "--state-dir", str(state)]
    done = run_script("start_supernode.py", *args, timeout=60)
    assert done.returncode == 2 and "must be owned by this user and writable by no one else" in done.stderr
    state.chmod(0o700)
    key.chmod(0o644)
    done = run_script("start_supernode.py", *args, timeout=60)
    assert done.returncode == 2 and "is readable by others (mode 0o644): chmod 600 it" in done.stderr


def test_make_certs_can_reissue_the_server_certificate_from_the_existing_ca(tmp_path: Path) -> None:
    # Adding an address must not replace the CA every node and the CLI already trust.
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    done = run_script("make_certs.py", "--out", str(tmp_path / "c1"), "--host", "10.0.0.5", timeout=60)
    assert done.returncode == 0, done.stderr
    done = run_script("make_certs.py", "--out", str(tmp_path / "c2"), "--host", "10.0.0.5", "--host",
                      "link.example.org", "--ca-dir", str(tmp_path / "c1"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c2" / "ca.crt").read_bytes() == (tmp_path / "c1" / "ca.crt").read_bytes()
    assert not (tmp_path / "c2" / "ca.key").exists()  # the CA key stays where it was
    ca = x509.load_pem_x509_certificate((tmp_path / "c1" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "c2" / "server.pem").read_bytes())
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example.org" in names.get_values_for_type(x509.DNSName)
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} >= {"10.0.0.5", "127.0.0.1", "::1"}
    done = run_script("make_certs.py", "--out", str(tmp_path / "c3"), "--host", "10.0.0.5",
                      "--ca-dir", str(tmp_path / "c2"), timeout=60)
    assert done.returncode == 2 and "cannot read ca.crt and ca.key" in done.stderr
    # A CA key that did not sign ca.crt would issue certificates no node trusts.
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "c4").mkdir()
    (tmp_path / "c4" / "ca.crt").write_bytes((tmp_path / "c1" / "ca.crt").read_bytes())
    (tmp_path / "c4" / "ca.key").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    done = run_script("make_certs.py", "--out", str(tmp_path / "c5"), "--host", "10.0.0.5",
                      "--ca-dir", str(tmp_path / "c4"), timeout=60)
    assert done.returncode == 2 and "ca.key is not the key of ca.crt" in done.stderr
    assert not (tmp_path / "c5" / "server.pem").exists()
