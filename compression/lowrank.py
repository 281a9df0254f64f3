"""PowerSGD-style low-rank approximation (Vogels et al., NeurIPS 2019).

Every tensor with two or more dimensions (linear ``[out, in]``, conv
``[out, in, kh, kw]``) is viewed as a matrix ``M`` of shape ``(shape[0], rest)``
and sent as factors ``P (m x r)`` and ``Q (k x r)`` with ``M ~ P Q^T``, computed by
subspace iteration from a random start: ``P = orth(M Q); Q = M^T P``. Tensors
where the factors would not be smaller (``r (m + k) >= m k``), and all 1-d
tensors (biases), are sent as they are. Clients pair it with error feedback, as
the paper does. Unlike the paper, ``Q`` is not warm-started across rounds
(clients may skip rounds), so :data:`POWER_ITERATIONS` iterations are run.
"""

from __future__ import annotations

import numpy as np

from .flat import Layout

POWER_ITERATIONS = 2


def _matrix(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) < 2:
        return None
    return shape[0], int(np.prod(shape[1:]))


def factored(shape: tuple[int, ...], rank: int) -> tuple[int, int] | None:
    """``(m, k)`` when the tensor is sent as rank-``rank`` factors, else ``None``."""
    mk = _matrix(shape)
    if mk is None or rank * (mk[0] + mk[1]) >= mk[0] * mk[1]:
        return None
    return mk


def lowrank_count(layout: Layout, rank: int) -> int:
    """Number of float values the encoding of a vector with ``layout`` carries."""
    total = 0
    for shape in layout:
        mk = factored(shape, rank)
        total += rank * (mk[0] + mk[1]) if mk else int(np.prod(shape))
    return total


def lowrank_encode(
    vec: np.ndarray, layout: Layout, rank: int, rng: np.random.Generator
) -> np.ndarray:
    """Factors (or raw values) of every tensor, concatenated as float32."""
    parts, start = [], 0
    for shape in layout:
        size = int(np.prod(shape))
        block = vec[start : start + size].astype(np.float64)
        start += size
        mk = factored(shape, rank)
        if mk is None:
            parts.append(block)
            continue
        m = block.reshape(mk)
        q = rng.standard_normal((mk[1], rank))
        for _ in range(POWER_ITERATIONS):
            p, _ = np.linalg.qr(m @ q)
            q = m.T @ p
        parts.extend([p.ravel(), q.ravel()])
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def lowrank_decode(values: np.ndarray, layout: Layout, rank: int) -> np.ndarray:
    """The flat vector ``P Q^T`` (or raw values) tensor by tensor."""
    if values.size != lowrank_count(layout, rank):
        expected = lowrank_count(layout, rank)
        raise ValueError(f"lowrank:{rank} carries {values.size} values; expected {expected}")
    parts, start = [], 0
    for shape in layout:
        mk = factored(shape, rank)
        if mk is None:
            size = int(np.prod(shape))
            parts.append(values[start : start + size])
            start += size
            continue
        p = values[start : start + mk[0] * rank].reshape(mk[0], rank)
        start += mk[0] * rank
        q = values[start : start + mk[1] * rank].reshape(mk[1], rank)
        start += mk[1] * rank
        parts.append((p @ q.T).ravel())
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
