"""``digits``: scikit-learn's bundled 8x8 handwritten digits (offline quickstart)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
from torch import nn

from .base import DataSplit, Task, TaskData

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class DigitsTask(Task):
    """1,797 8x8 grey images from the UCI digits set, shipped inside scikit-learn."""

    name = "digits"
    datasets = ("digits",)
    # ~144 examples per client: small batches and a larger step learn within 10 rounds.
    defaults = MappingProxyType({**Task.defaults, "lr": 0.05, "batch-size": 16})
    client_gpu_memory_gib = 0.6  # an MLP: the CUDA context is most of it

    def load(self, data_dir: Path, dataset: str) -> TaskData:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        del data_dir, dataset  # bundled with scikit-learn
        bunch = load_digits()
        x = (bunch.images.astype(np.float32) / 16.0 - 0.5) / 0.5
        x = x.reshape(-1, 64)
        y = bunch.target.astype(np.int64)
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
        )
        return TaskData(DataSplit(x_tr, y_tr), DataSplit(x_te, y_te), num_classes=10)

    def build_model(self, data: TaskData) -> nn.Module:
        return nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, data.num_classes)
        )
