"""The client's side of encrypted aggregation: decrypt the global model, encrypt its own."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from compression.flat import flatten, unflatten
from privacy import he
from privacy.fixed_point import decode_mean, encode_weighted
from strategies.encrypted import ciphertext_record, record_ciphertexts


def secret_path(he_dir: str, node_config: Mapping[str, object]) -> Path:
    """Node config ``he-secret-context`` if set (deployment), else ``<he-dir>/secret.ctx``."""
    return Path(str(node_config.get("he-secret-context") or Path(he_dir) / he.SECRET_FILE))


def decrypt_global(
    arrays: ArrayRecord, total_weight: int, like: Mapping[str, torch.Tensor], key: Path
) -> dict[str, torch.Tensor]:
    """The global model from the encrypted weighted sum and its total weight."""
    params = he.load_params(key.parent)
    ref = {k: v.detach().cpu().numpy() for k, v in like.items()}
    size = sum(a.size for a in ref.values())
    sums = he.decrypt(he.secret_context(key), record_ciphertexts(arrays), size)
    mean = decode_mean(sums, total_weight=total_weight, scale=params.scale)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in unflatten(mean, ref).items()}


def encrypt_local(state: Mapping[str, torch.Tensor], weight: int, key: Path) -> ArrayRecord:
    """``weight`` x local weights as fixed-point integers, encrypted."""
    params = he.load_params(key.parent)
    values = flatten({k: v.detach().cpu().numpy() for k, v in state.items()})
    fixed = encode_weighted(values, weight=weight, scale=params.scale, clip=params.clip)
    return ciphertext_record(he.encrypt(he.secret_context(key), fixed, params.slots))
