"""ResNet-18 layout with GroupNorm or BatchNorm for small medical images (28 to 224 px).

He et al. 2016's BasicBlock network. ``norm="group"`` (the default) replaces every
BatchNorm with GroupNorm (Wu & He 2018) so that Opacus can compute per-sample
gradients (BatchNorm mixes examples within a batch and is rejected by Opacus).
``norm="batch"`` keeps the BatchNorm of the published network and of MedMNIST v2's
reference ResNet-18, for runs without DP-SGD; :class:`tasks.batchnorm.BatchNorm`
keeps every array float, and the server calibrates its statistics each round
(``batchnorm-calibration``). The stem adapts to the
image size: a 3x3 stride-1 stem for 28 px (as MedMNIST v2 does for its 28 px
ResNet-18), stride 2 for 64 px, and the standard 7x7 stride-2 stem with max
pooling for 128 and 224 px. ``width`` scales the channels (64 = ResNet-18).

The classifier starts at zero, so the first logits are all 0 (loss log C) and
the first updates train the classifier before the features; with PyTorch's default
init the full-width network diverged on BreastMNIST (the alternatives measured:
``benchmarks/results/design_notes.md``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .batchnorm import check_norm, norm_layer

MAX_GROUPS = 32
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    return nn.GroupNorm(math.gcd(MAX_GROUPS, channels), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "group") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(c_out, norm, group_norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm_layer(c_out, norm, group_norm)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(c_out, norm, group_norm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def stem(in_channels: int, width: int, image_size: int, norm: str = "group") -> nn.Sequential:
    """The first layers, chosen so the first stage sees roughly 28-56 px."""
    if image_size <= 32:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False)]
    elif image_size <= 64:
        layers = [nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)]
    else:
        layers = [nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)]
    layers += [norm_layer(width, norm, group_norm), nn.ReLU()]
    if image_size > 64:
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet-18 layout (2-2-2-2 BasicBlocks) with GroupNorm or BatchNorm."""

    def __init__(
        self, in_channels: int, num_outputs: int, *, image_size: int = 28, width: int = 64,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"invalid ResNet width {width}; valid: >= 1")
        check_norm(norm, "resnet-norm")
        self.stem = stem(in_channels, width, image_size, norm)
        stages: list[nn.Module] = []
        c_in = width
        for i, blocks in enumerate(BLOCKS_PER_STAGE):
            c_out = width * 2**i
            for j in range(blocks):
                stages.append(BasicBlock(c_in, c_out, stride=2 if i > 0 and j == 0 else 1, norm=norm))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_outputs)
        nn.init.zeros_(self.fc.weight)  # first logits 0: see the module docstring
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))
