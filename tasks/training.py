"""Local train and test loops shared by every task."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .base import DataSplit, Task
from .batches import batch_bounds
from .batchnorm import is_batch_norm
from .head import trainable
from .logit_adjustment import label_log_prior

#: Valid values of the ``optimizer`` run-config key (local training).
OPTIMIZERS = ("sgd", "adam")
#: Valid values of the ``lr-schedule`` run-config key (client lr over the rounds).
LR_SCHEDULES = ("constant", "cosine")


def compute_device() -> str:
    """Where this process trains and evaluates models: ``cuda`` when a GPU is visible (a
    client actor sees the GPU Ray assigned to it), else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def scheduled_lr(lr: float, schedule: str, server_round: int, total_rounds: int) -> float:
    """The client learning rate of ``server_round`` (1-based) of ``total_rounds``.

    ``constant``: ``lr`` every round. ``cosine``: ``lr * (1 + cos(pi * (r - 1) / R)) / 2``,
    from ``lr`` in round 1 down towards 0 in the last round (Loshchilov & Hutter's
    cosine annealing over rounds, without restarts).
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = min(max(server_round - 1, 0), total_rounds) / max(total_rounds, 1)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"invalid lr-schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}")


def proximal_term(model: nn.Module, global_params: Sequence[torch.Tensor]) -> torch.Tensor:
    """FedProx's ||w - w_global||^2 over trainable parameters (Li et al. 2020)."""
    total = torch.zeros((), device=global_params[0].device if global_params else "cpu")
    for param, ref in zip(model.parameters(), global_params, strict=True):
        total = total + (param - ref).pow(2).sum()
    return total


def make_optimizer(
    params: Iterable[nn.Parameter], name: str, *, lr: float, momentum: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """A fresh local optimizer: ``sgd`` (with ``momentum``) or ``adam``.

    Adam (Kingma & Ba 2015) uses ``lr`` as its step size and PyTorch's default
    betas; ``momentum`` is ignored. Its moment estimates start from zero every
    round (they are not part of the model, so they are never aggregated).
    ``weight_decay`` is torch's: ``weight_decay * param`` is added to each gradient
    (an L2 penalty; for Adam the coupled form, not AdamW).
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"invalid optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


@contextlib.contextmanager
def seeded_torch(seed: int, device: str = "cpu") -> Iterator[None]:
    """Seed torch's global RNG for the block and restore it after.

    Dropout draws from the global RNG, not from a passed generator; without
    this, a client's round depends on what its Ray actor ran before.
    """
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def epoch_orders(num_examples: int, epochs: float, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """The example order of each (partial) epoch: ``epochs`` = 2.5 gives two fresh
    permutations and the first half (rounded up) of a third; 0.5 gives half of one.

    Whole epochs draw exactly what a plain ``for _ in range(epochs)`` loop draws.
    """
    if epochs <= 0:
        raise ValueError(f"invalid epochs={epochs!r}; valid: > 0")
    whole = math.floor(epochs)
    for _ in range(whole):
        yield torch.randperm(num_examples, generator=generator)
    if epochs > whole:
        yield torch.randperm(num_examples, generator=generator)[: math.ceil((epochs - whole) * num_examples)]


def train_local(
    model: nn.Module,
    task: Task,
    split: DataSplit,
    *,
    epochs: float,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    proximal_mu: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    logit_adjustment: float = 0.0,
) -> float:
    """Train ``model`` in place with ``optimizer`` (see :func:`make_optimizer`); mean loss.

    ``epochs`` may be fractional (see :func:`epoch_orders`). ``logit_adjustment`` (tau > 0):
    the loss sees the logits plus ``tau * log`` of ``split``'s label prior
    (:mod:`tasks.logit_adjustment`), and the mean loss returned is that adjusted loss.
    """
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = make_optimizer(trainable(model), optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = task.loss_fn()
    x_all = torch.from_numpy(split.x)
    y_all = torch.from_numpy(split.y)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    min_size = 2 if any(is_batch_norm(m) for m in model.modules()) else 1  # no batch of one
    total, count = 0.0, 0
    offsets: torch.Tensor | None = None
    with seeded_torch(seed + 1, device):
        for order in epoch_orders(len(split), epochs, generator):
            if len(order) < min_size:
                raise ValueError(
                    f"the model's BatchNorm layers need batches of 2 or more examples, but this "
                    f"client trains on {len(order)} per epoch; use GroupNorm (pointnet-norm=group, resnet-norm=group) "
                    "or give each client more data"
                )
            for start, stop in batch_bounds(len(order), batch_size, min_size):
                idx = order[start:stop]
                xb = task.augment(x_all[idx], generator).to(device)
                yb = y_all[idx].to(device)
                opt.zero_grad()
                logits = model(xb)
                if logit_adjustment:
                    if offsets is None:
                        offsets = logit_adjustment * label_log_prior(split.y, logits.shape[1]).to(device)
                    logits = logits + offsets
                loss = loss_fn(logits, yb)
                objective = loss
                if proximal_mu:
                    objective = loss + 0.5 * proximal_mu * proximal_term(model, global_params)
                objective.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def predict(
    model: nn.Module, task: Task, split: DataSplit, *, batch_size: int = 512, device: str = "cpu"
) -> tuple[torch.Tensor, float]:
    """All logits of ``model`` on ``split`` (on the CPU) and the mean loss."""
    model.to(device).eval()
    loss_fn = task.loss_fn()
    logits, total = [], 0.0
    for start in range(0, len(split), batch_size):
        xb = torch.from_numpy(split.x[start : start + batch_size]).to(device)
        yb = torch.from_numpy(split.y[start : start + batch_size]).to(device)
        out = model(xb)
        total += float(loss_fn(out, yb)) * len(yb)
        logits.append(out.cpu())
    return (torch.cat(logits) if logits else torch.empty(0)), total / max(len(split), 1)


def evaluate(
    model: nn.Module, task: Task, split: DataSplit, *, batch_size: int = 512, device: str = "cpu"
) -> dict[str, float]:
    """Loss and task metrics of ``model`` on ``split``."""
    logits, loss = predict(model, task, split, batch_size=batch_size, device=device)
    return {**task.metrics(logits, torch.from_numpy(np.asarray(split.y))), "loss": loss}
