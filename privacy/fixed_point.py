"""Fixed-point encoding of pre-weighted model weights for exact encrypted sums.

A client with ``weight`` examples sends ``round(weight * w * scale)`` per parameter
(``w`` clipped to ``[-clip, clip]``); the sum over clients, divided by
``scale * total_weight``, is FedAvg's weighted mean. ``scale`` is the largest value
for which any sum of weights up to ``max_weight`` cannot overflow the plaintext
modulus: ``|sum| <= max_weight * clip * scale < plain_modulus / 2``.
"""

from __future__ import annotations

import numpy as np


def fixed_point_scale(*, plain_modulus: int, max_weight: int, clip: float) -> float:
    """Units per 1.0 such that sums of weighted, clipped values never wrap around."""
    if max_weight < 1 or clip <= 0:
        raise ValueError(f"need max_weight >= 1 and clip > 0, got {max_weight}, {clip}")
    return float((plain_modulus // 2 - 1) // (max_weight * clip))


def encode_weighted(values: np.ndarray, *, weight: int, scale: float, clip: float) -> np.ndarray:
    """int64 fixed-point of ``weight * clip(values)``."""
    clipped = np.clip(values.astype(np.float64), -clip, clip)
    return np.rint(clipped * (weight * scale)).astype(np.int64)


def decode_mean(sums: np.ndarray, *, total_weight: int, scale: float) -> np.ndarray:
    """float32 weighted mean from summed fixed-point values."""
    if total_weight < 1:
        raise ValueError(f"total weight must be >= 1, got {total_weight}")
    return (sums.astype(np.float64) / (scale * total_weight)).astype(np.float32)
