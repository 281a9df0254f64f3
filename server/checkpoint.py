"""Checkpoints: everything a crashed run needs to continue from its last round.

Written atomically after every round (see :class:`server.results.ResultsFolder`).
The strategy chain (inner strategy and fedloom's wrappers, e.g. FedAdam's moments
or FedAvgM's momentum) is pickled whole; the RNG states, including the private one
clients are sampled with, make the run continue as if it had never stopped.
"""

from __future__ import annotations

import io
import pickle
import random
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log

from .sampling import SAMPLING_RNG

CHECKPOINT = "checkpoint.pt"


def rng_states() -> dict[str, Any]:
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "sampling": SAMPLING_RNG.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "sampling" in states:  # checkpoints before the private sampling generator lack it
        SAMPLING_RNG.setstate(states["sampling"])


def pickle_strategy(strategy: object) -> bytes | None:
    """The strategy chain as bytes, or ``None`` (with a warning) if it cannot be pickled."""
    try:
        return pickle.dumps(strategy)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        log(WARNING, "strategy state is not checkpointed (%s); a resumed run restarts it", exc)
        return None


def checkpoint_payload(
    *, server_round: int, arrays: dict[str, np.ndarray], strategy: bytes | None,
    rows: list[dict[str, Any]],
) -> bytes:
    """Serialized checkpoint for ``server_round`` (``arrays``: the global model as sent)."""
    buf = io.BytesIO()
    torch.save(
        {"round": server_round, "arrays": arrays, "strategy": strategy, "rng": rng_states(),
         "rows": rows},
        buf,
    )
    return buf.getvalue()


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The last complete checkpoint in ``run_dir``; ``FileNotFoundError`` names the path."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    return torch.load(path, weights_only=False)
