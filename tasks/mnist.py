"""``mnist``: the CNN of McMahan et al. 2017 on MNIST (or, with ``mnist-model=dp-cnn``,
the small tanh CNN of Opacus's DP-SGD example).

Reads a Keras-style ``mnist.npz`` or torchvision's raw idx files from ``data_dir``;
downloads the idx files when online.
"""

from __future__ import annotations

import gzip
import urllib.request
from pathlib import Path
from types import MappingProxyType

import numpy as np
from torch import nn

from .base import DatasetNotFoundError, DataSplit, Task, TaskData, TaskOptions

MEAN, STD = 0.1307, 0.3081
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT_S = 20


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _download_idx(raw_dir: Path) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for stem in IDX_FILES.values():
        if _find_idx(raw_dir, stem):
            continue
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + stem + ".gz", timeout=DOWNLOAD_TIMEOUT_S) as r:
                    data = r.read()
                tmp = raw_dir / (stem + ".gz.part")
                tmp.write_bytes(data)
                tmp.rename(raw_dir / (stem + ".gz"))
                break
            except OSError as exc:
                errors.append(f"{mirror}: {exc}")
        else:
            raise DatasetNotFoundError("; ".join(errors[-1:]))


def load_mnist_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    """Return uint8 ``x_*`` (N, 28, 28) and ``y_*`` arrays from npz or idx files."""
    npz = data_dir / "mnist.npz"
    if npz.is_file():
        with np.load(npz) as f:
            return {k: f[k] for k in IDX_FILES}
    for folder in (data_dir, data_dir / "MNIST" / "raw"):
        paths = {k: _find_idx(folder, stem) for k, stem in IDX_FILES.items()}
        if all(paths.values()):
            return {k: read_idx(p) for k, p in paths.items() if p is not None}
    raw_dir = data_dir / "MNIST" / "raw"
    try:
        _download_idx(raw_dir)
    except (DatasetNotFoundError, OSError) as exc:
        raise DatasetNotFoundError(
            f"MNIST not found: put mnist.npz in {data_dir} or the idx files "
            f"({', '.join(IDX_FILES.values())}, optionally .gz) in {raw_dir} "
            f"(download failed: {exc})"
        ) from None
    return load_mnist_arrays(data_dir)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> normalised float32 (N, 1, 28, 28)."""
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None, :, :]


class MnistCNN(nn.Module):
    """McMahan et al. 2017 CNN: 1,663,370 parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x))


class DPMnistCNN(nn.Module):
    """Small tanh CNN of Opacus's MNIST DP-SGD example (Papernot et al. 2021's
    tempered-sigmoid variant): 26,010 parameters, no BatchNorm/GroupNorm.

    Few parameters keep the DP noise (which grows with the model's dimension) small
    relative to the clipped gradient signal.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 8, stride=2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1),  # 16x13x13
            nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1),  # 32x4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, num_classes)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x))


MODELS = {"mcmahan": MnistCNN, "dp-cnn": DPMnistCNN}


class MnistTask(Task):
    name = "mnist"
    datasets = ("mnist",)
    # DP-SGD: the configuration of benchmarks/dp.py (88.6% at epsilon 0.99, 97.0% at 8).
    dp_sample_defaults = MappingProxyType({"mnist-model": "dp-cnn", "batch-size": 500, "lr": 2.0})

    def __init__(self, model: str = "mcmahan") -> None:
        if model not in MODELS:
            raise ValueError(f"invalid mnist-model {model!r}; valid: {', '.join(MODELS)}")
        self.model = model

    #: Measured on an H200: 4 clients of the McMahan CNN (B=10) held 4.4 GiB.
    client_gpu_memory_gib = 1.1

    def configure(self, options: TaskOptions) -> MnistTask:
        return MnistTask(model=options.mnist_model)

    def load(self, data_dir: Path, dataset: str) -> TaskData:
        del dataset
        arr = load_mnist_arrays(data_dir)
        return TaskData(
            DataSplit(to_model_input(arr["x_train"]), arr["y_train"].astype(np.int64)),
            DataSplit(to_model_input(arr["x_test"]), arr["y_test"].astype(np.int64)),
            num_classes=10,
        )

    def build_model(self, data: TaskData) -> nn.Module:
        return MODELS[self.model](data.num_classes)
