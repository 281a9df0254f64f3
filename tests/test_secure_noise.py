"""DP noise from the OS's CSPRNG, on the tensors' device (issue 32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedloom.privacy import secure_noise
from fedloom.privacy.secure_noise import SUMMED, SecureGaussian


def test_noise_is_gaussian_with_the_requested_deviation():
    x = SecureGaussian().noise(2.0, (400_000,), "cpu", torch.float64).numpy()
    assert abs(x.mean()) < 0.02 and x.std() == pytest.approx(2.0, rel=0.01)
    # fourth moment of a Gaussian: 3 sigma**4; tails: P(|x| > 2 sigma) = 4.55%
    assert np.mean(x**4) / x.var() ** 2 == pytest.approx(3.0, rel=0.05)
    assert np.mean(np.abs(x) > 4.0) == pytest.approx(0.0455, rel=0.05)


def test_the_bits_come_from_os_urandom_and_no_two_draws_repeat(monkeypatch):
    source = SecureGaussian()
    a, b = source.noise(1.0, (1000,), "cpu"), source.noise(1.0, (1000,), "cpu")
    assert not torch.equal(a, b)
    monkeypatch.setattr(secure_noise.os, "urandom", lambda n: bytes(n))  # all-zero bits
    zeros = source.noise(1.0, (1000,), "cpu")
    assert torch.all(zeros == zeros[0])  # one value: the bits decide everything
    # u1 = 0.5 / 2**53: radius r = sqrt(-2 ln u1), angle 0, so of the 4 Gaussians
    # summed two are r cos 0 = r and two r sin 0 = 0; halved: r
    radius = np.sqrt(-2 * np.log(0.5 / 2**53))
    assert SUMMED == 4 and float(zeros[0]) == pytest.approx(radius, rel=1e-6)


@pytest.mark.cuda
def test_noise_is_drawn_on_the_gpu():
    ref = torch.zeros(1000, device="cuda")
    assert SecureGaussian().noise_like(1.0, ref).device.type == "cuda"


def test_dp_sgd_noise_comes_from_the_csprng_unless_seeded(monkeypatch):
    from fedloom.privacy.accounting import ClientAccount
    from fedloom.privacy.dp import SampleDPSettings, make_dp_ready, train_private
    from fedloom.tasks.registry import get_task, load_task_data

    data = load_task_data("digits", "", "", None)
    task = get_task("digits")
    drawn: list[torch.Size] = []
    original = SecureGaussian.noise_like

    def spy(self, std, reference):
        drawn.append(reference.shape)
        assert std == pytest.approx(1.3 * 1.0)
        return original(self, std, reference)

    monkeypatch.setattr(SecureGaussian, "noise_like", spy)
    split = type(data.train)(data.train.x[:64], data.train.y[:64])
    for seeded in (False, True):
        model = make_dp_ready(task.build_model(data))
        settings = SampleDPSettings(noise_multiplier=1.3, max_grad_norm=1.0, delta=1e-5, accountant="rdp",
                                    target_epsilon=0.0, planned_rounds=1, seeded_noise=seeded)
        outcome = train_private(model, task, split, settings=settings, account=ClientAccount("rdp", 1e-5),
                                epochs=1, batch_size=32, lr=0.1, momentum=0.0, seed=3)
        params = sum(1 for p in model.parameters() if p.requires_grad)
        assert len(drawn) == (0 if seeded else outcome.steps * params)
        drawn.clear() if not seeded else None


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_client_level_noise_comes_from_the_csprng(clipping, monkeypatch, task_identity):
    from unittest.mock import Mock

    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg

    from fedloom.privacy.accounting import EpsilonLedger
    from fedloom.strategies.private import ClientDPStrategy

    calls = []

    def fake(self, std, shape, dtype):
        calls.append(shape)
        return np.zeros(shape, dtype)

    monkeypatch.setattr(SecureGaussian, "numpy_noise", fake)
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    strategy = ClientDPStrategy(
        FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2), ledger=EpsilonLedger(),
        clipping=clipping, side="server", noise_multiplier=1.0, clipping_norm=10.0, target_epsilon=0.0,
        delta=1e-5, num_rounds=3, fraction_train=1.0, min_train_nodes=2, min_available_nodes=2,
    )
    start = ArrayRecord({"w": Array(np.zeros(100, np.float32))})
    trained = ArrayRecord({"w": Array(np.full(100, 0.01, np.float32))})
    sent = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    replies = [Message(content=RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=m) for m in sent]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert (100,) in calls  # the model's noise, plus the clipped count's when adaptive
    assert len(calls) == (1 if clipping == "fixed" else 2)
    np.testing.assert_allclose(arrays["w"].numpy(), 0.01, rtol=1e-6)  # zero noise: the mean
