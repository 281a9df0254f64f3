"""How a split is cut into batches (training and BatchNorm measurement share it)."""

from __future__ import annotations


def batch_bounds(num_examples: int, batch_size: int, min_size: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch; a last batch smaller than ``min_size`` joins
    the one before it (so BatchNorm never sees a batch of one)."""
    bounds = [(s, min(s + batch_size, num_examples)) for s in range(0, num_examples, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds.pop()
        bounds[-1] = (bounds[-1][0], num_examples)
    return bounds
