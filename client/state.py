"""Client state that must outlive a round and the process: ``Context.state`` on disk.

Flower keeps a node's ``Context.state`` in memory between rounds (error-feedback
residuals, DP accountants). To survive a crash or a restarted SuperNode, the state
after round r is also written to ``<state-dir>/<partition-id>/round-<r>.pkl``; a
process that starts with an empty state loads the newest file from a round before
the current one, so a round re-run after a resume starts from the state it had.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

from flwr.app import RecordDict

KEEP = 2
_NAME = re.compile(r"round-(\d+)\.pkl$")


def _saved_rounds(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def load_state(state: RecordDict, folder: Path, server_round: int) -> int | None:
    """Fill an empty ``state`` from the newest file of a round before ``server_round``."""
    if len(state):
        return None
    earlier = [r for r in _saved_rounds(folder) if r < server_round]
    if not earlier:
        return None
    with open(folder / f"round-{earlier[-1]}.pkl", "rb") as fh:
        saved: RecordDict = pickle.load(fh)
    for key, record in saved.items():
        state[key] = record
    return earlier[-1]


def save_state(state: RecordDict, folder: Path, server_round: int) -> None:
    """Write ``state`` for ``server_round`` atomically; keep the newest ``KEEP`` files."""
    if not len(state):
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{server_round}.pkl"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(state, fh)
    os.replace(tmp, path)
    for old in _saved_rounds(folder)[:-KEEP]:
        (folder / f"round-{old}.pkl").unlink(missing_ok=True)
