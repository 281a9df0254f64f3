"""Built-in metadata of the twelve 2D MedMNIST v2 datasets (used without the package).

The facts are copied from ``medmnist.INFO`` in the ``medmnist`` package 3.0.2
(``medmnist/info.py``, https://github.com/MedMNIST/MedMNIST), which describes
the data of Yang et al. 2023, "MedMNIST v2", Scientific Data 10:41. The npz
files are those of the package's Zenodo record 10519652. When the package is
installed, :func:`tasks.medmnist.medmnist_info` reads its ``INFO`` instead (so
datasets added later appear), and a test checks this table against it.
"""

from __future__ import annotations

from typing import Any

ZENODO_FILES = "https://zenodo.org/records/10519652/files"
LARGER_SIZES = (64, 128, 224)


def npz_url(name: str, image_size: int = 28) -> str:
    """Official download URL of ``<name>.npz`` (28 px) or ``<name>_<size>.npz``."""
    stem = name if image_size == 28 else f"{name}_{image_size}"
    return f"{ZENODO_FILES}/{stem}.npz?download=1"


def _dataset(
    task: str, n_channels: int, splits: tuple[int, int, int], labels: tuple[str, ...]
) -> dict[str, Any]:
    """Fields as ``medmnist.INFO`` spells them (``url*`` are added by :func:`builtin_info`)."""
    train, val, test = splits
    return {
        "task": task,
        "n_channels": n_channels,
        "n_samples": {"train": train, "val": val, "test": test},
        "label": {str(i): name for i, name in enumerate(labels)},
    }


ORGAN_LABELS = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
)

#: name -> task type, channels, (train, val, test) sizes, label names by index.
DATASETS: dict[str, dict[str, Any]] = {
    "pathmnist": _dataset(
        "multi-class", 3, (89996, 10004, 7180),
        ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
         "normal colon mucosa", "cancer-associated stroma",
         "colorectal adenocarcinoma epithelium"),
    ),
    "chestmnist": _dataset(
        "multi-label, binary-class", 1, (78468, 11219, 22433),
        ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
         "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
         "pleural", "hernia"),
    ),
    "dermamnist": _dataset(
        "multi-class", 3, (7007, 1003, 2005),
        ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
         "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
         "vascular lesions"),
    ),
    "octmnist": _dataset(
        "multi-class", 1, (97477, 10832, 1000),
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    ),
    "pneumoniamnist": _dataset(
        "binary-class", 1, (4708, 524, 624), ("normal", "pneumonia"),
    ),
    "retinamnist": _dataset(
        "ordinal-regression", 3, (1080, 120, 400), ("0", "1", "2", "3", "4"),
    ),
    "breastmnist": _dataset(
        "binary-class", 1, (546, 78, 156), ("malignant", "normal, benign"),
    ),
    "bloodmnist": _dataset(
        "multi-class", 3, (11959, 1712, 3421),
        ("basophil", "eosinophil", "erythroblast",
         "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
         "lymphocyte", "monocyte", "neutrophil", "platelet"),
    ),
    "tissuemnist": _dataset(
        "multi-class", 1, (165466, 23640, 47280),
        ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
         "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
         "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"),
    ),
    "organamnist": _dataset("multi-class", 1, (34561, 6491, 17778), ORGAN_LABELS),
    "organcmnist": _dataset("multi-class", 1, (12975, 2392, 8216), ORGAN_LABELS),
    "organsmnist": _dataset("multi-class", 1, (13932, 2452, 8827), ORGAN_LABELS),
}


def builtin_info() -> dict[str, dict[str, Any]]:
    """The table shaped like ``medmnist.INFO`` (a fresh copy, with ``url``, ``url_64``, ...)."""
    info: dict[str, dict[str, Any]] = {}
    for name, meta in DATASETS.items():
        entry = {**meta, "n_samples": dict(meta["n_samples"]), "label": dict(meta["label"])}
        entry["url"] = npz_url(name)
        entry.update({f"url_{size}": npz_url(name, size) for size in LARGER_SIZES})
        info[name] = entry
    return info
