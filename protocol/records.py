"""Encoders and decoders of fedloom's own records, each beside its inverse.

* an encoded (compressed) model or update: one uint8 array :data:`~.keys.PAYLOAD`
  in the ``arrays`` record, then arrays sent exact beside it (BatchNorm statistics);
* ciphertexts (HE): one uint8 array per ciphertext, ``ct000000``, ``ct000001``, ...;
* evaluation statistics: list metrics under :data:`~.keys.STATISTIC_PREFIX`, for the
  metrics that are not means of the clients' values. Flower averages each evaluation
  metric over the replies, weighted by example count: exact for accuracy and loss, not
  for AUC or mean class accuracy (a client's test share may hold one class, and has no
  AUC at all). So a client also reports :meth:`tasks.base.Task.metric_statistics`
  (class counts; per-class log-odds in sorted order with their targets), the server
  pools them and the task computes those metrics as on one test set (exactly).

Decoders raise ``ValueError`` naming what is wrong, so a malformed reply is rejected
with a reason instead of crashing aggregation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from .keys import CIPHERTEXT_PREFIX, PAYLOAD, STATISTIC_PREFIX


def array_record(content: RecordDict, key: str) -> ArrayRecord:
    """The ``ArrayRecord`` a reply holds under ``key``; ``KeyError`` when it has none,
    ``ValueError`` when another kind of record sits there."""
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"{key!r} holds a {type(record).__name__}; valid: an ArrayRecord")
    return record


def payload_record(payload: bytes, exact: Mapping[str, np.ndarray] | None = None) -> ArrayRecord:
    """The wire form of an encoded payload: one uint8 array, then the arrays sent exact
    beside it under their own names (a download's BatchNorm statistics)."""
    beside = {k: Array(np.ascontiguousarray(v)) for k, v in (exact or {}).items()}
    return ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, dtype=np.uint8)), **beside})


def record_payload(record: ArrayRecord, exact: Iterable[str] = ()) -> bytes:
    """Inverse of :func:`payload_record` with the ``exact`` names expected beside the
    payload; ``ValueError`` if the record is not one."""
    if list(record.keys()) != [PAYLOAD, *exact]:
        expected = "one array " + repr(PAYLOAD) + "".join(f", {k!r}" for k in exact)
        raise ValueError(f"expected {expected}, got keys {list(record.keys())}")
    arr = record[PAYLOAD].numpy()
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"payload must be a 1-d uint8 array, got {arr.dtype} {arr.shape}")
    return arr.tobytes()


def _ciphertext_name(index: int) -> str:
    return f"{CIPHERTEXT_PREFIX}{index:06d}"


def ciphertext_record(ciphertexts: list[bytes]) -> ArrayRecord:
    """Ciphertexts on the wire: one uint8 array per ciphertext, in order."""
    return ArrayRecord({_ciphertext_name(i): Array(np.frombuffer(c, np.uint8)) for i, c in enumerate(ciphertexts)})


def is_ciphertext_record(record: ArrayRecord) -> bool:
    """Whether ``record`` holds ciphertexts rather than plain weights."""
    return any(k.startswith(CIPHERTEXT_PREFIX) for k in record)


def record_ciphertexts(record: ArrayRecord) -> list[bytes]:
    """Inverse of :func:`ciphertext_record`; ``ValueError`` if it is not one."""
    keys = list(record.keys())
    if keys != [_ciphertext_name(i) for i in range(len(keys))]:
        raise ValueError("arrays are not a ciphertext sequence ct000000, ct000001, ...")
    out = []
    for key in keys:
        arr = record[key].numpy()
        if arr.dtype != np.uint8 or arr.ndim != 1:
            raise ValueError(f"{key}: expected 1-d uint8, got {arr.dtype}{list(arr.shape)}")
        out.append(arr.tobytes())
    return out


def statistics_metrics(statistics: Mapping[str, np.ndarray]) -> dict[str, list[int] | list[float]]:
    """A client's evaluation statistics as MetricRecord entries (flat lists, under the prefix)."""
    return {STATISTIC_PREFIX + key: np.asarray(value).reshape(-1).tolist() for key, value in statistics.items()}


def pooled_statistics(contents: Iterable[RecordDict]) -> dict[str, list[np.ndarray]]:
    """Each statistic's arrays, one per reply that has it (inverse of :func:`statistics_metrics`)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for content in contents:
        for record in content.metric_records.values():
            for key, value in record.items():
                if key.startswith(STATISTIC_PREFIX):
                    pooled.setdefault(key[len(STATISTIC_PREFIX) :], []).append(np.asarray(value))
    return pooled


def remove_statistics(contents: Iterable[RecordDict]) -> None:
    """Delete the statistics entries from the contents' metric records, in place (Flower
    would average them element by element, and the clients' lists differ in length)."""
    for content in contents:
        for record in content.metric_records.values():
            for key in [k for k in record if k.startswith(STATISTIC_PREFIX)]:
                del record[key]
