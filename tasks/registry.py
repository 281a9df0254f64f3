"""Task registry by name, and the per-process, keyed data cache."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import DataSplit, Task, TaskData, TaskOptions
from .defaults import check_task_defaults
from .digits import DigitsTask
from .medmnist import MedMnistTask
from .mnist import MnistTask
from .pointcloud import PointCloudTask
from .partition import PartitionSpec, parse_partition, partition_indices

_TASKS: dict[str, Task] = {}
#: The options of a task configured by nothing but its own defaults.
DEFAULT_OPTIONS = TaskOptions()


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name``; a taken name is an error, and so are defaults
    that do not cover the ``auto`` keys with their types."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    check_task_defaults(task)
    _TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, options: TaskOptions | None = None) -> Task:
    """The registered task called ``name`` (configured with ``options`` when given).

    ``ValueError`` lists the valid names.
    """
    try:
        task = _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(task_names())}") from None
    return task if options is None else task.configure(options)


for _task in (DigitsTask(), MnistTask(), MedMnistTask(), PointCloudTask()):
    register_task(_task)


@lru_cache(maxsize=4)
def load_task_data(
    task_name: str, data_dir: str, dataset: str, options: TaskOptions = DEFAULT_OPTIONS
) -> TaskData:
    """Load a task's data once per process (keyed by task, directory, dataset, options)."""
    task = get_task(task_name, options)
    return task.load(Path(data_dir).expanduser(), task.resolve_dataset(dataset))


@lru_cache(maxsize=4)
def partitions(
    task_name: str,
    data_dir: str,
    dataset: str,
    partition: PartitionSpec | str,
    num_partitions: int,
    seed: int,
    options: TaskOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray, ...]:
    """All clients' training indices (deterministic from ``seed``), cached per process."""
    data = load_task_data(task_name, data_dir, dataset, options)
    labels = get_task(task_name, options).labels_for_partitioning(data)
    spec = partition if isinstance(partition, PartitionSpec) else parse_partition(partition)
    return tuple(partition_indices(spec, labels, num_partitions, seed))


@lru_cache(maxsize=2)
def client_split(
    task_name: str,
    data_dir: str,
    dataset: str,
    partition: PartitionSpec | str,
    num_partitions: int,
    seed: int,
    partition_id: int,
    options: TaskOptions = DEFAULT_OPTIONS,
) -> DataSplit:
    """One client's training split."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside [0, {num_partitions})")
    data = load_task_data(task_name, data_dir, dataset, options)
    parts = partitions(task_name, data_dir, dataset, partition, num_partitions, seed, options)
    return data.train.subset(parts[partition_id])


@lru_cache(maxsize=2)
def client_test_split(
    task_name: str,
    data_dir: str,
    dataset: str,
    num_partitions: int,
    partition_id: int,
    options: TaskOptions = DEFAULT_OPTIONS,
) -> DataSplit:
    """A client's share of the test set (for federated evaluation).

    The test set is cut into ``num_partitions`` disjoint parts that cover it, so the
    example-weighted mean over all clients equals the centralized test metric (for
    metrics that are means over examples, such as accuracy; the others come from the
    statistics the clients report, :mod:`protocol.records`). The parts follow
    one fixed random order, not the file's (ModelNet's test set is sorted by class),
    so a client's share, like a sample of clients under ``fraction-evaluate`` < 1,
    mixes the classes.
    """
    data = load_task_data(task_name, data_dir, dataset, options)
    order = np.random.default_rng(0).permutation(len(data.test))
    part = np.sort(np.array_split(order, num_partitions)[partition_id])
    return data.test.subset(part)
