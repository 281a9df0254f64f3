"""BatchNorm statistics of a model measured on data, and pooled over clients.

FedAvg averages each client's running mean and variance, but those were
measured on the client's own local model and data; under label skew their
average is not the statistics of the averaged model on all the data. The
clients can measure the new global model instead: each reports, per BatchNorm
layer and channel, the sum and sum of squares of the layer's inputs over its
training data and the count; the server pools them into the exact mean and
variance over all clients' data (:func:`pooled_moments`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import DataSplit
from .batches import batch_bounds

#: Normalisations of the models that offer BatchNorm: ``group`` (GroupNorm, works with
#: DP-SGD) and ``batch`` (BatchNorm, as the published networks; not with DP-SGD).
NORMS = ("group", "batch")


def check_norm(norm: str, key: str) -> None:
    """Raise the one-line error for a ``norm`` not in :data:`NORMS`; ``key`` names the option."""
    if norm not in NORMS:
        raise ValueError(f"invalid {key} {norm!r}; valid: {', '.join(NORMS)}")


def norm_layer(channels: int, norm: str, group_norm: Callable[[int], nn.Module]) -> nn.Module:
    """:class:`BatchNorm` for ``norm="batch"``, else the model's own ``group_norm(channels)``."""
    return BatchNorm(channels) if norm == "batch" else group_norm(channels)


class BatchNorm(nn.Module):
    """BatchNorm over (B, C), (B, C, P) or (B, C, H, W), as torch's ``BatchNorm1d`` and
    ``BatchNorm2d`` but without their int64 step counter: every array of the model is
    then float, as averaging, compression and encryption expect. Training needs
    batches of two or more examples."""

    batch_statistics = True  # see is_batch_norm
    running_mean: torch.Tensor  # buffers (register_buffer), as torch's own _NormBase declares them
    running_var: torch.Tensor

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=self.training, momentum=self.momentum, eps=self.eps,
        )


def is_batch_norm(module: nn.Module) -> bool:
    """BatchNorm: normalises over the examples of a batch (torch's or ``batch_statistics``)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or getattr(module, "batch_statistics", False)


def batch_norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if is_batch_norm(m)}


@torch.no_grad()
def batchnorm_sums(
    model: nn.Module, split: DataSplit, *, batch_size: int, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Per BatchNorm layer ``name``: ``name.sum`` and ``name.sumsq`` (per channel, float64)
    of the layer's inputs over ``split`` and ``name.count``, in training mode (each layer
    normalised with its batch's statistics, as in training), without augmentation."""
    layers = batch_norm_layers(model)
    sums: dict[str, np.ndarray] = {}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = inputs[0].detach().double()
            dims = [0] if x.ndim == 2 else [0, *range(2, x.ndim)]
            add = {"sum": x.sum(dims), "sumsq": (x * x).sum(dims), "count": torch.tensor([x.numel() / x.shape[1]])}
            for key, value in add.items():
                sums[f"{name}.{key}"] = sums.get(f"{name}.{key}", 0) + value.cpu().numpy()
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.to(device).train()
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # train mode moves running stats
    try:
        for start, stop in batch_bounds(len(split), batch_size, min_size=2):
            model(torch.from_numpy(split.x[start:stop]).to(device))
    finally:
        for h in handles:
            h.remove()
        model.load_state_dict(saved)
        model.train(was_training)
    return sums


def pooled_moments(reports: Iterable[Mapping[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: mean and unbiased variance over all reports' data (sums add up exactly).
    Layers with fewer than 2 values in total are left out."""
    total: dict[str, np.ndarray] = {}
    for report in reports:
        for key, value in report.items():
            total[key] = total.get(key, 0) + np.asarray(value, dtype=np.float64)
    moments = {}
    for key in total:
        if not key.endswith(".count"):
            continue
        name = key[: -len(".count")]
        n = float(total[key].sum())
        if n < 2 or f"{name}.sum" not in total or f"{name}.sumsq" not in total:
            continue
        mean = total[f"{name}.sum"] / n
        var = np.maximum(total[f"{name}.sumsq"] / n - mean * mean, 0.0) * (n / (n - 1))
        moments[name] = (mean, var)
    return moments
