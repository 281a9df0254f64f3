"""PointNet classifier (Qi et al. 2017), normalised with GroupNorm or BatchNorm.

The published network normalises with BatchNorm, which mixes examples within
a batch; Opacus cannot compute per-sample gradients through it. GroupNorm
(Wu & He 2018, ``norm="group"``, the default) normalises each example on its
own, so DP-SGD works. ``norm="batch"`` is the paper's BatchNorm, for runs
without DP-SGD: it learns faster and reaches more
(``benchmarks/results/design_notes.md``). Its
running mean and variance are buffers of the model, so FedAvg averages them
with the weights. The
optional input transform (a 3x3 T-Net) and feature transform (a 64x64 T-Net)
are as in the paper; the paper's orthogonality regulariser on the feature
transform is not added (the task's loss sees only logits and labels).
Input: (B, P, 3) point clouds; output: (B, num_classes) logits.

Training: as in the paper, use Adam (``optimizer=adam``, lr 1e-3); SGD with full
up-axis rotation learns far more slowly (``benchmarks/results/design_notes.md``).
"""

from __future__ import annotations

import torch
from torch import nn

from .batchnorm import check_norm, norm_layer

TRANSFORMS = ("none", "input", "feature", "both")
DROPOUT = 0.3
MIN_CHANNELS_PER_GROUP = 64
MAX_GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at least 64 channels per group (up to 32 groups).

    Few channels per group matter here: with one channel per group (instance
    norm) the first layer's features, linear in x, y, z, would each be rescaled
    over the shape's points, erasing its proportions.
    """
    groups = max(1, min(MAX_GROUPS, channels // MIN_CHANNELS_PER_GROUP))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def _ch(base: int, width: float) -> int:
    return max(1, round(base * width))


def shared_mlp(channels: list[int], norm: str = "group") -> nn.Sequential:
    """Per-point MLP as 1x1 convolutions over (B, C, P), each followed by a norm and ReLU."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv1d(c_in, c_out, 1), norm_layer(c_out, norm, group_norm), nn.ReLU()]
    return nn.Sequential(*layers)


def head(channels: list[int], *, dropout: float = 0.0, norm: str = "group") -> nn.Sequential:
    """Fully connected layers with a norm and ReLU, up to (not incl.) the output layer."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Linear(c_in, c_out), norm_layer(c_out, norm, group_norm), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class TNet(nn.Module):
    """Predicts a k x k transform from the points (B, k, P); starts at the identity."""

    def __init__(self, k: int, width: float, norm: str = "group") -> None:
        super().__init__()
        self.k = k
        self.features = shared_mlp([k, _ch(64, width), _ch(128, width), _ch(1024, width)], norm)
        self.fc = head([_ch(1024, width), _ch(512, width), _ch(256, width)], norm=norm)
        self.out = nn.Linear(_ch(256, width), k * k)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.features(x).amax(dim=2)
        eye = torch.eye(self.k, device=x.device, dtype=x.dtype)
        return self.out(self.fc(g)).view(-1, self.k, self.k) + eye


class PointNet(nn.Module):
    """PointNet classification network; ``width`` scales every layer (1.0 = the paper's)."""

    def __init__(
        self, num_classes: int, *, transforms: str = "both", width: float = 1.0, norm: str = "group"
    ) -> None:
        super().__init__()
        if transforms not in TRANSFORMS:
            raise ValueError(
                f"invalid pointnet-transforms {transforms!r}; valid: {', '.join(TRANSFORMS)}"
            )
        if width <= 0:
            raise ValueError(f"invalid model-width {width}; valid: > 0")
        check_norm(norm, "pointnet-norm")
        c64 = _ch(64, width)
        self.input_tnet = TNet(3, width, norm) if transforms in ("input", "both") else None
        self.mlp1 = shared_mlp([3, c64, c64], norm)
        self.feature_tnet = TNet(c64, width, norm) if transforms in ("feature", "both") else None
        self.mlp2 = shared_mlp([c64, c64, _ch(128, width), _ch(1024, width)], norm)
        self.fc = head([_ch(1024, width), _ch(512, width), _ch(256, width)], dropout=DROPOUT, norm=norm)
        self.out = nn.Linear(_ch(256, width), num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = points.transpose(1, 2)  # (B, 3, P)
        if self.input_tnet is not None:
            x = torch.bmm(self.input_tnet(x).transpose(1, 2), x)
        x = self.mlp1(x)
        if self.feature_tnet is not None:
            x = torch.bmm(self.feature_tnet(x).transpose(1, 2), x)
        return self.out(self.fc(self.mlp2(x).amax(dim=2)))
