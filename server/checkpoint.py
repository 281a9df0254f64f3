"""Checkpoints: everything a crashed run needs to continue from its last round.

Written atomically after every round (see :class:`server.results.ResultsFolder`).
A checkpoint is a ``state_dict`` of plain data (tensors, numbers, strings, lists and
dicts), loaded with ``torch.load(weights_only=True)``: a results folder never runs
code. It holds the round, the global model as sent, the state of every strategy of
the chain (:func:`strategies.state.chain_state`: FedAdam's moments, FedAvgM's
momentum, the DP ledger, adaptive clipping's norm, ...), the metrics rows, the best
round so far and the RNG states, including the private one clients are sampled with, so the run
continues as if it had never stopped.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .sampling import SAMPLING_RNG

CHECKPOINT = "checkpoint.pt"
#: Format of the checkpoint dict; 2: plain data (1, pickled strategies, is refused).
FORMAT = 2


def _random_state(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_random(rng: random.Random, state: dict[str, Any]) -> None:
    rng.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


def rng_states() -> dict[str, Any]:
    """The process's generators (Python's, numpy's, torch's, the client sampler's) as plain data."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": _random_state(random.getstate()),
        "numpy": {"name": name, "key": torch.from_numpy(np.asarray(key, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "sampling": _random_state(SAMPLING_RNG.getstate()),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    _set_random(random, states["python"])  # type: ignore[arg-type]
    n = states["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])
    _set_random(SAMPLING_RNG, states["sampling"])


def checkpoint_payload(
    *, server_round: int, arrays: dict[str, np.ndarray], strategy: list[dict[str, Any]],
    rows: list[dict[str, Any]], best: dict[str, Any] | None = None,
) -> bytes:
    """Serialized checkpoint for ``server_round`` (``arrays``: the global model as sent;
    ``strategy``: :func:`strategies.state.chain_state`; ``best``: the best round before this
    round's, :meth:`server.best.BestRound.state_dict`)."""
    buf = io.BytesIO()
    torch.save(
        {"format": FORMAT, "round": server_round,
         "arrays": {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in arrays.items()},
         "strategy": strategy, "rng": rng_states(), "rows": rows, "best": best},
        buf,
    )
    return buf.getvalue()


class CheckpointError(ValueError):
    """A checkpoint file that this version does not load (another format, or damaged)."""


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The last complete checkpoint in ``run_dir``, loaded on the CPU without unpickling
    code; ``FileNotFoundError`` names the path, :class:`CheckpointError` says why not."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    older = CheckpointError(
        f"{path} is not a plain-data checkpoint (an older fedloom pickled its strategies into it, "
        "which is not loaded for safety); start the run again"
    )
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise older from None
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None
    found = saved.get("format") if isinstance(saved, dict) else None
    if found is None:
        raise older
    if found != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {found}; this version reads format {FORMAT}")
    saved["arrays"] = {k: v.numpy() for k, v in saved["arrays"].items()}
    return saved
