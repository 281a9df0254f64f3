"""The mnist task's model choice (``mnist-model``): McMahan CNN or a small DP-friendly CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedloom.config import DEFAULTS, parse_run_config
from fedloom.tasks.base import DataSplit, TaskData
from fedloom.tasks.registry import get_task


def fake_data() -> TaskData:
    split = DataSplit(np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64))
    return TaskData(split, split, num_classes=10)


@pytest.mark.parametrize(("name", "params"), [("mcmahan", 1_663_370), ("dp-cnn", 26_010)])
def test_mnist_models_shape_size_and_opacus_compatibility(name, params):
    cfg = parse_run_config({"task": "mnist", "mnist-model": name})
    model = get_task("mnist", cfg.task_options()).build_model(fake_data())
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert ModuleValidator.validate(model, strict=False) == []


def test_mnist_model_default_and_invalid_value():
    assert DEFAULTS["mnist-model"] == "auto"  # the task's: mcmahan, dp-cnn under DP-SGD
    assert parse_run_config({"task": "mnist"}).task_options().mnist_model == "mcmahan"
    private = parse_run_config({"task": "mnist", "dp": "sample", "dp-noise": 1.0})
    assert private.task_options().mnist_model == "dp-cnn"
    with pytest.raises(ValueError, match=r"invalid mnist-model='tiny'; valid: mcmahan, dp-cnn"):
        parse_run_config({"task": "mnist", "mnist-model": "tiny"})
