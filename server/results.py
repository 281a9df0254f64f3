"""The results folder: config, partitions, metrics (jsonl + csv), plots, models.

Every file is written atomically (write to a temporary name, then rename), so a
run killed at any moment leaves complete files behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``None``, in nested dicts and lists too
    (JSON's ``null``: bare ``NaN`` is not JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


#: One line per failed reply: round, phase (train / evaluate), node_id, reason.
FAILURES = "failures.jsonl"
#: On a Ray cluster, one line per train reply: round, node_id, partition_id, ray_node_id, hostname.
NODES = "nodes.jsonl"


def jsonl_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows).encode()


def metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """All rows as CSV; columns are the union of keys in first-seen order. NaN and
    infinities are empty cells, as they are ``null`` in ``metrics.jsonl``."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(json_safe(r) for r in rows)
    return buf.getvalue()


class ResultsFolder:
    """Owns one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.lines: dict[str, list[dict[str, Any]]] = {FAILURES: [], NODES: []}  # per-round side files

    def write_json(self, name: str, obj: Any, per_line: tuple[str, ...] = ()) -> None:
        """``obj`` as indented JSON; the lists under the top-level keys ``per_line`` get one
        item per line (partitions.json's clients: one line each, not 15, at 10,000 clients)."""
        safe = json_safe(obj)
        if not per_line:
            text = json.dumps(safe, indent=2, allow_nan=False)
        else:
            entries = []
            for key, value in safe.items():
                if key in per_line and value:
                    items = ",\n    ".join(json.dumps(item, allow_nan=False) for item in value)
                    entries.append(f"  {json.dumps(key)}: [\n    {items}\n  ]")
                else:
                    entries.append(json.dumps({key: value}, indent=2, allow_nan=False)[2:-2])
            text = "{\n" + ",\n".join(entries) + "\n}" if entries else "{}"
        atomic_write_bytes(self.path / name, (text + "\n").encode())

    def add_row(self, row: dict[str, Any]) -> None:
        """Record one round: rewrites metrics.jsonl and metrics.csv."""
        self._write_rows([*self.rows, row])

    def restore_rows(self, rows: list[dict[str, Any]]) -> None:
        """Make ``rows`` the run's metrics (a resumed run drops rows past its checkpoint,
        and the failures and nodes lines of those rounds)."""
        self._write_rows(rows)
        last = rows[-1]["round"] if rows else 0
        for name in self.lines:
            path = self.path / name
            if path.exists():
                kept = [f for f in map(json.loads, path.read_text().splitlines()) if f["round"] <= last]
                self._write_lines(name, kept)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return self.lines[FAILURES]

    def add_failures(self, server_round: int, failed: list[dict[str, Any]]) -> None:
        """Record a round's failed replies in failures.jsonl (written from the first one on)."""
        self.add_lines(FAILURES, server_round, failed)

    def add_lines(self, name: str, server_round: int, entries: list[dict[str, Any]]) -> None:
        """Append a round's ``entries`` to the side file ``name`` (written from the first one on)."""
        if entries:
            self._write_lines(name, [*self.lines[name], *({"round": server_round, **e} for e in entries)])

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
        atomic_write_bytes(self.path / "metrics.jsonl", jsonl_bytes(self.rows))
        atomic_write_bytes(self.path / "metrics.csv", metrics_csv(self.rows).encode())

    def _write_lines(self, name: str, lines: list[dict[str, Any]]) -> None:
        self.lines[name] = lines
        atomic_write_bytes(self.path / name, jsonl_bytes(lines))

    def save_torch(self, name: str, obj: Any) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(self.path / name, buf.getvalue())
