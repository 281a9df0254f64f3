"""Compact encoding of sorted, distinct indices into ``range(n)``.

Two formats, whichever is smaller, behind a one-byte tag:

* ``0`` delta varints: the first index, then each gap minus one, as unsigned
  LEB128 varints (7 bits per byte, high bit = more bytes follow). Gaps below 128
  cost one byte, below 16384 two bytes.
* ``1`` bitmap: ``ceil(n / 8)`` bytes, bit ``i`` (little-endian bit order) set
  when index ``i`` is present. Wins when more than about 1 in 8 entries is kept.
"""

from __future__ import annotations

import numpy as np

VARINT, BITMAP = 0, 1


def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 varints of non-negative integers (< 2**35), vectorised."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size and int(v.max()) >= 1 << 35:
        raise ValueError("varint values must be < 2**35")
    nbytes = sum(
        ((v >= (1 << (7 * j))).astype(np.int64) for j in range(1, 5)), np.ones(v.shape, np.int64)
    )
    starts = np.cumsum(nbytes) - nbytes
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    for j in range(5):
        sel = nbytes > j
        if not sel.any():
            break
        byte = (v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (nbytes[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (byte | more).astype(np.uint8)
    return out.tobytes()


def varint_decode(buf: bytes, count: int) -> tuple[np.ndarray, int]:
    """The first ``count`` varints in ``buf`` and the number of bytes they used."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    b = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if ends.size < count:
        raise ValueError(f"truncated varints: {count} expected, {ends.size} found")
    used = int(ends[count - 1]) + 1
    b = b[:used].astype(np.int64)
    value_id = np.concatenate(([0], np.cumsum(b[:-1] < 0x80)))
    starts = np.concatenate(([0], ends[: count - 1] + 1))
    shift = 7 * (np.arange(used) - starts[value_id])
    if shift.max() > 28:
        raise ValueError("varint longer than 5 bytes")
    out = np.zeros(count, dtype=np.int64)
    np.add.at(out, value_id, (b & 0x7F) << shift)
    return out, used


def encode_indices(indices: np.ndarray, n: int) -> bytes:
    """Tagged delta-varint or bitmap encoding of sorted distinct ``indices`` < ``n``."""
    idx = np.asarray(indices, dtype=np.int64)
    gaps = np.diff(idx, prepend=-1) - 1
    varints = varint_encode(gaps)
    bitmap_size = (n + 7) // 8
    if len(varints) <= bitmap_size:
        return bytes([VARINT]) + varints
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return bytes([BITMAP]) + np.packbits(mask, bitorder="little").tobytes()


def decode_indices(buf: bytes, count: int, n: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`encode_indices`: ``count`` indices and the bytes consumed."""
    if not buf:
        raise ValueError("missing index block")
    tag, body = buf[0], buf[1:]
    if tag == VARINT:
        gaps, used = varint_decode(body, count)
        idx = np.cumsum(gaps + 1) - 1
    elif tag == BITMAP:
        used = (n + 7) // 8
        if len(body) < used:
            raise ValueError("truncated index bitmap")
        bits = np.unpackbits(np.frombuffer(body[:used], dtype=np.uint8), bitorder="little")
        idx = np.flatnonzero(bits[:n])
        if np.any(bits[n:]):
            raise ValueError("index bitmap has bits past the vector length")
    else:
        raise ValueError(f"unknown index format tag {tag}")
    if idx.size != count or (idx.size and (idx[-1] >= n or idx[0] < 0)):
        raise ValueError(f"index block decodes to {idx.size} indices in [0, {n}); expected {count}")
    return idx, 1 + used
