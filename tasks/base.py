"""The task interface: what every task module provides."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk and could not be downloaded."""


@dataclass(frozen=True)
class DataSplit:
    """Model-ready inputs ``x`` (float32) and labels ``y``.

    ``y`` is int64 class indices (N,), or float32 0/1 targets (N, L) for
    multi-label tasks; :meth:`Task.labels_for_partitioning` maps it to one int each.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> DataSplit:
        return DataSplit(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class TaskData:
    """A task's train and test splits plus what the model needs to know."""

    train: DataSplit
    test: DataSplit
    num_classes: int
    info: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskOptions:
    """Task settings from the run config; each task reads the fields it uses.

    ``image_size`` (medmnist): 28, 64, 128 or 224 px. ``num_points`` (pointcloud):
    points per shape. ``pointnet_transforms`` (pointcloud): none, input, feature
    or both. ``pointnet_norm`` (pointcloud): ``group`` (GroupNorm, works with
    DP-SGD) or ``batch`` (the paper's BatchNorm); ``resnet_norm`` (medmnist): the
    same choice for the ResNet-18. ``model_width`` (medmnist, pointcloud): channel multiplier, 1.0 is
    the published architecture. ``augment_rotation`` (pointcloud): train-time
    rotation about the up axis, uniform in +-this many degrees (180: any angle,
    as in PointNet; 0: none, for data aligned like ModelNet's test split).
    ``augment_images`` (medmnist): train-time random horizontal flips and shifts.
    ``mnist_model`` (mnist): ``mcmahan`` (McMahan et al. CNN) or ``dp-cnn`` (small
    tanh CNN of Opacus's MNIST example, for DP-SGD).
    """

    image_size: int = 28
    num_points: int = 1024
    pointnet_transforms: str = "both"
    pointnet_norm: str = "group"
    resnet_norm: str = "group"
    model_width: float = 1.0
    augment_rotation: float = 180.0
    augment_images: bool = False
    mnist_model: str = "mcmahan"


class Task(ABC):
    """One learning task. Subclasses are registered in :mod:`tasks.registry`.

    A task never reads Flower's Context: it gets typed arguments only.
    """

    name: str = ""
    #: Valid ``--dataset`` values; the first is the default.
    datasets: tuple[str, ...] = ()
    #: What each run-config key left at ``auto`` becomes for this task: its best
    #: configuration measured in ``benchmarks/`` (these are the keys that take ``auto``;
    #: a task replaces entries with ``{**Task.defaults, key: value}``, same types).
    defaults: Mapping[str, Any] = MappingProxyType({
        "lr": 0.01,
        "batch-size": 32,
        "local-epochs": 1,
        "optimizer": "sgd",
        "lr-schedule": "constant",
        "weight-decay": 0.0,
        "logit-adjustment": 0.0,
        "freeze-classifier": False,
        "model-width": 1.0,
        "mnist-model": "mcmahan",
        "resnet-norm": "group",
        "augment-images": False,
        "pointnet-norm": "group",
        "pointnet-transforms": "both",
        "augment-rotation": 180.0,
    })
    #: Under DP-SGD (``dp=sample``), replacements for the defaults it does not allow
    #: (BatchNorm, Adam, ...) or that it trains badly with.
    dp_sample_defaults: Mapping[str, Any] = MappingProxyType({})
    #: The keys :meth:`metrics` returns (a test keeps them equal).
    metric_names: tuple[str, ...] = ("accuracy",)
    #: Whether :meth:`load` puts a validation split in ``TaskData.info["val"]``.
    validation_split: bool = False
    #: Estimated GPU memory of one training client in GiB, its CUDA context included
    #: (``--client-gpus auto`` packs clients by it); see :meth:`gpu_memory_gib`.
    client_gpu_memory_gib: float = 1.0

    def gpu_memory_gib(self) -> float:
        """Estimated GPU memory of one training client (GiB) with this task's options."""
        return self.client_gpu_memory_gib

    def configure(self, options: TaskOptions) -> Task:
        """This task with ``options`` applied (tasks without options return ``self``)."""
        del options
        return self

    def resolve_dataset(self, dataset: str) -> str:
        """Return the dataset name to use, or raise ``ValueError`` listing valid ones."""
        if not dataset:
            return self.datasets[0]
        if dataset not in self.datasets:
            raise ValueError(
                f"unknown dataset {dataset!r} for task {self.name!r}; "
                f"valid: {', '.join(self.datasets)}"
            )
        return dataset

    @abstractmethod
    def load(self, data_dir: Path, dataset: str) -> TaskData:
        """Load the full data set from ``data_dir`` (downloading when online)."""

    @abstractmethod
    def build_model(self, data: TaskData) -> nn.Module:
        """A freshly initialised model for this task."""

    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def multi_label(self, dataset: str) -> bool:
        """Whether ``dataset``'s examples carry several 0/1 labels (not one class index)."""
        del dataset
        return False

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Train-time augmentation of one batch (identity by default)."""
        del generator
        return x

    def labels_for_partitioning(self, data: TaskData) -> np.ndarray:
        """One integer label per training example, used by label-skew partitioners."""
        return data.train.y

    def selectable_metrics(self) -> tuple[str, ...]:
        """Per-round metric keys a run can pick its best round by (``best-metric``):
        ``loss`` and :attr:`metric_names` on the test set, and the same prefixed
        ``val_`` when the task has a validation split."""
        names = ("loss", *self.metric_names)
        return (*(f"val_{n}" for n in names), *names) if self.validation_split else names

    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Task metrics from all test logits and labels (accuracy by default)."""
        return {"accuracy": float((logits.argmax(dim=1) == y).float().mean())}

    def metric_statistics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """What a client reports from its test share, beyond :meth:`metrics`, for the
        metrics that are not an example-weighted mean of the clients' values (AUC, mean
        class accuracy). The server gathers each key's arrays from all clients and calls
        :meth:`metrics_from_statistics`. None by default: accuracy and loss average exactly."""
        del logits, y
        return {}

    def metrics_from_statistics(self, pooled: dict[str, list[np.ndarray]]) -> dict[str, float]:
        """Metrics of all clients' test shares together, from each :meth:`metric_statistics`
        key's arrays (one per client); they replace the averages of the clients' values."""
        del pooled
        return {}
