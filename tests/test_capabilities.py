"""Strategies declare what they can do where they are registered (or as a user class's
attributes); the config checks ask them instead of comparing names."""

import sys

import pytest

from fedloom.config import parse_run_config
from fedloom.strategies.registry import capabilities, check_strategy_config, min_replies, strategies_with


def test_registered_capabilities():
    assert strategies_with(lambda c: c.he_compatible) == ["fedavg", "fedprox"]
    assert strategies_with(lambda c: c.client_dp_compatible) == ["fedavg", "fedprox"]
    assert strategies_with(lambda c: c.needs_initial_loss) == ["qfedavg"]
    assert strategies_with(lambda c: c.proximal_term) == ["fedprox"]
    assert capabilities("bulyan").min_replies(2) == 11 == min_replies("bulyan", 2)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "caps_mod.py").write_text(
        "from flwr.serverapp.strategy import FedAvg\n"
        "class Mean(FedAvg):\n"
        "    he_compatible = True\n"
        "    client_dp_compatible = True\n"
        "    min_replies = 3\n"
        "class Robust(FedAvg):\n"
        "    min_replies = staticmethod(lambda f: 2 * f + 1)\n"
        "class Wrong(FedAvg):\n"
        "    he_compatible = 'yes'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "caps_mod"
    sys.modules.pop("caps_mod", None)


def test_a_user_class_declares_capabilities_as_attributes(user_module):
    caps = capabilities(f"{user_module}:Mean")
    assert caps.he_compatible and caps.client_dp_compatible and caps.min_replies(5) == 3
    assert capabilities(f"{user_module}:Robust").min_replies(2) == 5
    # the old name list refused every user strategy under --he
    check_strategy_config(parse_run_config({"strategy": f"{user_module}:Mean", "he": True}))
    with pytest.raises(ValueError, match="strategy 'caps_mod:Robust' does not work with --he.*: fedavg, fedprox"):
        check_strategy_config(parse_run_config({"strategy": f"{user_module}:Robust", "he": True}))
    with pytest.raises(ValueError, match="he_compatible='yes'.*valid: True, False"):
        capabilities(f"{user_module}:Wrong")


def test_client_dp_asks_the_strategy():
    check_strategy_config(parse_run_config({"strategy": "fedprox", "dp": "client", "dp-noise": 1.0}))
    with pytest.raises(ValueError, match="strategy 'fedmedian' does not work with dp=client"):
        check_strategy_config(parse_run_config({"strategy": "fedmedian", "dp": "client", "dp-noise": 1.0}))


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; valid: bulyan"):
        capabilities("fedsgd")
