"""Arrays a lossy download leaves exact: BatchNorm's running statistics.

A running variance is small beside the weights it is flattened with, so a quantizer
that scales each bucket by its largest value rounds some variances to zero, and
BatchNorm then divides those channels by sqrt(eps) (measured:
``benchmarks/results/design_notes.md``). They are about 1% of a model's values, so they
ride beside the payload as float32 arrays under their own names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")

#: State-dict names of BatchNorm's statistics (torch's and :class:`tasks.batchnorm.BatchNorm`).
EXACT_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def split_exact(arrays: Mapping[str, T]) -> tuple[dict[str, T], dict[str, T]]:
    """(the arrays a codec may approximate, the BatchNorm statistics), each in order."""
    coded = {k: v for k, v in arrays.items() if not k.endswith(EXACT_SUFFIXES)}
    exact = {k: v for k, v in arrays.items() if k.endswith(EXACT_SUFFIXES)}
    return coded, exact


def join_exact(order: Iterable[str], coded: Mapping[str, T], exact: Mapping[str, T]) -> dict[str, T]:
    """Inverse of :func:`split_exact`: both parts' arrays in ``order``."""
    return {k: coded[k] if k in coded else exact[k] for k in order}
