"""``medmnist``: any 2D MedMNIST v2 dataset (Yang et al. 2023) with a ResNet-18 (GroupNorm or BatchNorm).

Classes, task type and channels come from the ``medmnist`` package's ``INFO``
table when the package is installed, otherwise from the same facts built into
:mod:`tasks.medmnist_info` (the package is not a dependency: installing it pulls
in torchvision and a CUDA build of torch). Data are the official npz files
(``<name>.npz`` for 28 px, ``<name>_64.npz``, ``_128``, ``_224`` for larger
sizes) read from ``data_dir`` or ``data_dir/medmnist``; downloaded from the
official URLs when missing and online.
The train split trains, the test split is the reported test set; the val split
is loaded into ``TaskData.info["val"]`` for users who want model selection.
"""

from __future__ import annotations

import importlib.util
import urllib.request
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import DatasetNotFoundError, DataSplit, Task, TaskData, TaskOptions
from .batchnorm import check_norm
from .medmnist_info import builtin_info
from .metrics import MULTI_LABEL, TASK_TYPES, medmnist_accuracy, medmnist_auc, pooled_auc
from .resnet import ResNet

IMAGE_SIZES = (28, 64, 128, 224)
DEFAULT_DATASET = "breastmnist"
RESNET18_WIDTH = 64
DOWNLOAD_TIMEOUT_S = 60


def package_info() -> dict[str, dict[str, Any]] | None:
    """``medmnist.INFO`` from the installed package's ``info.py``, or None without it.

    The module is loaded on its own because ``import medmnist`` also imports its
    torchvision-based dataset classes, which this project does not install.
    """
    try:
        spec = importlib.util.find_spec("medmnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_fedloom_medmnist_info", path)
    if not path.is_file() or info_spec is None or info_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return dict(module.INFO)


@lru_cache(maxsize=1)
def medmnist_info() -> dict[str, dict[str, Any]]:
    """MedMNIST metadata: the package's ``INFO`` when installed, else the built-in table."""
    return package_info() or builtin_info()


def datasets_2d() -> tuple[str, ...]:
    """Names of the 2D MedMNIST datasets, the default (BreastMNIST) first."""
    names = sorted(n for n in medmnist_info() if not n.endswith("3d"))
    return (DEFAULT_DATASET, *[n for n in names if n != DEFAULT_DATASET])


def npz_name(dataset: str, image_size: int) -> str:
    """``breastmnist.npz`` at 28 px, ``breastmnist_64.npz`` etc. above."""
    return f"{dataset}.npz" if image_size == 28 else f"{dataset}_{image_size}.npz"


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        tmp.write_bytes(response.read())
    tmp.rename(target)


def find_or_download_npz(data_dir: Path, dataset: str, image_size: int) -> Path:
    """Path of the npz file; downloads into ``data_dir/medmnist`` when it is missing."""
    name = npz_name(dataset, image_size)
    for folder in (data_dir, data_dir / "medmnist"):
        if (folder / name).is_file():
            return folder / name
    target = data_dir / "medmnist" / name
    key = "url" if image_size == 28 else f"url_{image_size}"
    url = medmnist_info()[dataset].get(key)
    try:
        if not url:
            raise OSError(f"MedMNIST lists no {image_size} px file for {dataset}")
        _download(str(url), target)
    except OSError as exc:
        raise DatasetNotFoundError(
            f"{name} not found: put it in {target.parent} (download failed: {exc})"
        ) from None
    return target


def to_model_input(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]."""
    x = images.astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    if x.shape[1] != channels:
        raise ValueError(f"images have {x.shape[1]} channels, MedMNIST INFO says {channels}")
    return np.ascontiguousarray((x - 0.5) / 0.5)


def to_targets(labels: np.ndarray, task_type: str) -> np.ndarray:
    """(N, 1) class indices -> int64 (N,); multi-label (N, L) -> float32 0/1."""
    if task_type == MULTI_LABEL:
        return labels.astype(np.float32)
    return labels.reshape(-1).astype(np.int64)


def load_medmnist_npz(path: Path, task_type: str, channels: int) -> dict[str, DataSplit]:
    """The ``train``, ``val`` and ``test`` splits of an official MedMNIST npz."""
    with np.load(path) as f:
        missing = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")
                   if f"{s}_{k}" not in f]
        if missing:
            raise ValueError(f"{path} is not a MedMNIST npz: missing {', '.join(missing)}")
        return {
            s: DataSplit(
                to_model_input(f[f"{s}_images"], channels),
                to_targets(f[f"{s}_labels"], task_type),
            )
            for s in ("train", "val", "test")
        }


def partition_labels(y: np.ndarray, task_type: str) -> np.ndarray:
    """One int per example: the class, or for multi-label 0 = no label, 1 + first label."""
    if task_type != MULTI_LABEL:
        return y.astype(np.int64)
    positive = y > 0.5
    return np.where(positive.any(axis=1), positive.argmax(axis=1) + 1, 0).astype(np.int64)


#: ``augment-images``: shifts of up to this fraction of the side, in pixels.
SHIFT_FRACTION = 0.1


def flip_and_shift(x: torch.Tensor, generator: torch.Generator, *, max_shift: int) -> torch.Tensor:
    """Random horizontal flips and translations of up to ``max_shift`` px (edge-replicated)
    of a batch ``(B, C, H, W)``, as in the usual CIFAR-style crop-and-flip."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


class MedMnistTask(Task):
    """A 2D MedMNIST dataset chosen by ``--dataset``; ResNet-18 model (GroupNorm or BatchNorm)."""

    name = "medmnist"
    metric_names = ("accuracy", "auc")
    validation_split = True
    # BreastMNIST run L (benchmarks/results/breastmnist.md): best mean validation AUC,
    # test ACC 0.880 / AUC 0.922 over three seeds.
    defaults = MappingProxyType({
        **Task.defaults, "lr": 0.02, "local-epochs": 2, "lr-schedule": "cosine", "weight-decay": 5e-4,
        "model-width": 0.5, "resnet-norm": "batch", "augment-images": True,
    })
    dp_sample_defaults = MappingProxyType({"resnet-norm": "group"})

    def __init__(
        self, *, image_size: int = 28, width: float = 1.0, augment: bool = False, norm: str = "group"
    ) -> None:
        if image_size not in IMAGE_SIZES:
            raise ValueError(
                f"invalid image-size {image_size}; valid: {', '.join(map(str, IMAGE_SIZES))}"
            )
        if width <= 0:
            raise ValueError(f"invalid model-width {width}; valid: > 0")
        check_norm(norm, "resnet-norm")
        self.image_size = image_size
        self.width = width
        self.augment_images = augment
        self.norm = norm

    def gpu_memory_gib(self) -> float:
        """ResNet-18 activations grow with the pixels: ~1.1 GiB at 28 px, ~7.4 GiB at 224."""
        return 1.0 + 0.1 * (self.image_size / 28) ** 2

    def configure(self, options: TaskOptions) -> MedMnistTask:
        return MedMnistTask(
            image_size=options.image_size, width=options.model_width, augment=options.augment_images,
            norm=options.resnet_norm,
        )

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.augment_images:
            return x
        return flip_and_shift(x, generator, max_shift=max(1, round(SHIFT_FRACTION * x.shape[-1])))

    @property
    def datasets(self) -> tuple[str, ...]:  # type: ignore[override]  # Task declares a class attribute
        return datasets_2d()

    def load(self, data_dir: Path, dataset: str) -> TaskData:
        meta = medmnist_info()[dataset]
        task_type, channels = str(meta["task"]), int(meta["n_channels"])
        if task_type not in TASK_TYPES:
            raise ValueError(f"{dataset}: unsupported MedMNIST task type {task_type!r}")
        splits = load_medmnist_npz(find_or_download_npz(data_dir, dataset, self.image_size),
                                   task_type, channels)
        info: dict[str, object] = {
            "task_type": task_type,
            "channels": channels,
            "image_size": self.image_size,
            "class_names": [str(meta["label"][str(i)]) for i in range(len(meta["label"]))],
            "val": splits["val"],
        }
        return TaskData(splits["train"], splits["test"], num_classes=len(meta["label"]), info=info)

    def build_model(self, data: TaskData) -> nn.Module:
        return ResNet(
            int(data.info["channels"]),  # type: ignore[call-overload]
            data.num_classes,
            image_size=self.image_size,
            width=max(1, round(RESNET18_WIDTH * self.width)),
            norm=self.norm,
        )

    def _task_type(self, y: torch.Tensor | np.ndarray) -> str:
        return MULTI_LABEL if y.ndim == 2 else "multi-class"

    def loss_fn(self) -> nn.Module:
        return MedMnistLoss()

    def multi_label(self, dataset: str) -> bool:
        return str(medmnist_info()[dataset]["task"]) == MULTI_LABEL

    def labels_for_partitioning(self, data: TaskData) -> np.ndarray:
        return partition_labels(data.train.y, str(data.info["task_type"]))

    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """MedMNIST ACC and AUC; the task type is read from the label layout.

        Binary and multi-class/ordinal labels are 1-D, multi-label ones 2-D. For
        two classes the multi-class formulas equal the binary ones (argmax =
        positive probability > 0.5; class-1 one-vs-rest AUC = binary AUC, and
        class 0's AUC is the same number), so no extra state is needed.
        """
        y_np = y.numpy()
        task_type = self._task_type(y_np)
        scores = torch.sigmoid(logits) if task_type == MULTI_LABEL else torch.softmax(logits, dim=1)
        s = scores.numpy()
        return {
            "accuracy": medmnist_accuracy(y_np, s, task_type),
            "auc": medmnist_auc(y_np, s, task_type),
        }

    def metric_statistics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """Per label (multi-label) or class (one-vs-rest): the share's log-odds in
        ascending order with the 0/1 targets in the same order, so the server can pool
        the shares' ROC curves into the AUC of all of them. Sorted per class, the
        values no longer say which example they came from."""
        if y.ndim == 2:
            log_odds, positive = logits.double(), y > 0.5
        else:
            log_odds, positive = one_vs_rest_log_odds(logits), nn.functional.one_hot(y.long(), logits.shape[1]) > 0
        out: dict[str, np.ndarray] = {}
        for k in range(log_odds.shape[1]):
            order = torch.argsort(log_odds[:, k], stable=True)
            out[f"auc_log_odds.{k}"] = log_odds[order, k].numpy()
            out[f"auc_positive.{k}"] = positive[order, k].numpy().astype(np.int64)
        return out

    def metrics_from_statistics(self, pooled: dict[str, list[np.ndarray]]) -> dict[str, float]:
        columns = range(sum(1 for name in pooled if name.startswith("auc_log_odds.")))
        return {
            "auc": pooled_auc(
                [np.concatenate(pooled[f"auc_positive.{k}"]) for k in columns],
                [np.concatenate(pooled[f"auc_log_odds.{k}"]) for k in columns],
            )
        }


def one_vs_rest_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """log(p_i / (1 - p_i)) of each class's softmax probability, computed from the logits
    (z_i - logsumexp of the others), so it stays finite where float32 p_i rounds to 1."""
    num_classes = logits.shape[1]
    others = logits.double().unsqueeze(1).expand(-1, num_classes, -1).clone()
    others[:, torch.arange(num_classes), torch.arange(num_classes)] = float("-inf")
    return logits.double() - torch.logsumexp(others, dim=2)


class MedMnistLoss(nn.Module):
    """Cross-entropy for class-index targets, BCE-with-logits for multi-label targets.

    ``reduction`` works as on torch's losses ("mean", "sum" or "none"), one loss
    per example: Opacus' ghost clipping sets it to "none" to clip each example's
    gradient, so a multi-label example's loss is the mean over its labels.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == 2:
            per_example = nn.functional.binary_cross_entropy_with_logits(
                logits, y.float(), reduction="none"
            ).mean(dim=1)
        else:
            per_example = nn.functional.cross_entropy(logits, y, reduction="none")
        if self.reduction == "none":
            return per_example
        if self.reduction == "sum":
            return per_example.sum()
        if self.reduction == "mean":
            return per_example.mean()
        raise ValueError(f"invalid reduction {self.reduction!r}; valid: mean, sum, none")
