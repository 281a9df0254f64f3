"""run-config ``logit-adjustment``: local training adds ``tau * log(prior)`` of the client's
own labels to the logits inside the loss; predictions use the plain logits."""

import copy

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedloom.config import parse_run_config
from fedloom.tasks.base import DataSplit
from fedloom.tasks.digits import DigitsTask
from fedloom.tasks.logit_adjustment import label_log_prior
from fedloom.tasks.registry import load_task_data
from fedloom.tasks.training import train_local


def test_label_log_prior_is_the_laplace_smoothed_class_share():
    prior = label_log_prior(np.array([0, 0, 0, 1]), 3)
    assert prior.exp().tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    with pytest.raises(ValueError, match="one class index per example"):
        label_log_prior(np.zeros((4, 2)), 2)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2; got 0\.\.3"):
        label_log_prior(np.array([0, 3]), 3)


def test_the_shift_trains_like_a_shifted_bias():
    # Adding fixed offsets to the logits is adding them to the last bias: the same data,
    # seed and steps give the same weights, and biases that differ by the offsets.
    rng = np.random.default_rng(0)
    split = DataSplit(rng.random((40, 64)).astype(np.float32), rng.choice(3, 40, p=[0.7, 0.25, 0.05]))
    torch.manual_seed(0)
    adjusted = torch.nn.Linear(64, 3)
    shifted = copy.deepcopy(adjusted)
    offsets = 0.5 * label_log_prior(split.y, 3)
    with torch.no_grad():
        shifted.bias.add_(offsets)
    common = {"epochs": 3, "batch_size": 8, "lr": 0.1, "seed": 5}
    train_local(adjusted, DigitsTask(), split, logit_adjustment=0.5, **common)
    train_local(shifted, DigitsTask(), split, **common)
    torch.testing.assert_close(adjusted.weight, shifted.weight)
    torch.testing.assert_close(adjusted.bias + offsets, shifted.bias)


@pytest.mark.parametrize(("tau", "low", "high"), [(0.0, 0.85, 0.95), (1.0, 0.45, 0.55)])
def test_features_that_say_nothing_learn_the_prior_only_without_adjustment(tau, low, high):
    # Inputs all zero: only the bias can learn, and plain cross-entropy fits the 90/10 label
    # share; with tau = 1 the shift carries the prior and the model's own logits stay balanced.
    split = DataSplit(np.zeros((100, 64), np.float32), np.array([0] * 90 + [1] * 10))
    model = torch.nn.Linear(64, 2)
    with torch.no_grad():
        model.bias.zero_()
    train_local(model, DigitsTask(), split, epochs=200, batch_size=100, lr=0.5, logit_adjustment=tau)
    share_of_class_0 = float(torch.softmax(model.bias.detach(), dim=0)[0])
    assert low < share_of_class_0 < high


def test_bad_settings_are_one_line_naming_the_valid_ones():
    assert parse_run_config({}).logit_adjustment == 0.0
    assert parse_run_config({"logit-adjustment": 1}).logit_adjustment == 1.0
    with pytest.raises(ValueError, match=r"invalid logit-adjustment=-1.0; valid: >= 0"):
        parse_run_config({"logit-adjustment": -1})
    with pytest.raises(ValueError, match="does not work with dp=sample.*valid with dp=sample: 0"):
        parse_run_config({"logit-adjustment": 1, "dp": "sample"})
    with pytest.raises(ValueError, match="does not work with chestmnist.*multi-label; valid: 0"):
        parse_run_config({"task": "medmnist", "dataset": "chestmnist", "logit-adjustment": 1})
    parse_run_config({"task": "medmnist", "dataset": "pathmnist", "logit-adjustment": 1, "dp": "client",
                      "dp-noise": 1.0})


def test_a_client_round_uses_its_own_label_prior(tmp_path, client_train_round):
    # A label-skewed client trains on the shifted loss: its update differs from the plain one.
    data = load_task_data("digits", "unused", "digits")
    torch.manual_seed(0)
    state = ArrayRecord(DigitsTask().build_model(data).state_dict())
    weights = {}
    for tau in (0.0, 1.0):
        run_config = {"task": "digits", "lr": 0.05, "partition": "dirichlet:0.1", "logit-adjustment": tau,
                      "run-dir": str(tmp_path / str(tau))}
        weights[tau] = client_train_round(run_config, state, partition_id=0, num_partitions=4)
    moved = {k: float((weights[1.0][k] - weights[0.0][k]).abs().max()) for k in weights[0.0]}
    assert max(moved.values()) > 1e-3
