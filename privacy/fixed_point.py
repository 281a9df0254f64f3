"""Fixed-point encoding of pre-weighted model weights for exact encrypted sums.

A client with ``weight`` examples sends ``round(weight * w * scale)`` per parameter
(``w`` clipped to ``[-clip, clip]``); the sum over clients, divided by
``scale * total_weight``, is FedAvg's weighted mean. ``scale`` is the largest value
for which any sum of weights up to ``max_weight`` cannot overflow its lane, each
client's rounding (at most 1/2, and at most ``max_weight`` clients) included:
``|sum| <= max_weight * clip * scale + ceil(max_weight / 2) < radix / 2``.

Packing (BatchCrypt-style): ``lanes`` such integers share one plaintext slot as
balanced base-``radix`` digits, ``slot = sum_j x_j * radix**j`` with every
``|x_j| < radix / 2``. Slots add digit-wise without carries because the scale
leaves each lane room for the sum of all clients; ``radix**lanes <= plain_modulus``
keeps the slot itself from wrapping. One lane is the unpacked case (``radix`` is the
plain modulus).
"""

from __future__ import annotations

import math

import numpy as np


def lane_radix(plain_modulus: int, lanes: int) -> int:
    """The largest radix whose ``lanes`` balanced digits fit one slot mod ``plain_modulus``."""
    if lanes < 1:
        raise ValueError(f"need lanes >= 1, got {lanes}")
    if lanes == 1:
        return plain_modulus
    radix = math.isqrt(plain_modulus) if lanes == 2 else int(plain_modulus ** (1 / lanes))
    while radix**lanes + radix > plain_modulus:  # |slot| <= (radix**lanes + radix) / 2 < p / 2
        radix -= 1
    return radix


def fixed_point_scale(*, radix: int, max_weight: int, clip: float) -> float:
    """Units per 1.0 such that sums of weighted, clipped, rounded values never leave a lane."""
    if max_weight < 1 or clip <= 0:
        raise ValueError(f"need max_weight >= 1 and clip > 0, got {max_weight}, {clip}")
    return float((radix // 2 - 1 - (max_weight + 1) // 2) // (max_weight * clip))


def encode_weighted(values: np.ndarray, *, weight: int, scale: float, clip: float) -> np.ndarray:
    """int64 fixed-point of ``weight * clip(values)``; ``ValueError`` on NaN or inf.

    Clipping would keep a NaN, which rounds to an out-of-range integer that garbles
    its whole ciphertext in the sum; the server cannot see it, so it stops here.
    """
    values = values.astype(np.float64)
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(
            f"{bad} non-finite value(s) (NaN or inf) in the local model: an encrypted update "
            "cannot be checked by the server, so none is sent"
        )
    clipped = np.clip(values, -clip, clip)
    return np.rint(clipped * (weight * scale)).astype(np.int64)


def pack(values: np.ndarray, *, lanes: int, radix: int) -> np.ndarray:
    """int64 slots holding ``values`` as ``lanes`` digits each: value ``k + j*S`` is digit ``j``
    of slot ``k`` (``S = ceil(len / lanes)``, zero padding)."""
    if lanes == 1:
        return values.astype(np.int64)
    slots = -(-values.size // lanes)
    digits = np.zeros(slots * lanes, np.int64)
    digits[: values.size] = values
    out = np.zeros(slots, np.int64)
    for j in reversed(range(lanes)):
        out = out * radix + digits[j * slots : (j + 1) * slots]
    return out


def unpack(slots: np.ndarray, *, lanes: int, radix: int, count: int) -> np.ndarray:
    """The first ``count`` digit values of signed ``slots`` (inverse of :func:`pack`)."""
    rest = slots.astype(np.int64)
    parts = []
    for _ in range(lanes):
        digit = rest if lanes == 1 else (rest + radix // 2) % radix - radix // 2
        parts.append(digit)
        rest = (rest - digit) // radix
    return np.concatenate(parts)[:count]


def decode_mean(sums: np.ndarray, *, total_weight: int | np.ndarray, scale: float) -> np.ndarray:
    """float32 weighted mean from summed fixed-point values (one total, or one per value)."""
    if np.min(total_weight) < 1:
        raise ValueError(f"total weight must be >= 1, got {np.min(total_weight)}")
    return (sums.astype(np.float64) / (scale * total_weight)).astype(np.float32)
