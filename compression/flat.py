"""Flatten a model's arrays into one float32 vector and back (the update layout)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Layout = tuple[tuple[int, ...], ...]


def layout_of(arrays: Mapping[str, np.ndarray]) -> Layout:
    """The shapes of ``arrays`` in iteration order: what shape-aware codecs need."""
    return tuple(tuple(int(d) for d in a.shape) for a in arrays.values())


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """All arrays, in iteration order, as one contiguous float32 vector."""
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays.values()])


def unflatten(vec: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split ``vec`` into arrays with the keys, shapes and dtypes of ``like``.

    Integer arrays (e.g. batch-norm counters) are rounded back to their dtype.
    """
    total = sum(int(a.size) for a in like.values())
    if vec.size != total:
        raise ValueError(f"vector has {vec.size} values; the layout needs {total}")
    out, start = {}, 0
    for key, ref in like.items():
        part = vec[start : start + ref.size].reshape(ref.shape)
        if np.issubdtype(ref.dtype, np.integer):
            part = np.rint(part)
        out[key] = part.astype(ref.dtype, copy=False)
        start += ref.size
    return out
