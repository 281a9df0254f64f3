"""Differential privacy units: accounting, DP-SGD rounds, model checks, server wrapper."""

from __future__ import annotations

import math
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from opacus.accountants.analysis import rdp as rdp_analysis
from torch import nn

from fedloom import run_sim
from fedloom.privacy.accounting import (
    ClientAccount,
    EpsilonLedger,
    calibrate_noise,
    client_level_epsilon,
    epsilon,
    poisson_plan,
)
from fedloom.privacy.dp import DPLossError, DPModelError, SampleDPSettings, make_dp_ready, train_private
from fedloom.strategies.private import (
    EPSILON_KEY,
    EXHAUSTED_KEY,
    PARTITION_KEY,
    PrivacyBudgetExhausted,
    SampleDPStrategy,
)
from fedloom.tasks.base import DataSplit, TaskData, TaskOptions
from fedloom.tasks.registry import get_task, load_task_data

DELTA = 1e-5


def independent_epsilon(noise: float, rate: float, steps: int, delta: float = DELTA) -> float:
    """Opacus's RDP analysis called directly (not through fedloom's code)."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = rdp_analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=orders)
    return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def settings(**overrides) -> SampleDPSettings:
    values = dict(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, accountant="rdp",
                  target_epsilon=0.0, planned_rounds=2)
    return SampleDPSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def digits():
    task = get_task("digits")
    return task, load_task_data("digits", "", "digits")


def test_poisson_plan_matches_opacus_make_private():
    # 100 examples in batches of 16: 7 batches, so q = 1/7 and 7 steps per epoch.
    assert poisson_plan(100, 16, 2) == (pytest.approx(1 / 7), 14)


def test_epsilon_of_a_history_matches_opacus_analysis():
    history = [(1.1, 0.01, 300), (1.1, 0.01, 200)]
    assert epsilon(history, delta=DELTA, accountant="rdp") == pytest.approx(
        independent_epsilon(1.1, 0.01, 500), rel=0.01
    )
    assert epsilon([], delta=DELTA, accountant="rdp") == 0.0
    assert client_level_epsilon(noise_multiplier=1.0, sample_rate=0.3, rounds=20, delta=DELTA) == (
        pytest.approx(independent_epsilon(1.0, 0.3, 20), rel=0.01)
    )


def test_calibrated_noise_spends_at_most_the_target():
    noise = calibrate_noise(target_epsilon=3.0, delta=DELTA, sample_rate=0.02, steps=500,
                            accountant="rdp")
    spent = independent_epsilon(noise, 0.02, 500)
    assert 2.9 < spent <= 3.0


def test_account_round_trips_through_its_state_dict():
    account = ClientAccount("rdp", DELTA, [(1.0, 0.1, 30)])
    restored = ClientAccount("rdp", DELTA)
    restored.load_state_dict(account.state_dict())
    assert restored.history == [(1.0, 0.1, 30)] and restored.epsilon() == account.epsilon()
    with pytest.raises(ValueError, match="accountant 'rdp'"):
        ClientAccount("prv", DELTA).load_state_dict(account.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -1.0}, "invalid noise multiplier=-1.0; valid: >= 0"),
        ({"max_grad_norm": 0.0}, "invalid max grad norm=0.0; valid: > 0"),
        ({"delta": 1.0}, "invalid delta=1.0; valid: 0 < delta < 1"),
        ({"accountant": "gdp"}, "invalid accountant 'gdp'; valid: rdp, prv"),
        ({"noise_multiplier": 0.0}, "needs a noise multiplier > 0 or a target epsilon > 0"),
    ],
)
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**kwargs)


def test_two_rounds_are_cumulative_and_equal_opacus_accounting(digits):
    task, data = digits
    model = task.build_model(data)
    split = data.train.subset(np.arange(40))
    account = ClientAccount("rdp", DELTA)
    for seed in (1, 2):
        outcome = train_private(model, task, split, settings=settings(), account=account,
                                epochs=1, batch_size=8, lr=0.05, momentum=0.9, seed=seed)
        assert outcome.trained and outcome.steps == 5
    # Two rounds of 5 steps at q = 1/5.
    assert outcome.epsilon == pytest.approx(independent_epsilon(1.0, 0.2, 10), rel=0.01)
    assert sum(s for *_, s in account.history) == 10
    keys = list(model.state_dict())
    assert keys == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert not any("_module" in k for k in keys)


def test_tiny_client_survives_empty_poisson_batches(digits):
    task, data = digits
    model = task.build_model(data)
    split = data.train.subset(np.arange(3))  # batch 1: q = 1/3, P(empty batch) = 8/27
    account = ClientAccount("rdp", DELTA)
    before = [p.detach().clone() for p in model.parameters()]
    outcome = train_private(model, task, split, settings=settings(), account=account,
                            epochs=10, batch_size=1, lr=0.05, momentum=0.0, seed=0)
    assert outcome.trained and outcome.steps == 30 and sum(s for *_, s in account.history) == 30
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_round_past_the_budget_is_refused(digits):
    task, data = digits
    model = task.build_model(data)
    split = data.train.subset(np.arange(40))
    one_round = independent_epsilon(1.0, 0.2, 5)
    budget = settings(target_epsilon=(one_round + independent_epsilon(1.0, 0.2, 10)) / 2)
    account = ClientAccount("rdp", DELTA)
    first = train_private(model, task, split, settings=budget, account=account, epochs=1,
                          batch_size=8, lr=0.05, momentum=0.9, seed=0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    second = train_private(model, task, split, settings=budget, account=account, epochs=1,
                           batch_size=8, lr=0.05, momentum=0.9, seed=1)
    assert first.trained and not second.trained
    assert second.epsilon == first.epsilon <= budget.target_epsilon
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("epochs", [1, 2])
def test_calibrated_rounds_end_at_or_below_the_target(digits, epochs):
    # The noise is calibrated for all the steps of the planned rounds, every local
    # epoch included: the planned rounds fit the budget and the next one does not.
    task, data = digits
    model = task.build_model(data)
    split = data.train.subset(np.arange(40))
    budget = settings(noise_multiplier=0.0, target_epsilon=2.0, planned_rounds=3)
    account = ClientAccount("rdp", DELTA)
    outcomes = [
        train_private(model, task, split, settings=budget, account=account, epochs=epochs,
                      batch_size=8, lr=0.05, momentum=0.9, seed=s)
        for s in range(4)
    ]
    assert [o.trained for o in outcomes] == [True, True, True, False]
    assert 1.9 < outcomes[2].epsilon <= 2.0
    assert outcomes[2].steps == 5 * epochs


class ScaleWithBuffer(nn.Module):
    """A trainable layer with a buffer: Opacus has neither a grad sampler nor a fix."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))
        self.register_buffer("running", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_batchnorm_is_replaced_with_a_warning_and_unfixable_layers_fail():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    with pytest.warns(UserWarning, match=r"1 \(BatchNorm2d -> GroupNorm\)"):
        fixed = make_dp_ready(model)
    assert isinstance(fixed[1], nn.GroupNorm)
    with pytest.raises(DPModelError, match="trainable layer with buffers"):
        make_dp_ready(nn.Sequential(nn.Linear(2, 2), ScaleWithBuffer()))


def reply(node: int, metrics: dict, arrays: bool = True) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays:
        content["arrays"] = ArrayRecord([np.ones(2, dtype=np.float32)])
    msg = Mock(spec=Message)
    msg.has_error.return_value = False
    msg.content = content
    msg.metadata.src_node_id = node
    return msg


def test_server_wrapper_records_epsilons_and_leaves_spent_clients_out():
    inner = Mock()
    inner.aggregate_train.return_value = (ArrayRecord(), MetricRecord())
    ledger = EpsilonLedger(population=3)
    strategy = SampleDPStrategy(inner, ledger=ledger, target_epsilon=2.0)
    replies = [
        reply(10, {"num-examples": 5, "train_loss": 1.0, PARTITION_KEY: 0, EPSILON_KEY: 1.5,
                   EXHAUSTED_KEY: 0}),
        reply(11, {"num-examples": 5, PARTITION_KEY: 1, EPSILON_KEY: 1.9, EXHAUSTED_KEY: 1},
              arrays=False),
    ]
    strategy.aggregate_train(1, replies)
    (_, passed), _ = inner.aggregate_train.call_args
    assert len(passed) == 1
    assert dict(passed[0].content["metrics"]) == {"num-examples": 5, "train_loss": 1.0}
    assert strategy.exhausted == {1} and len(strategy.rejected) == 1
    # Client 2 never took part: it counts as epsilon 0 in the mean.
    assert ledger.summary() == {"epsilon": 1.9, "epsilon_mean": pytest.approx(3.4 / 3)}
    assert [r["partition_id"] for r in ledger.take_rows()] == [0, 1]


def test_server_wrapper_drops_a_report_above_the_target_and_stops_when_all_are_spent():
    inner = Mock()
    inner.aggregate_train.return_value = (None, None)
    strategy = SampleDPStrategy(inner, ledger=EpsilonLedger(population=2), target_epsilon=2.0)
    over = reply(1, {"num-examples": 5, PARTITION_KEY: 0, EPSILON_KEY: 2.5, EXHAUSTED_KEY: 0})
    assert strategy.aggregate_train(1, [over]) == (None, None)
    assert len(strategy.rejected) == 1 and not inner.aggregate_train.called
    spent = [
        reply(n, {"num-examples": 5, PARTITION_KEY: n, EPSILON_KEY: 1.9, EXHAUSTED_KEY: 1},
              arrays=False)
        for n in (0, 1)
    ]
    with pytest.raises(PrivacyBudgetExhausted, match="all 2 clients have spent"):
        strategy.aggregate_train(2, spent)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dp", "local"], "invalid dp='local'; valid: none, sample, client"),
        (["--dp", "sample"], "dp=sample needs dp-noise > 0 or dp-target-epsilon > 0"),
        (["--dp", "sample", "--dp-noise", "-1"], "invalid dp-noise=-1.0"),
        (["--dp", "sample", "--dp-noise", "1", "--dp-delta", "0"], "invalid dp-delta=0.0; valid: 0 < delta < 1"),
        (["--dp", "sample", "--dp-noise", "1", "--dp-max-grad-norm", "0"], "invalid dp-max-grad-norm=0.0; valid: > 0"),
        (["--dp", "sample", "--dp-noise", "1", "--dp-accountant", "gdp"], "invalid dp-accountant='gdp'; valid: rdp, prv"),
        (["--dp", "client", "--dp-noise", "1", "--dp-clipping", "median"], "invalid dp-clipping='median'; valid: fixed, adaptive"),
        (["--dp", "client", "--dp-noise", "1", "--dp-clipping-side", "both"], "invalid dp-clipping-side='both'"),
        (["--dp", "client", "--dp-noise", "1", "--dp-clipping-side", "client", "--compression", "fp16"],
         "dp-clipping-side=client clips the plain update on the client and cannot be combined with compression"),
        (["--dp", "sample", "--dp-target-epsilon", "1e-9"], "target epsilon 1e-09 at delta 1e-05 is out of reach"),
        (["--dp", "client", "--dp-target-epsilon", "1e-9"], "target epsilon 1e-09 at delta 1e-05 is out of reach"),
        (["--dp", "client", "--dp-noise", "1", "--strategy", "krum"],
         "strategy 'krum' does not work with dp=client"),
        (["--dp", "client", "--dp-noise", "1", "--strategy", "fedadam"],
         "strategies that work with dp=client: fedavg, fedprox"),
    ],
)
def test_bad_dp_options_exit_2_with_one_line(argv, message, capsys):
    assert run_sim.main(["--num-clients", "3", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_default_run_has_no_privacy():
    assert math.isclose(DELTA, 1e-5)
    from fedloom.config import parse_run_config

    cfg = parse_run_config({})
    assert cfg.dp == "none" and cfg.sample_dp() is None and cfg.dp_delta == DELTA
    assert cfg.dp_seeded_noise is False  # secret noise unless asked
    seeded = parse_run_config({"dp": "sample", "dp-noise": 1.0, "dp-seeded-noise": "true"})
    assert seeded.sample_dp().seeded_noise is True



def mixed_label_data(task_name: str):
    """16 random examples with mixed labels, so their gradients differ in size and direction."""
    rng = np.random.default_rng(0)
    shapes = {"digits": (64,), "mnist": (1, 28, 28), "pointcloud": (64, 3)}
    x = rng.random((16, *shapes.get(task_name, (1, 28, 28))))
    if task_name == "medmnist-multilabel":
        y = rng.integers(0, 2, (16, 3)).astype(np.float32)
    else:
        y = rng.integers(0, 3, 16)
    split = DataSplit(x.astype(np.float32), y)
    return TaskData(split, split, num_classes=10 if task_name in shapes else 3, info={"channels": 1})


@pytest.mark.parametrize("task_name", ["digits", "mnist", "medmnist", "medmnist-multilabel", "pointcloud"])
def test_dp_sgd_step_is_the_mean_of_clipped_per_example_gradients(task_name, monkeypatch):
    # One full batch (q = 1), lr 1, no momentum, negligible noise: the step must be
    # the mean of each example's gradient clipped to C, computed here one example at a
    # time. A loss that Opacus cannot split per example (MedMnistLoss before it took
    # ``reduction``) clips by the batch-mean gradient instead, which does not bound any
    # one example's influence.
    options = TaskOptions(model_width=0.125, num_points=64, pointnet_transforms="both", mnist_model="dp-cnn")
    task = get_task(task_name.split("-")[0], options)
    monkeypatch.setattr(task, "augment", lambda x, generator: x)  # the same inputs as below
    data = mixed_label_data(task_name)
    torch.manual_seed(0)
    model = make_dp_ready(task.build_model(data))
    for module in model.modules():  # the same network as below: no dropout masks
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    with torch.no_grad():  # move off the zero-initialised classifier so every layer gets gradients
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = [p.detach().clone() for p in model.parameters()]
    grads = []
    for i in range(len(data.train)):
        model.zero_grad()
        x, y = torch.from_numpy(data.train.x[i : i + 1]), torch.from_numpy(np.asarray(data.train.y[i : i + 1]))
        task.loss_fn()(model(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    norms = torch.stack([g.norm() for g in grads])
    clip = float(norms.median())  # about half the examples are clipped
    expected = -torch.stack([g * min(1.0, clip / float(g.norm())) for g in grads]).mean(dim=0)
    outcome = train_private(
        model, task, data.train, settings=settings(noise_multiplier=1e-6, max_grad_norm=clip),
        account=ClientAccount("rdp", DELTA), epochs=1, batch_size=len(data.train), lr=1.0,
        momentum=0.0, seed=0,
    )
    assert outcome.trained and outcome.steps == 1
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    torch.testing.assert_close(step, expected, rtol=1e-3, atol=1e-5 * clip)


class BatchMeanLoss(nn.Module):
    """A loss that has ``reduction`` but always returns the batch mean."""

    reduction = "mean"

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits, y)


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (nn.Module, r"Module.reduction is None; valid: mean, sum"),
        (BatchMeanLoss, r"BatchMeanLoss with reduction='none' returned shape \(\) for 2 examples; valid: \(2,\)"),
    ],
)
def test_a_loss_that_cannot_give_per_example_losses_is_refused(digits, monkeypatch, loss, message):
    task, data = digits
    monkeypatch.setattr(task, "loss_fn", loss)
    model = task.build_model(data)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DPLossError, match=message):
        train_private(model, task, data.train.subset(np.arange(8)), settings=settings(),
                      account=ClientAccount("rdp", DELTA), epochs=1, batch_size=4, lr=0.05,
                      momentum=0.0, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_batch_mean_loss_fails_dp_sample_at_start_up(monkeypatch, capsys):
    from fedloom.tasks.digits import DigitsTask

    monkeypatch.setattr(DigitsTask, "loss_fn", lambda self: BatchMeanLoss())
    assert run_sim.main(["--num-clients", "3", "--dp", "sample", "--dp-noise", "1"]) == 2
    err = capsys.readouterr().err
    assert "BatchMeanLoss with reduction='none' returned shape () for 2 examples" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("third", ["failed", "missing"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_client_dp_noise_covers_the_replies_actually_averaged(side, third, task_identity):
    # 3 clients drawn (q = 1); the third fails or never replies (straggler, rejected). The
    # release is the fixed-denominator estimate (Poisson sampling): the sum of the 2 clipped
    # updates plus noise z * C, divided by the expected count 3, so the mean moves 2/3 of
    # the update and the noise is z * C / 3; and the round is still released (Flower's
    # wrapper alone skips it on any error).
    from flwr.app import Error
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg

    from fedloom.strategies.private import ClientDPStrategy

    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2, 3]
    strategy = ClientDPStrategy(
        FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3),
        ledger=EpsilonLedger(), clipping="fixed", side=side, noise_multiplier=1.0, clipping_norm=0.5,
        target_epsilon=0.0, delta=DELTA, num_rounds=3, fraction_train=1.0, min_train_nodes=3,
        min_available_nodes=3,
    )
    start = ArrayRecord({"w": Array(np.zeros(50_000, np.float32))})
    sent = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    update = np.full(50_000, 0.1 / np.sqrt(50_000), np.float32)  # norm 0.1 < C: not clipped
    trained = ArrayRecord({"w": Array(update)})
    replies = [
        Message(content=RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 7})}), reply_to=m)
        for m in sent[:2]
    ]
    if third == "failed":
        replies.append(Message(Error(code=0, reason="client crashed"), reply_to=sent[2]))
    np.random.seed(0)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.releases == 1
    noise = arrays["w"].numpy() - update * 2 / 3
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.005)
    assert float(noise.std()) == pytest.approx(1.0 * 0.5 / 3, rel=0.03)


def test_half_an_epoch_of_dp_sgd_takes_half_the_steps_and_accounts_for_them(digits):
    # 40 examples in batches of 8: q = 1/5, 5 steps per epoch; half an epoch: 3 steps.
    task, data = digits
    assert poisson_plan(40, 8, 0.5) == (pytest.approx(0.2), 3)
    assert poisson_plan(40, 8, 2.5) == (pytest.approx(0.2), 13)
    account = ClientAccount("rdp", DELTA)
    outcome = train_private(task.build_model(data), task, data.train.subset(np.arange(40)),
                            settings=settings(), account=account, epochs=0.5, batch_size=8,
                            lr=0.05, momentum=0.9, seed=0)
    assert outcome.trained and outcome.steps == 3 and sum(s for *_, s in account.history) == 3
    assert outcome.epsilon == pytest.approx(independent_epsilon(1.0, 0.2, 3), rel=0.01)


@pytest.mark.parametrize("seeded", [False, True])
def test_dp_sgd_noise_is_secret_unless_seeded_noise_is_asked_for(digits, seeded):
    # Noise drawn from the public run seed could be regenerated by anyone who knows it.
    task, data = digits
    split = data.train.subset(np.arange(40))
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = task.build_model(data)
        train_private(model, task, split, settings=settings(seeded_noise=seeded),
                      account=ClientAccount("rdp", DELTA), epochs=1, batch_size=8, lr=0.05,
                      momentum=0.0, seed=5)
        models.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(models[0], models[1]) is seeded


@pytest.mark.parametrize("seeded", [False, True])
def test_client_dp_noise_is_secret_unless_seeded_and_leaves_numpys_stream_alone(seeded, task_identity):
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg

    from fedloom.strategies.private import ClientDPStrategy

    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    start = ArrayRecord({"w": Array(np.zeros(100, np.float32))})
    trained = ArrayRecord({"w": Array(np.full(100, 0.01, np.float32))})
    released, after = [], []
    for _ in range(2):
        strategy = ClientDPStrategy(
            FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2), ledger=EpsilonLedger(),
            clipping="fixed", side="server", noise_multiplier=1.0, clipping_norm=0.5, target_epsilon=0.0,
            delta=DELTA, num_rounds=3, fraction_train=1.0, min_train_nodes=2, min_available_nodes=2,
            seeded_noise=seeded,
        )
        sent = list(strategy.configure_train(1, start, ConfigRecord(), grid))
        replies = [Message(content=RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 3})}),
                           reply_to=m) for m in sent]
        np.random.seed(0)
        arrays, _ = strategy.aggregate_train(1, replies)
        released.append(arrays["w"].numpy())
        after.append(np.random.random())
    assert np.array_equal(released[0], released[1]) is seeded
    if not seeded:  # the secret draw does not move the run's own numpy stream
        np.random.seed(0)
        assert after == [np.random.random()] * 2


def test_adaptive_clipping_follows_andrew_et_al_and_noises_with_the_norm_that_clipped(task_identity):
    # 20 clients whose updates all have norm 2 > C = 1: every update is clipped, so the
    # norm must grow (Flower 1.41 shrank it), and the round's noise must be sized for
    # C = 1, the norm that clipped it (Flower used the already updated norm).
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg

    from fedloom.strategies.private import ClientDPStrategy

    m, size = 20, 50_000
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(range(1, m + 1))
    strategy = ClientDPStrategy(
        FedAvg(fraction_evaluate=0.0, min_train_nodes=m, min_available_nodes=m), ledger=EpsilonLedger(),
        clipping="adaptive", side="server", noise_multiplier=1.0, clipping_norm=1.0, target_epsilon=0.0,
        delta=DELTA, num_rounds=3, fraction_train=1.0, min_train_nodes=m, min_available_nodes=m,
        seeded_noise=True,
    )
    start = ArrayRecord({"w": Array(np.zeros(size, np.float32))})
    sent = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    update = np.full(size, 2.0 / np.sqrt(size), np.float32)
    replies = [Message(content=RecordDict({"arrays": ArrayRecord({"w": Array(update)}),
                                           "metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)
               for msg in sent]
    np.random.seed(0)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.dp.clipping_norm > 1.05  # exp(0.2 * 0.5) = 1.105 with no count noise
    noise = arrays["w"].numpy() - update / 2  # the mean of the updates clipped to norm 1
    assert float(noise.std()) == pytest.approx(strategy.dp.noise_multiplier * 1.0 / m, rel=0.03)


def test_a_client_dp_strategy_resumes_its_ledger_and_adaptive_norm_from_plain_state(task_identity):
    # Checkpoints hold state_dicts: a fresh ClientDPStrategy loaded with one continues
    # with the same releases, epsilon and (adaptive clipping) norm, once Flower's wrapper
    # is built on the resumed run's first round.
    import io

    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg

    from fedloom.strategies.private import ClientDPStrategy
    from fedloom.strategies.state import load_strategy_state, strategy_state

    def make() -> ClientDPStrategy:
        return ClientDPStrategy(
            FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2), ledger=EpsilonLedger(),
            clipping="adaptive", side="server", noise_multiplier=1.0, clipping_norm=0.5, target_epsilon=0.0,
            delta=DELTA, num_rounds=3, fraction_train=1.0, min_train_nodes=2, min_available_nodes=2,
            seeded_noise=True,
        )

    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    strategy = make()
    start = ArrayRecord({"w": Array(np.zeros(10, np.float32))})
    sent = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    trained = ArrayRecord({"w": Array(np.full(10, 0.01, np.float32))})
    replies = [Message(content=RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 3})}),
                       reply_to=m) for m in sent]
    np.random.seed(0)
    strategy.aggregate_train(1, replies)
    assert strategy.dp.clipping_norm != 0.5
    buf = io.BytesIO()
    torch.save(strategy_state(strategy), buf)
    buf.seek(0)
    resumed = make()
    load_strategy_state(resumed, torch.load(buf, weights_only=True))
    assert resumed.releases == 1 and resumed.ledger.summary() == strategy.ledger.summary()
    list(resumed.configure_train(2, start, ConfigRecord(), grid))
    assert resumed.dp.clipping_norm == strategy.dp.clipping_norm
