"""run-config ``weight-decay``: the clients' local optimizers add ``weight_decay * param``
to every gradient (torch's L2 penalty), in plain training and under DP-SGD."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedloom.privacy.accounting import ClientAccount
from fedloom.privacy.dp import SampleDPSettings, train_private
from fedloom.config import parse_run_config
from fedloom.tasks.base import DataSplit
from fedloom.tasks.digits import DigitsTask
from fedloom.tasks.registry import load_task_data
from fedloom.tasks.training import make_optimizer


@pytest.mark.parametrize(("name", "expected"), [("sgd", [0.95, -1.9]), ("adam", [0.9, -1.9])])
def test_weight_decay_acts_with_a_zero_gradient(name, expected):
    # SGD: p - lr * wd * p. Adam's first step is lr * sign(wd * p), whatever its size.
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer([param], name, lr=0.1, momentum=0.0, weight_decay=0.5)
    param.grad = torch.zeros(2)
    opt.step()
    assert param.detach().tolist() == pytest.approx(expected)
    assert parse_run_config({}).weight_decay == 0.0
    with pytest.raises(ValueError, match=r"invalid weight-decay=-0.1; valid: >= 0"):
        parse_run_config({"weight-decay": -0.1})


def test_dp_sgd_adds_weight_decay_to_the_noised_gradient():
    # One full batch with the same seeded noise: the steps differ by exactly -lr * wd * p.
    rng = np.random.default_rng(0)
    split = DataSplit(rng.random((16, 64)).astype(np.float32), rng.integers(0, 10, 16))
    task = DigitsTask()
    settings = SampleDPSettings(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                                target_epsilon=0.0, planned_rounds=1, seeded_noise=True)
    torch.manual_seed(0)
    start = task.build_model(SimpleNamespace(num_classes=10, info={}))
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.1 * torch.randn_like(p))
    after = {}
    for wd in (0.0, 0.5):
        model = copy.deepcopy(start)
        outcome = train_private(model, task, split, settings=settings, account=ClientAccount("rdp", 1e-5),
                                epochs=1, batch_size=len(split), lr=0.1, momentum=0.0, seed=3, weight_decay=wd)
        assert outcome.trained and outcome.steps == 1
        after[wd] = [p.detach() for p in model.parameters()]
    for p0, plain, decayed in zip(start.parameters(), after[0.0], after[0.5]):
        torch.testing.assert_close(decayed - plain, -0.1 * 0.5 * p0.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dp", ["none", "sample"])
def test_a_client_round_uses_the_run_configs_weight_decay(tmp_path, dp, client_train_round):
    data = load_task_data("digits", "unused", "digits")
    torch.manual_seed(0)
    state = ArrayRecord(DigitsTask().build_model(data).state_dict())
    norms = {}
    for wd in (0.0, 1.0):
        run_config = {"task": "digits", "lr": 0.05, "momentum": 0.0, "weight-decay": wd, "dp": dp,
                      "dp-noise": 0.5, "run-dir": str(tmp_path / str(wd))}
        weights = client_train_round(run_config, state)
        norms[wd] = float(torch.cat([w.flatten() for w in weights.values()]).norm())
    # About 45 steps at lr 0.05 shrink the weights by (1 - 0.05)^45 ~ 0.1 beyond what the data do.
    assert norms[1.0] < 0.5 * norms[0.0]
