"""The client's side of encrypted aggregation: decrypt the global model, encrypt its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedloom.compression.flat import flatten, unflatten
from fedloom.privacy import he
from fedloom.privacy.he_encoding import decrypt_weights, encrypt_weights
from fedloom.protocol.records import ciphertext_record, record_ciphertexts


def secret_path(he_secret_dir: str, he_dir: str, node_config: Mapping[str, object]) -> Path:
    """This node's ``secret.ctx``: node config ``he-secret-context`` (a SuperNode's copy),
    else ``<he-secret-dir>/secret.ctx`` (simulations), else ``<he-dir>/secret.ctx``, where
    runs made before he-secret-dir existed kept it."""
    if node_config.get("he-secret-context"):
        return Path(str(node_config["he-secret-context"]))
    return Path(he_secret_dir or he_dir) / he.SECRET_FILE


def decrypt_global(
    arrays: ArrayRecord, total_weight: int | Sequence[int], like: Mapping[str, torch.Tensor], key: Path
) -> dict[str, torch.Tensor]:
    """The global model from the encrypted weighted sum and its total weight (one per
    ciphertext when the server updates only some blocks per round)."""
    params = he.load_params(key.parent)
    ref = {k: v.detach().cpu().numpy() for k, v in like.items()}
    ciphertexts = record_ciphertexts(arrays)
    weights = [total_weight] * len(ciphertexts) if isinstance(total_weight, int) else list(total_weight)
    size = sum(a.size for a in ref.values())
    mean = decrypt_weights(he.secret_context(key), params, ciphertexts, weights, size)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in unflatten(mean, ref).items()}


def encrypt_local(
    state: Mapping[str, torch.Tensor], weight: int, key: Path, blocks: Sequence[int] | None = None
) -> ArrayRecord:
    """``weight`` x local weights as fixed-point integers, encrypted (only ``blocks`` if given)."""
    params = he.load_params(key.parent)
    values = flatten({k: v.detach().cpu().numpy() for k, v in state.items()})
    return ciphertext_record(encrypt_weights(he.secret_context(key), params, values, weight, blocks))
