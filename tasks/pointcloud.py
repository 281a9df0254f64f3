"""``pointcloud``: PointNet on ModelNet10 / ModelNet40 (loaders in :mod:`tasks.modelnet`).

Clouds are (N, P, 3), z-up, each centred in the unit sphere. Train batches are
augmented as in PointNet's training script: a random rotation about the up
axis (any angle by default; ``augment-rotation`` narrows it, since ModelNet's
shapes are aligned and full rotation slows learning), a random isotropic scale,
and clipped Gaussian jitter per point.
Metrics: overall ``accuracy`` and ``mean_class_accuracy``.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import nn

from .base import DataSplit, Task, TaskData, TaskOptions
from .batchnorm import check_norm
from .metrics import class_counts, mean_class_accuracy, mean_recall, overall_accuracy
from .modelnet import DATASETS, load_modelnet
from .pointnet import TRANSFORMS, PointNet

SCALE_RANGE = (0.8, 1.25)
JITTER_SIGMA = 0.01
JITTER_CLIP = 0.05


def rotate_about_z(points: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each cloud (B, P, 3) by its angle (B,) (radians) about the z (up) axis."""
    c, s = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rot = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    return points @ rot.transpose(1, 2).to(points.dtype)


def augment_batch(
    points: torch.Tensor,
    generator: torch.Generator,
    *,
    max_angle: float = math.pi,
    scale_range: tuple[float, float] = SCALE_RANGE,
    jitter_sigma: float = JITTER_SIGMA,
    jitter_clip: float = JITTER_CLIP,
) -> torch.Tensor:
    """Up-axis rotation uniform in +-``max_angle`` (radians), uniform scale, clipped jitter."""
    b = points.shape[0]
    angles = (2 * torch.rand(b, generator=generator) - 1) * max_angle
    low, high = scale_range
    scales = low + (high - low) * torch.rand(b, 1, 1, generator=generator)
    noise = torch.randn(points.shape, generator=generator) * jitter_sigma
    jitter = noise.clamp(-jitter_clip, jitter_clip).to(points.dtype)
    return rotate_about_z(points, angles) * scales.to(points.dtype) + jitter


class PointCloudTask(Task):
    """PointNet classification of ModelNet shapes."""

    name = "pointcloud"
    datasets = DATASETS
    metric_names = ("accuracy", "mean_class_accuracy")
    # ModelNet10's best row (benchmarks/results/pointcloud_batchnorm_1024_wd_la.md): PointNet
    # at width 0.5 without T-Nets, calibrated BatchNorm, FedBABU, Adam 1e-3 with a cosine
    # decay and weight decay 1e-4, batch 8, no rotation (ModelNet is aligned), logit
    # adjustment; 0.9097 mean of three seeds. Under DP-SGD: GroupNorm and SGD.
    defaults = MappingProxyType({
        **Task.defaults, "lr": 0.001, "batch-size": 8, "optimizer": "adam", "lr-schedule": "cosine",
        "weight-decay": 1e-4, "logit-adjustment": 1.0, "freeze-classifier": True, "model-width": 0.5,
        "pointnet-norm": "batch", "pointnet-transforms": "none", "augment-rotation": 0.0,
    })
    dp_sample_defaults = MappingProxyType(
        {"pointnet-norm": "group", "optimizer": "sgd", "lr": 0.01, "logit-adjustment": 0.0}
    )

    def __init__(
        self,
        *,
        num_points: int = 1024,
        transforms: str = "both",
        width: float = 1.0,
        rotation: float = 180.0,
        norm: str = "group",
    ) -> None:
        if num_points < 1:
            raise ValueError(f"invalid num-points {num_points}; valid: >= 1")
        if transforms not in TRANSFORMS:
            raise ValueError(
                f"invalid pointnet-transforms {transforms!r}; valid: {', '.join(TRANSFORMS)}"
            )
        if width <= 0:
            raise ValueError(f"invalid model-width {width}; valid: > 0")
        if not 0 <= rotation <= 180:
            raise ValueError(f"invalid augment-rotation {rotation}; valid: 0 <= degrees <= 180")
        check_norm(norm, "pointnet-norm")
        self.num_points, self.transforms, self.width = num_points, transforms, width
        self.rotation, self.norm = rotation, norm

    client_gpu_memory_gib = 1.5  # PointNet over 1024 points, batches of 32

    def configure(self, options: TaskOptions) -> PointCloudTask:
        return PointCloudTask(
            num_points=options.num_points,
            transforms=options.pointnet_transforms,
            width=options.model_width,
            rotation=options.augment_rotation,
            norm=options.pointnet_norm,
        )

    def load(self, data_dir: Path, dataset: str) -> TaskData:
        clouds = load_modelnet(data_dir, dataset, self.num_points)
        return TaskData(
            DataSplit(clouds.x_train, clouds.y_train),
            DataSplit(clouds.x_test, clouds.y_test),
            num_classes=len(clouds.class_names),
            info={"class_names": list(clouds.class_names), "num_points": self.num_points},
        )

    def build_model(self, data: TaskData) -> nn.Module:
        return PointNet(data.num_classes, transforms=self.transforms, width=self.width, norm=self.norm)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_batch(x, generator, max_angle=math.radians(self.rotation))

    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        pred, truth = logits.argmax(dim=1).numpy(), y.numpy()
        num_classes = int(logits.shape[1]) if logits.ndim == 2 else 0
        return {
            "accuracy": overall_accuracy(pred, truth),
            "mean_class_accuracy": mean_class_accuracy(pred, truth, num_classes),
        }

    def metric_statistics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """Correct predictions and examples per class: summed, the mean class accuracy of all shares."""
        correct, total = class_counts(logits.argmax(dim=1).numpy(), y.numpy(), int(logits.shape[1]))
        return {"class_correct": correct, "class_total": total}

    def metrics_from_statistics(self, pooled: dict[str, list[np.ndarray]]) -> dict[str, float]:
        correct, total = np.sum(pooled["class_correct"], axis=0), np.sum(pooled["class_total"], axis=0)
        return {"mean_class_accuracy": mean_recall(correct, total)}
