"""Quantizers: float32 values -> bytes -> float32 values of a known count.

``fp16`` rounds to IEEE half precision (deterministic, lossy). ``qsgd`` is the
stochastic quantizer of Alistarh et al., "QSGD: Communication-Efficient SGD via
Gradient Quantization and Encoding" (NeurIPS 2017) in its max-norm form (the
paper's experiments, "QSGDinf"): in buckets of :data:`QSGD_BUCKET` values,
``v_i -> ||v||_inf * sign(v_i) * xi_i / s`` where ``xi_i`` rounds
``s |v_i| / ||v||_inf`` up or down at random so that the result is unbiased.
Scaling by the bucket's largest magnitude rather than its 2-norm spreads the
values over all ``s`` levels, so the variance per value is at most
``(||v||_inf / s)**2 / 4`` instead of growing with the bucket size. With ``bits``
bits per value, ``s = 2**(bits-1) - 1`` levels plus a sign are packed as
offset-binary integers; each bucket also sends its float32 max-norm.
"""

from __future__ import annotations

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)
QSGD_BUCKET = 128


def float32_encode(values: np.ndarray) -> bytes:
    """Raw little-endian float32 (4 bytes per value)."""
    return np.asarray(values, dtype="<f4").tobytes()


def float32_decode(buf: bytes, count: int) -> np.ndarray:
    _check_size("float32", buf, 4 * count)
    return np.frombuffer(buf, dtype="<f4").astype(np.float32)


def fp16_encode(values: np.ndarray) -> bytes:
    """Half precision, clipped to the fp16 range (2 bytes per value)."""
    return np.clip(values, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()


def fp16_decode(buf: bytes, count: int) -> np.ndarray:
    _check_size("fp16", buf, 2 * count)
    return np.frombuffer(buf, dtype="<f2").astype(np.float32)


def qsgd_levels(bits: int) -> int:
    """Quantization levels ``s`` per sign for ``bits`` bits per value."""
    return (1 << (bits - 1)) - 1


def qsgd_size(count: int, bits: int) -> int:
    """Exact encoded size: one float32 max-norm per bucket plus the packed levels."""
    buckets = -(-count // QSGD_BUCKET)
    return 4 * buckets + -(-count * bits // 8)


def qsgd_encode(values: np.ndarray, bits: int, rng: np.random.Generator) -> bytes:
    """Unbiased stochastic quantization of ``values`` to ``bits`` bits each."""
    v = np.asarray(values, dtype=np.float64)
    s = qsgd_levels(bits)
    starts = np.arange(0, v.size, QSGD_BUCKET)
    norms = (np.maximum.reduceat(np.abs(v), starts) if v.size else np.zeros(0)).astype(np.float32)
    scale = np.repeat(norms.astype(np.float64), QSGD_BUCKET)[: v.size]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(scale > 0, np.abs(v) / scale * s, 0.0)
    r = np.clip(r, 0.0, s)
    low = np.floor(r)
    level = low + (rng.random(v.size) < r - low)
    q = (np.sign(v) * level + s).astype(np.uint32)  # offset binary in [0, 2s]
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    packed = np.packbits(((q[:, None] >> shifts) & 1).astype(np.uint8).ravel())
    return norms.astype("<f4").tobytes() + packed.tobytes()


def qsgd_decode(buf: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`qsgd_encode` for ``count`` values."""
    _check_size(f"qsgd:{bits}", buf, qsgd_size(count, bits))
    s = qsgd_levels(bits)
    buckets = -(-count // QSGD_BUCKET)
    norms = np.frombuffer(buf[: 4 * buckets], dtype="<f4").astype(np.float64)
    raw = np.unpackbits(np.frombuffer(buf[4 * buckets :], dtype=np.uint8))[: count * bits]
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    q = raw.reshape(count, bits).astype(np.int64) @ weights - s
    if count and np.abs(q).max() > s:
        raise ValueError(f"qsgd:{bits} level out of range")
    scale = np.repeat(norms, QSGD_BUCKET)[:count]
    return (q * scale / s).astype(np.float32)


def _check_size(name: str, buf: bytes, expected: int) -> None:
    if len(buf) != expected:
        raise ValueError(f"{name} block has {len(buf)} bytes; expected {expected}")
