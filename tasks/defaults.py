"""Per-task defaults: what a run-config key set to ``auto`` becomes.

Each task declares its best measured configuration in :attr:`Task.defaults` (model
width and normalisation, optimizer and schedule, batch size, augmentation; see
``benchmarks/results/``) and, in :attr:`Task.dp_sample_defaults`, what replaces the
choices that DP-SGD (``dp=sample``) does not allow, such as BatchNorm. This module
only picks between them and says why, for ``config.json``; the run config's
validation stays in ``server/config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Task

#: The run-config value that asks for the task's default.
AUTO = "auto"
#: Values that meant "the task's default" before ``auto`` existed (still accepted).
LEGACY_AUTO = {"lr": 0.0, "batch-size": 0}
#: Why a ``dp=sample`` default replaces the task's usual one, per run-config key.
DP_SAMPLE_REASONS = {
    "pointnet-norm": "BatchNorm mixes the examples of a batch, so DP-SGD cannot clip each example's gradient",
    "resnet-norm": "BatchNorm mixes the examples of a batch, so DP-SGD cannot clip each example's gradient",
    "optimizer": "DP-SGD trains with SGD",
    "lr": "the step size for SGD",
    "logit-adjustment": "the label prior it uses is not covered by DP-SGD's privacy accounting",
    "mnist-model": "the small tanh CNN of Opacus's DP-SGD example (benchmarks/dp.py)",
}


#: Keys only some tasks read (:class:`tasks.base.TaskOptions`): the table shows ``-`` for the others.
READ_BY = {
    "model-width": ("medmnist", "pointcloud"),
    "mnist-model": ("mnist",),
    "resnet-norm": ("medmnist",),
    "augment-images": ("medmnist",),
    "pointnet-norm": ("pointcloud",),
    "pointnet-transforms": ("pointcloud",),
    "augment-rotation": ("pointcloud",),
}


def auto_keys() -> tuple[str, ...]:
    """The run-config keys whose default is the task's (``auto`` in the run-config table)."""
    return tuple(Task.defaults)


def is_auto(key: str, value: Any) -> bool:
    """Whether ``value`` asks for the task's default of ``key``: ``auto``, or the old ``0`` of lr / batch-size."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return True
    if key in LEGACY_AUTO and not isinstance(value, bool):
        try:
            return float(value) == LEGACY_AUTO[key]
        except (TypeError, ValueError):
            return False
    return False


def resolve_auto(task: Task, dp: str) -> dict[str, tuple[Any, str]]:
    """For every key of :func:`auto_keys`: the value ``auto`` stands for in ``task``
    under ``dp`` (``none``, ``sample``, ``client``), and a note saying where it comes from."""
    chosen = {key: (value, f"{task.name}'s default") for key, value in task.defaults.items()}
    if dp == "sample":
        for key, value in task.dp_sample_defaults.items():
            usual = task.defaults[key]
            why = DP_SAMPLE_REASONS.get(key, "DP-SGD")
            chosen[key] = (value, f"dp=sample: {value} instead of {task.name}'s {usual} ({why})")
    return chosen


def check_task_defaults(task: Task) -> None:
    """``TypeError`` unless ``task``'s defaults cover exactly :func:`auto_keys` with the
    base's value types (a float key stays a float), and its DP-SGD defaults are among them."""
    base: Mapping[str, Any] = Task.defaults
    if set(task.defaults) != set(base):
        raise TypeError(f"{task.name}.defaults must have the keys {', '.join(base)}")
    for key, value in task.defaults.items():
        if type(value) is not type(base[key]):
            raise TypeError(f"{task.name}.defaults[{key!r}] = {value!r} is not a {type(base[key]).__name__}")
    for key, value in task.dp_sample_defaults.items():
        if key not in base or type(value) is not type(base[key]):
            raise TypeError(f"{task.name}.dp_sample_defaults[{key!r}] = {value!r} does not match Task.defaults")


def defaults_table(tasks: list[Task]) -> str:
    """The README's table of what ``auto`` becomes per task (a test keeps it current):
    one row per key, one column per task; ``dp=sample`` replacements in brackets."""
    def cell(task: Task, key: str) -> str:
        if task.name not in READ_BY.get(key, (task.name,)):
            return "-"
        text = f"`{_text(task.defaults[key])}`"
        if key in task.dp_sample_defaults:
            text += f" (dp=sample: `{_text(task.dp_sample_defaults[key])}`)"
        return text

    lines = ["| key | " + " | ".join(f"`{t.name}`" for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| `{key}` | " + " | ".join(cell(t, key) for t in tasks) + " |" for key in auto_keys()]
    return "\n".join(lines)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
