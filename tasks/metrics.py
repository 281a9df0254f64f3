"""Pure metric functions on numpy arrays (no torch, no task state).

The MedMNIST ones follow ``medmnist.evaluator.getACC`` / ``getAUC`` (Yang et al.
2023, MedMNIST v2): scores are probabilities (softmax for single-label tasks,
sigmoid for multi-label), AUC comes from scikit-learn's ``roc_auc_score``.
"""

from __future__ import annotations

import numpy as np

#: MedMNIST task types, as spelled in ``medmnist.INFO[name]["task"]``.
BINARY = "binary-class"
MULTI_CLASS = "multi-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASK_TYPES = (BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL)


def _check_task_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown MedMNIST task type {task_type!r}; valid: {', '.join(TASK_TYPES)}")


def _binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, or NaN when ``y_true`` holds a single class (AUC undefined)."""
    if np.unique(y_true).size < 2:
        return float("nan")
    # Imported here: scikit-learn's metrics take about a second to import, and whoever only
    # validates a run config (deploy/submit_run.py) imports this module but never needs them.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, score))


def medmnist_accuracy(
    y_true: np.ndarray, scores: np.ndarray, task_type: str, threshold: float = 0.5
) -> float:
    """MedMNIST ACC.

    binary: positive-class probability > ``threshold``; multi-class and ordinal:
    argmax; multi-label: per-label accuracy at ``threshold``, averaged over labels.
    ``y_true`` is (N,) class indices or (N, L) 0/1 for multi-label; ``scores`` is
    (N, C) probabilities.
    """
    _check_task_type(task_type)
    if len(y_true) == 0:
        return float("nan")
    if task_type == MULTI_LABEL:  # getACC: a score of exactly the threshold is positive
        return float(np.mean((scores >= threshold) == (y_true > 0.5)))
    y = y_true.reshape(-1).astype(np.int64)
    if task_type == BINARY:
        return float(np.mean((scores[:, -1] > threshold).astype(np.int64) == y))
    return float(np.mean(scores.argmax(axis=1) == y))


def medmnist_auc(y_true: np.ndarray, scores: np.ndarray, task_type: str) -> float:
    """MedMNIST AUC.

    binary: AUC of the positive-class score; multi-class and ordinal: one-vs-rest
    AUC per class, macro-averaged; multi-label: AUC per label, averaged. Classes
    or labels whose AUC is undefined on this sample (only one value of the
    target present) are left out of the mean, where MedMNIST's evaluator would
    raise; NaN when none is defined.
    """
    _check_task_type(task_type)
    if task_type == BINARY:
        return _binary_auc(y_true.reshape(-1), scores[:, -1])
    if task_type == MULTI_LABEL:
        per = [_binary_auc(y_true[:, i], scores[:, i]) for i in range(scores.shape[1])]
    else:
        y = y_true.reshape(-1)
        per = [_binary_auc((y == i).astype(np.int64), scores[:, i]) for i in range(scores.shape[1])]
    return _mean_defined(per)


def _mean_defined(values: list[float]) -> float:
    defined = [a for a in values if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def pooled_auc(positives: list[np.ndarray], scores: list[np.ndarray]) -> float:
    """MedMNIST AUC from per-class (or per-label) 0/1 targets and scores: the mean of
    the defined per-class AUCs (as :func:`medmnist_auc`), NaN when none is defined."""
    return _mean_defined([_binary_auc(y, s) for y, s in zip(positives, scores, strict=True)])


def class_counts(pred: np.ndarray, y_true: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Correct predictions and examples per class: two (C,) int64 arrays."""
    y = np.asarray(y_true, np.int64).reshape(-1)
    correct = np.bincount(y[np.asarray(pred).reshape(-1) == y], minlength=num_classes)
    return correct.astype(np.int64), np.bincount(y, minlength=num_classes).astype(np.int64)


def overall_accuracy(pred: np.ndarray, y_true: np.ndarray) -> float:
    """Share of correct predictions (NaN on an empty set)."""
    return float(np.mean(pred == y_true)) if len(y_true) else float("nan")


def mean_class_accuracy(pred: np.ndarray, y_true: np.ndarray, num_classes: int) -> float:
    """Per-class recall averaged over the classes present in ``y_true``.

    This is the "mean class accuracy" (mAcc) reported for ModelNet since Qi et
    al. 2017 (PointNet); classes absent from the evaluated set are skipped.
    """
    return mean_recall(*class_counts(pred, y_true, num_classes))


def mean_recall(correct: np.ndarray, total: np.ndarray) -> float:
    """Mean of correct / total over the classes with examples (NaN if none has)."""
    present = np.asarray(total) > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.asarray(correct)[present] / np.asarray(total)[present]))
