"""Device independence: randomness is drawn on the device of the tensors it perturbs.

The CPU tests run everywhere; the ``cuda`` ones need a GPU and skip without one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom.privacy.accounting import ClientAccount
from fedloom.privacy.dp import SampleDPSettings, device_generator, train_private
from fedloom.tasks.registry import get_task, load_task_data


@pytest.fixture(scope="module")
def digits():
    return get_task("digits"), load_task_data("digits", "", "digits")


def _settings(seeded: bool) -> SampleDPSettings:
    return SampleDPSettings(noise_multiplier=1.0, target_epsilon=0.0, max_grad_norm=1.0,
                            delta=1e-5, accountant="rdp", planned_rounds=1, seeded_noise=seeded)


def test_device_generator_lives_on_the_asked_device_and_repeats_from_its_seed():
    a, b = device_generator("cpu", 7), device_generator(torch.device("cpu"), 7)
    assert a.device == torch.device("cpu")
    assert torch.equal(torch.randn(5, generator=a), torch.randn(5, generator=b))


@pytest.mark.parametrize("seeded", [False, True])
def test_dp_sgd_hands_opacus_a_noise_generator_on_the_training_device(digits, seeded, monkeypatch):
    from opacus import PrivacyEngine

    from fedloom.privacy.secure_noise import SecureGaussian

    seen = []
    make_private = PrivacyEngine.make_private

    def spy(self, **kwargs):
        source = kwargs["noise_generator"]  # the CSPRNG draws on each gradient's own device
        seen.append(torch.device("cpu") if isinstance(source, SecureGaussian) and not seeded else source.device)
        return make_private(self, **kwargs)

    monkeypatch.setattr(PrivacyEngine, "make_private", spy)
    task, data = digits
    train_private(task.build_model(data), task, data.train.subset(np.arange(32)),
                  settings=_settings(seeded), account=ClientAccount("rdp", 1e-5), epochs=1,
                  batch_size=8, lr=0.05, momentum=0.0, seed=1, device="cpu")
    assert seen == [torch.device("cpu")]


@pytest.mark.cuda
@pytest.mark.parametrize("seeded", [False, True])
def test_dp_sgd_trains_on_cuda(digits, seeded):
    task, data = digits
    model = task.build_model(data)
    before = [p.detach().clone() for p in model.parameters()]
    outcome = train_private(model, task, data.train.subset(np.arange(64)),
                            settings=_settings(seeded), account=ClientAccount("rdp", 1e-5),
                            epochs=1, batch_size=8, lr=0.05, momentum=0.0, seed=1, device="cuda")
    assert outcome.trained and outcome.steps > 0
    after = list(model.parameters())
    assert all(p.device.type == "cpu" for p in after)  # the model handed back stays where it was
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
