"""Model weights <-> encrypted blocks: fixed point, packing and BFV/CKKS in one place.

Both sides use it: clients encrypt their pre-weighted weights and decrypt the
global model; under ``--compression randk`` the server also encrypts the
initial model once with the public key (it never decrypts). A flat vector of
``count`` weights packs into ``S = ceil(count / lanes)`` slots (value ``k + j*S``
is lane ``j`` of slot ``k``) and the slots into blocks of ``params.slots``, one
ciphertext each. Every block carries its own total weight: all blocks share the
last round's total, except when only some blocks are uploaded per round.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import WARNING
from typing import TYPE_CHECKING

import numpy as np
from flwr.common.logger import log

from . import he
from .fixed_point import decode_mean, encode_weighted, pack, unpack

if TYPE_CHECKING:  # annotations only: privacy/he.py makes every TenSEAL call (DESIGN.md)
    import tenseal as ts


def encrypt_weights(
    ctx: ts.Context, params: he.HEParams, values: np.ndarray, weight: int,
    blocks: Sequence[int] | None = None,
) -> list[bytes]:
    """Ciphertexts of ``weight`` x ``values`` (flat float32), all blocks or only ``blocks``."""
    if not 1 <= weight <= params.max_weight:
        raise ValueError(
            f"weight {weight} is outside [1, {params.max_weight}], the max weight the HE keys "
            "were made for: sums could overflow; provision keys with a larger max weight"
        )
    clipped = int(np.count_nonzero(np.abs(values) > params.clip))
    if clipped:  # the sum cannot carry them: the global model differs there
        log(WARNING, "HE upload: %d of %d values lie outside +-he-clip=%g and were clipped; "
            "raise he-clip to keep them", clipped, values.size, params.clip)
    fixed = encode_weighted(values, weight=weight, scale=params.scale, clip=params.clip)
    packed = pack(fixed, lanes=params.values_per_slot, radix=params.radix)
    return he.encrypt(ctx, packed, params.slots, blocks, scheme=params.scheme)


def block_sizes(params: he.HEParams, count: int) -> list[int]:
    """Slots in each ciphertext of an upload of ``count`` values (the last one shorter)."""
    total = -(-count // params.values_per_slot)
    return [min(params.slots, total - start) for start in range(0, total, params.slots)]


def value_weights(block_weights: Sequence[int], params: he.HEParams, count: int) -> np.ndarray:
    """The total weight behind each of ``count`` values, from one weight per block."""
    lanes = params.values_per_slot
    per_slot = np.repeat(np.asarray(block_weights, dtype=np.int64), params.slots)[: -(-count // lanes)]
    return np.tile(per_slot, lanes)[:count]


def decrypt_weights(
    ctx: ts.Context, params: he.HEParams, ciphertexts: list[bytes],
    block_weights: Sequence[int], count: int,
) -> np.ndarray:
    """The weighted mean (flat float32) that summed ciphertexts with these block weights hold."""
    lanes = params.values_per_slot
    if len(block_weights) != len(ciphertexts):
        raise ValueError(f"{len(block_weights)} block weights for {len(ciphertexts)} ciphertexts")
    slots = he.decrypt(ctx, ciphertexts, -(-count // lanes), scheme=params.scheme)
    sums = unpack(slots, lanes=lanes, radix=params.radix, count=count)
    return decode_mean(sums, total_weight=value_weights(block_weights, params, count), scale=params.scale)
