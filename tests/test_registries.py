import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Krum, QFedAvg, Strategy

from fedloom.strategies.registry import (
    StrategyParams,
    build_strategy,
    min_replies,
    register_strategy,
    resolve_strategy,
    strategy_names,
)
from fedloom.tasks.digits import DigitsTask
from tests.test_compression_strategy import global_arrays, grid, reply, task_identity  # noqa: F401
from fedloom.tasks.registry import get_task, register_task, task_names

ALL_STRATEGIES = [
    "bulyan", "fedadagrad", "fedadam", "fedavg", "fedavgm", "fedmedian", "fedprox",
    "fedtrimmedavg", "fedyogi", "krum", "multikrum", "qfedavg",
]


def test_task_registry_lists_valid_names():
    assert {"digits", "mnist"} <= set(task_names())
    assert get_task("mnist").name == "mnist"
    with pytest.raises(ValueError, match="unknown task 'mnst'; valid: digits, "):
        get_task("mnst")


def test_registering_a_taken_task_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_task(DigitsTask())


def test_every_named_strategy_builds_a_flower_strategy():
    assert strategy_names() == ALL_STRATEGIES
    params = StrategyParams(proximal_mu=0.1, client_lr=0.02, num_malicious=1)
    for name in ALL_STRATEGIES:
        assert isinstance(build_strategy(name, params), Strategy), name
    prox = build_strategy("fedprox", params)
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.1
    adam = build_strategy("fedadam", params)
    assert isinstance(adam, FedAdam) and adam.eta_l == 0.02
    assert isinstance(build_strategy("krum", params), Krum)
    assert isinstance(build_strategy("qfedavg", params), QFedAvg)


def test_min_replies_for_byzantine_robust_strategies():
    assert min_replies("krum", 2) == 7
    assert min_replies("bulyan", 1) == 7
    assert min_replies("fedavg", 5) == 1


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; valid: bulyan, fedadagrad"):
        resolve_strategy("fedsgd")


def test_registering_a_taken_strategy_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("fedavg")(lambda p: FedAvg())


def test_user_strategy_from_a_file_outside_the_packages(tmp_path):
    path = tmp_path / "my_strategies.py"
    path.write_text(textwrap.dedent('''
        from flwr.serverapp.strategy import FedAvg

        class HalfAvg(FedAvg):
            """A user's own strategy: FedAvg with a custom attribute."""
            def __init__(self, fraction_train=1.0, min_train_nodes=2, **kwargs):
                super().__init__(fraction_train=fraction_train, min_train_nodes=min_train_nodes, **kwargs)
                self.custom = "yes"

        class NotAStrategy:
            pass
    '''))
    strategy = build_strategy(f"{path}:HalfAvg", StrategyParams(fraction_train=0.5))
    assert type(strategy).__name__ == "HalfAvg"
    assert strategy.fraction_train == 0.5 and strategy.custom == "yes"
    with pytest.raises(ValueError, match="must subclass flwr.serverapp.strategy.Strategy"):
        resolve_strategy(f"{path}:NotAStrategy")
    with pytest.raises(ValueError, match="has no attribute 'Missing'"):
        resolve_strategy(f"{path}:Missing")
    with pytest.raises(ValueError, match="cannot import strategy module 'no_such_pkg.mod'"):
        resolve_strategy("no_such_pkg.mod:Thing")


def test_the_readme_strategy_example_moves_halfway_from_round_1(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# my_strategies.py\n.*?)```", readme, re.S).group(1)
    (tmp_path / "my_strategies.py").write_text(code)
    strategy = build_strategy(f"{tmp_path / 'my_strategies.py'}:DampedFedAvg",
                              StrategyParams(min_train_nodes=2, min_available_nodes=2))
    start = global_arrays()
    sent = list(strategy.configure_train(1, start, ConfigRecord(), grid([5, 6])))
    local = ArrayRecord({k: Array(v.numpy() + 2) for k, v in start.items()})
    arrays, _ = strategy.aggregate_train(1, [reply(m, local, 10) for m in sent])
    for k, v in arrays.items():
        np.testing.assert_allclose(v.numpy(), start[k].numpy() + 1)
