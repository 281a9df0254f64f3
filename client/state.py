"""Client state that must outlive a round and the process: ``Context.state`` on disk.

Flower keeps a node's ``Context.state`` in memory between rounds (error-feedback
residuals, DP accountants). To survive a crash or a restarted SuperNode, the state
after round r is also written to ``<state-dir>/<partition-id>/round-<r>.pkl``; a
process that starts with an empty state loads the newest file from a round before
the current one, so a round re-run after a resume starts from the state it had
(except the DP account, which keeps every release: :func:`load_state`).
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


def _load(folder: Path, server_round: int) -> RecordDict:
    with open(folder / f"round-{server_round}.pkl", "rb") as fh:
        return pickle.load(fh)


def load_state(
    state: RecordDict, folder: Path, server_round: int, never_rewound: tuple[str, ...] = (),
    transient: tuple[str, ...] = (),
) -> int | None:
    """Fill an empty ``state`` (records named in ``transient`` aside) from the newest file
    of a round before ``server_round``.

    Records named in ``never_rewound`` come from the newest file of any round: a DP
    account must keep the releases of a round that runs again after a resume, since
    the server got them before the kill."""
    if any(key not in transient for key in state):
        return None
    rounds = _saved_rounds(folder)
    earlier = [r for r in rounds if r < server_round]
    if not earlier:
        return None
    for key, record in _load(folder, earlier[-1]).items():
        state[key] = record
    if never_rewound and rounds[-1] >= server_round:
        newest = _load(folder, rounds[-1])
        for key in never_rewound:
            if key in newest:
                state[key] = newest[key]
    return earlier[-1]


def save_state(
    state: RecordDict, folder: Path, server_round: int, transient: tuple[str, ...] = ()
) -> None:
    """Write ``state`` for ``server_round`` atomically, without the records named in
    ``transient`` (a round's secrets); keep the newest ``KEEP`` files."""
    state = RecordDict({k: v for k, v in state.items() if k not in transient})
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
