"""Client-level DP: Poisson client sampling at a rate measured each round (issue 32)."""

from __future__ import annotations

from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedloom.privacy.accounting import EpsilonLedger, client_level_epsilon, make_accountant
from fedloom.strategies.private import ClientDPStrategy

DELTA = 1e-5


def client_dp(fraction: float, min_nodes: int, **kwargs) -> ClientDPStrategy:
    return ClientDPStrategy(
        FedAvg(fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=min_nodes, min_available_nodes=2),
        ledger=EpsilonLedger(), clipping="fixed", side="server", noise_multiplier=1.0, clipping_norm=0.5,
        target_epsilon=0.0, delta=DELTA, num_rounds=50, fraction_train=fraction, min_train_nodes=min_nodes,
        min_available_nodes=2, **kwargs,
    )


def grid_of(nodes: list[int]) -> Mock:
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = nodes
    return grid


def test_each_client_joins_independently_with_probability_q(task_identity):
    strategy = client_dp(0.1, 2)
    grid = grid_of(list(range(1, 101)))
    start = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    sizes, joined = [], np.zeros(101)
    for server_round in range(1, 201):
        sent = list(strategy.configure_train(server_round, start, ConfigRecord(), grid))
        sizes.append(len(sent))
        for m in sent:
            joined[m.metadata.dst_node_id] += 1
    # Binomial(100, 0.1): mean 10, sd 3; Flower's fixed sample would give 10 every round
    assert len(set(sizes)) > 5 and np.mean(sizes) == pytest.approx(10, abs=1.0)
    assert np.std(sizes) == pytest.approx(3.0, abs=0.6)
    assert joined[1:].min() > 0  # every client has its chance
    assert strategy.expected == pytest.approx(10.0)


def test_the_rate_is_measured_each_round_from_the_live_clients_and_accounted(task_identity):
    strategy = client_dp(0.2, 2, seeded_noise=True)
    start = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    trained = ArrayRecord({"w": Array(np.full(4, 0.01, np.float32))})
    for server_round, live in ((1, list(range(1, 11))), (2, list(range(1, 6)))):  # 5 clients drop out
        sent = list(strategy.configure_train(server_round, start, ConfigRecord(), grid_of(live)))
        replies = [Message(content=RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 1})}),
                           reply_to=m) for m in sent]
        strategy.aggregate_train(server_round, replies)
    # 10 live: 2 per round, q = 0.2; 5 live: max(int(5 * 0.2), 2) = 2, q = 0.4
    assert strategy.rates == [0.2, 0.4]
    opacus = make_accountant("rdp", [(strategy.noise, 0.2, 1), (strategy.noise, 0.4, 1)]).get_epsilon(delta=DELTA)
    assert strategy.ledger.population_epsilon == pytest.approx(opacus, rel=1e-12)
    fixed_rate = client_level_epsilon(noise_multiplier=strategy.noise, sample_rate=0.2, rounds=2, delta=DELTA)
    assert strategy.ledger.population_epsilon > fixed_rate + 0.5  # what the start-up rate recorded


def test_a_round_that_draws_nobody_releases_the_noise_alone(task_identity):
    strategy = client_dp(0.1, 1)
    strategy._uniform = lambda: (lambda: 1.0)  # nobody joins
    start = ArrayRecord({"w": Array(np.zeros(20_000, np.float32))})
    assert list(strategy.configure_train(1, start, ConfigRecord(), grid_of(list(range(1, 21))))) == []
    arrays, _ = strategy.aggregate_train(1, [])
    assert strategy.releases == 1 and strategy.rates == [pytest.approx(0.1)]
    # noise of an empty sum, z * C, over the expected count q * N = 2
    assert float(arrays["w"].numpy().std()) == pytest.approx(1.0 * 0.5 / 2, rel=0.03)


def test_the_validating_wrapper_hands_client_dp_a_round_that_drew_nobody(task_identity):
    # CI caught it: a Poisson draw of nobody ended the round in the validating wrapper,
    # so nothing was released and the ledger did not count the round.
    from fedloom.strategies.validation import ValidatingStrategy

    inner = client_dp(0.1, 1)
    inner._uniform = lambda: (lambda: 1.0)  # nobody joins
    strategy = ValidatingStrategy(inner, 10_000)
    start = ArrayRecord({"w": Array(np.zeros(8, np.float32))})
    assert list(strategy.configure_train(1, start, ConfigRecord(), grid_of(list(range(1, 21))))) == []
    arrays, _ = strategy.aggregate_train(1, [])
    assert arrays is not None and inner.releases == 1 and inner.ledger.population_epsilon > 0
