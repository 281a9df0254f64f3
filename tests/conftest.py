"""Shared fixtures: the real data sets in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``FEDLOOM_DATA`` points the tests elsewhere (a machine without ../shared, e.g. a GPU host).
SHARED_DATA = Path(os.environ.get("FEDLOOM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def require_data(relative: str) -> Path:
    """Path to a shared data file; skip only when it is absent and CI is not set."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing and CI=true: tests must run on real data")
        pytest.skip(f"{path} not present")
    return path


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` skip on a machine without a CUDA GPU (CI has none)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def keys_home(tmp_path_factory) -> Path:
    """Where ``run_sim.py --he`` puts the clients' secret keys during the tests
    (``$XDG_DATA_HOME/fedloom/he-keys``): a temporary folder, not the user's home."""
    home = tmp_path_factory.mktemp("xdg-data")
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """Two finished 2-round digits runs that several tests read (one simulation each, not
    one per test): ``plain`` through the Python API with TensorBoard and federated
    evaluation on, and ``qsgd4`` from the command line with ``--compression qsgd:4``.
    Returns ``(folder, plain RunResult as simulate returned it)``."""
    import fedloom
    from fedloom import run_sim

    folder = tmp_path_factory.mktemp("digits-runs")
    plain = fedloom.simulate(task="digits", num_clients=2, rounds=2, seed=3, run_dir=str(folder / "plain"),
                             fraction_evaluate=1.0, tensorboard=True)
    assert run_sim.main(["--num-clients", "2", "--rounds", "2", "--seed", "3", "--run-dir",
                         str(folder / "qsgd4"), "--compression", "qsgd:4"]) == 0
    return folder, plain


@pytest.fixture(scope="session")
def shared_data() -> Path:
    require_data("mnist.npz")
    return SHARED_DATA


@pytest.fixture()
def task_identity():
    """Flower needs a run/task identity to build Messages outside a running app."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


@pytest.fixture()
def client_train_round(task_identity):
    """``run(run_config, arrays, partition_id=0, num_partitions=2)``: one round of the real
    ``client.app.train`` (server round 1, fresh client state); the reply's weights."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, Message, RecordDict

    from fedloom.client.app import train

    def run(run_config, arrays, partition_id=0, num_partitions=2):
        context = SimpleNamespace(run_config=run_config, state=RecordDict(),
                                  node_config={"partition-id": partition_id, "num-partitions": num_partitions})
        msg = Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=1, message_type="train")
        return train(msg, context).content["arrays"].to_torch_state_dict()

    return run
