"""Sparsifiers: keep ``k = ceil(fraction * n)`` coordinates of a flat vector.

``topk`` keeps the largest magnitudes and sends their indices (see
:mod:`compression.indices`); it is biased, so clients run it with error feedback
(Stich et al. 2018; Lin et al., Deep Gradient Compression, 2018). ``randk`` keeps
a random set drawn from a seed the server sends with the round, identical for
every client: no indices travel, and the kept values of all clients line up
(what encrypted aggregation needs).
"""

from __future__ import annotations

import math

import numpy as np

from .indices import decode_indices, encode_indices


def num_kept(n: int, fraction: float) -> int:
    """``k = ceil(fraction * n)``, at least 1 and at most ``n`` (0 for empty vectors)."""
    return min(n, max(1, math.ceil(fraction * n))) if n else 0


def topk_encode(vec: np.ndarray, fraction: float) -> tuple[bytes, np.ndarray]:
    """Encoded indices of the top-k magnitudes and their values (float32)."""
    k = num_kept(vec.size, fraction)
    idx = np.sort(np.argpartition(np.abs(vec), vec.size - k)[vec.size - k :]).astype(np.int64)
    return encode_indices(idx, vec.size), vec[idx].astype(np.float32)


def topk_read(buf: bytes, n: int, fraction: float) -> tuple[np.ndarray, int]:
    """Indices at the start of ``buf`` and the bytes they used."""
    return decode_indices(buf, num_kept(n, fraction), n)


def randk_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The round's shared random support: sorted, the same on every client."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=num_kept(n, fraction), replace=False))


def scatter(indices: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Dense float32 vector of length ``n`` with ``values`` at ``indices``."""
    out = np.zeros(n, dtype=np.float32)
    out[indices] = values
    return out
