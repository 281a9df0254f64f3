"""Partitioners: pure functions from labels to per-client index arrays.

``iid``: uniform random split. ``dirichlet:ALPHA``: label skew, each class spread over
clients with proportions drawn from Dir(ALPHA) (Hsu et al. 2019). ``shards:K``:
McMahan et al. 2017's pathological split, sort by label, cut into K shards per client.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VALID_PARTITIONS = "iid, dirichlet:ALPHA (ALPHA > 0), shards:K (K >= 1 shards per client)"


@dataclass(frozen=True)
class PartitionSpec:
    kind: str
    param: float = 0.0

    def __str__(self) -> str:
        if self.kind == "iid":
            return "iid"
        value = int(self.param) if self.kind == "shards" else self.param
        return f"{self.kind}:{value}"


def parse_partition(spec: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:ALPHA`` or ``shards:K``; ``ValueError`` otherwise."""
    text = spec.strip().lower()
    kind, _, arg = text.partition(":")
    if kind == "iid" and not arg:
        return PartitionSpec("iid")
    try:
        if kind == "dirichlet" and arg and float(arg) > 0:
            return PartitionSpec("dirichlet", float(arg))
        if kind == "shards" and arg and int(arg) >= 1:
            return PartitionSpec("shards", int(arg))
    except ValueError:
        pass
    raise ValueError(f"invalid partition {spec!r}; valid: {VALID_PARTITIONS}")


def iid(num_examples: int, num_partitions: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and split into ``num_partitions`` near-equal parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(num_examples), num_partitions)]


def dirichlet(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: class c goes to clients in proportions ~ Dir(alpha).

    Redraws until every client holds at least ``min_size`` examples.
    """
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ValueError(
        f"dirichlet:{alpha} could not give each of {num_partitions} clients "
        f"{min_size} examples in {max_tries} draws; use a larger alpha or fewer clients"
    )


def shards(
    labels: np.ndarray, num_partitions: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into equal shards, give each client ``shards_per_client``."""
    num_shards = num_partitions * shards_per_client
    if num_shards > len(labels):
        raise ValueError(
            f"shards:{shards_per_client} needs {num_shards} shards but there are only "
            f"{len(labels)} examples"
        )
    # Random tie-break inside each label so shards of one label differ per seed.
    order = np.lexsort((rng.random(len(labels)), labels))
    pieces = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_partitions, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]


def partition_indices(
    spec: PartitionSpec, labels: np.ndarray, num_partitions: int, seed: int
) -> list[np.ndarray]:
    """Deterministic partition of ``labels`` into ``num_partitions`` index arrays."""
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")
    if num_partitions > len(labels):
        raise ValueError(
            f"{num_partitions} clients but only {len(labels)} training examples"
        )
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        return iid(len(labels), num_partitions, rng)
    if spec.kind == "dirichlet":
        return dirichlet(labels, num_partitions, spec.param, rng)
    return shards(labels, num_partitions, int(spec.param), rng)


def label_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> list[list[int]]:
    """Per-partition label histogram (for ``partitions.json``): examples per class, or
    for multi-label (N, L) 0/1 labels, positive examples per label."""
    if labels.ndim == 2:
        return [np.count_nonzero(labels[p] > 0.5, axis=0).tolist() for p in parts]
    return [np.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
