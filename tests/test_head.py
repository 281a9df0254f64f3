"""freeze-classifier (FedBABU): the logits layer stays at its random init, the body trains."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from fedloom.privacy.accounting import ClientAccount
from fedloom.privacy.dp import SampleDPSettings, make_dp_ready, train_private
from fedloom.config import parse_run_config
from fedloom.tasks.base import DataSplit, TaskData, TaskOptions
from fedloom.tasks.head import classifier_layer, freeze_classifier, trainable
from fedloom.tasks.registry import get_task, load_task_data
from fedloom.tasks.training import evaluate, train_local


def fake_data(x_shape: tuple[int, ...], num_classes: int) -> TaskData:
    split = DataSplit(np.zeros((2, *x_shape), np.float32), np.zeros(2, np.int64))
    return TaskData(split, split, num_classes=num_classes, info={"channels": x_shape[0]})


@pytest.mark.parametrize(
    ("task", "x_shape", "options"),
    [
        ("digits", (64,), TaskOptions()),
        ("mnist", (1, 28, 28), TaskOptions()),
        ("mnist", (1, 28, 28), TaskOptions(mnist_model="dp-cnn")),
        ("medmnist", (3, 28, 28), TaskOptions(model_width=0.125)),
        ("pointcloud", (64, 3), TaskOptions(num_points=64, model_width=0.125)),
    ],
)
def test_the_classifier_is_the_layer_that_makes_the_logits(task, x_shape, options):
    torch.manual_seed(0)
    model = get_task(task, options).build_model(fake_data(x_shape, 7)).eval()
    layer = classifier_layer(model)
    assert layer.out_features == 7
    seen = []
    layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    logits = model(torch.randn(3, *x_shape))
    assert len(seen) == 1 and torch.equal(seen[0], logits)  # nothing comes after it


def test_reinit_gives_a_zero_classifier_random_weights_and_freezes_it():
    torch.manual_seed(0)
    model = get_task("medmnist", TaskOptions(model_width=0.125)).build_model(fake_data((3, 28, 28), 2))
    assert not classifier_layer(model).weight.any()  # the ResNet's zero init
    layer = freeze_classifier(model, reinit=True)
    assert layer.weight.abs().min() > 0 and not layer.weight.requires_grad and not layer.bias.requires_grad
    assert len(trainable(model)) == len(list(model.parameters())) - 2
    with pytest.raises(ValueError, match="freeze-classifier needs a model whose last layer is nn.Linear"):
        freeze_classifier(nn.Sequential(nn.Conv2d(1, 2, 3)))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_local_training_moves_the_body_only_and_still_learns(optimizer):
    task = get_task("digits")
    data = load_task_data("digits", "unused", "digits")
    torch.manual_seed(0)
    model = task.build_model(data)
    head = freeze_classifier(model, reinit=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss0 = evaluate(model, task, data.test)["loss"]
    lr = 0.05 if optimizer == "sgd" else 0.003
    train_local(model, task, data.train, epochs=2, batch_size=32, lr=lr, seed=1,
                optimizer=optimizer, proximal_mu=0.01)
    after = model.state_dict()
    assert torch.equal(head.weight, before["2.weight"]) and torch.equal(head.bias, before["2.bias"])
    assert not torch.equal(after["0.weight"], before["0.weight"])
    result = evaluate(model, task, data.test)
    assert result["loss"] < 0.5 * loss0 and result["accuracy"] > 0.85


def test_dp_sgd_leaves_a_frozen_classifier_alone():
    task = get_task("digits")
    data = load_task_data("digits", "unused", "digits")
    torch.manual_seed(0)
    model = make_dp_ready(task.build_model(data))
    freeze_classifier(model, reinit=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = SampleDPSettings(
        noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="rdp", target_epsilon=0.0,
        planned_rounds=1,
    )
    outcome = train_private(
        model, task, data.train.subset(np.arange(200)), settings=settings,
        account=ClientAccount("rdp", 1e-5), epochs=1, batch_size=20, lr=0.05, momentum=0.9, seed=3,
    )
    assert outcome.trained and outcome.steps == 10
    after = model.state_dict()
    assert torch.equal(after["2.weight"], before["2.weight"]) and torch.equal(after["2.bias"], before["2.bias"])
    assert not torch.equal(after["0.weight"], before["0.weight"])  # clipped, noised and applied
    assert not classifier_layer(model).weight.requires_grad  # still frozen for the next round (Opacus wraps a copy)


def test_run_config_key():
    assert parse_run_config({}).freeze_classifier is False
    cfg = parse_run_config({"freeze-classifier": "true"})
    assert cfg.freeze_classifier is True and cfg.to_run_config()["freeze-classifier"] is True
    with pytest.raises(ValueError, match="invalid freeze-classifier=.sometimes.; valid: true, 1, yes or false, 0, no"):
        parse_run_config({"freeze-classifier": "sometimes"})
