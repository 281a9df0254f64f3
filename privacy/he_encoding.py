"""Model weights <-> encrypted blocks: fixed point, packing and BFV/CKKS in one place.

Both sides use it: clients encrypt their pre-weighted weights and decrypt the
global model; under ``--compression randk`` the server also encrypts the
initial model once with the public key (it never decrypts). A flat vector of
``count`` weights packs into ``S = ceil(count / lanes)`` slots (value ``k + j*S``
is lane ``j`` of slot ``k``) and the slots into blocks of ``params.data_slots``, one
ciphertext each. Every block carries its own total weight: all blocks share the
last round's total, except when only some blocks are uploaded per round.

Each ciphertext ends with ``params.check_slots`` check slot(s) holding the upload's
weight, so a sum holds its total weight there. A sum whose noise outgrew the
ciphertext decrypts to garbage in every slot (BFV's batching spreads one wrong
coefficient over all of them), the check included: :func:`decrypt_weights` then
raises :class:`CorruptAggregate` and the client does not train from it.
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
    return he.encrypt(ctx, with_checks(packed, weight, params), params.slots, blocks, scheme=params.scheme)


class CorruptAggregate(ValueError):
    """An encrypted sum's check slots do not decrypt to its total weight."""


def with_checks(slots: np.ndarray, weight: int, params: he.HEParams) -> np.ndarray:
    """``slots`` with ``params.check_slots`` slots holding ``weight`` after each block's data."""
    if not params.check_slots:
        return slots
    check = np.full(params.check_slots, weight, np.int64)
    blocks = [slots[i : i + params.data_slots] for i in range(0, len(slots), params.data_slots)]
    return np.concatenate([part for block in blocks for part in (block, check)])


def block_sizes(params: he.HEParams, count: int) -> list[int]:
    """Slots in each ciphertext of an upload of ``count`` values (the last one shorter),
    check slots included."""
    total, step = -(-count // params.values_per_slot), params.data_slots
    return [min(step, total - start) + params.check_slots for start in range(0, total, step)]


def value_weights(block_weights: Sequence[int], params: he.HEParams, count: int) -> np.ndarray:
    """The total weight behind each of ``count`` values, from one weight per block."""
    lanes = params.values_per_slot
    per_slot = np.repeat(np.asarray(block_weights, dtype=np.int64), params.data_slots)[: -(-count // lanes)]
    return np.tile(per_slot, lanes)[:count]


def split_checks(
    slots: np.ndarray, params: he.HEParams, count: int, block_weights: Sequence[int]
) -> np.ndarray:
    """The data slots of a decrypted sum; :class:`CorruptAggregate` unless every block's
    check slots hold its total weight."""
    if not params.check_slots:
        return slots
    data, bad, start = [], [], 0
    for block, size in enumerate(block_sizes(params, count)):
        end = start + size
        data.append(slots[start : end - params.check_slots])
        if np.any(slots[end - params.check_slots : end] != block_weights[block]):
            bad.append(block)
        start = end
    if bad:
        raise CorruptAggregate(
            f"the encrypted global model is corrupted: {len(bad)} of {len(block_weights)} "
            f"ciphertexts (first: {bad[0]}) do not decrypt to their total weight; sums of more "
            f"than {params.max_summands} uploads outgrow this HE profile's noise budget "
            f"({params.scheme}, {params.values_per_slot} value(s) per slot); not training from it"
        )
    return np.concatenate(data) if data else slots[:0]


def decrypt_weights(
    ctx: ts.Context, params: he.HEParams, ciphertexts: list[bytes],
    block_weights: Sequence[int], count: int,
) -> np.ndarray:
    """The weighted mean (flat float32) that summed ciphertexts with these block weights hold."""
    lanes = params.values_per_slot
    if len(block_weights) != len(ciphertexts):
        raise ValueError(f"{len(block_weights)} block weights for {len(ciphertexts)} ciphertexts")
    slots = he.decrypt(ctx, ciphertexts, sum(block_sizes(params, count)), scheme=params.scheme)
    slots = split_checks(slots, params, count, block_weights)
    sums = unpack(slots, lanes=lanes, radix=params.radix, count=count)
    return decode_mean(sums, total_weight=value_weights(block_weights, params, count), scale=params.scale)
