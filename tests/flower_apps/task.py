"""The app's model and data: an MLP on scikit-learn's 8x8 digits (no fedloom imports)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def Net() -> nn.Module:  # noqa: N802 (the name Flower's templates use)
    """64 -> 128 -> 10: the architecture every participant of the federation agrees on."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def load_data(partition_id: int | None = None, num_partitions: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This partition's training data (every ``num_partitions``-th example), or the test
    split when ``partition_id`` is None. Pixels scaled to [-1, 1]."""
    bunch = load_digits()
    x = ((bunch.images.astype(np.float32) / 16.0 - 0.5) / 0.5).reshape(-1, 64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target)
    if partition_id is None:
        return torch.from_numpy(x_te), torch.from_numpy(y_te).long()
    keep = slice(partition_id, None, num_partitions)
    return torch.from_numpy(x_tr[keep]), torch.from_numpy(y_tr[keep]).long()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, epochs: int, batch_size: int) -> float:
    """Plain SGD; the mean training loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def test(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy."""
    model.eval()
    logits = model(x)
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()
