"""Secure aggregation (SecAgg+, Bell et al. CCS 2020; Bonawitz et al. CCS 2017): the numbers.

Pure functions shared by the clients (client/secagg.py) and the server
(strategies/secagg.py). The cryptography is Flower's: elliptic-curve key pairs and
ECDH + HKDF key agreement (``flwr.supercore.primitives.asymmetric``,
``generate_shared_key``), Shamir secret sharing (``create_shares`` /
``combine_shares``), authenticated encryption of the relayed shares (Fernet:
``encrypt`` / ``decrypt``) and stochastic quantization (``quantize``).

One thing is not taken from Flower: the expansion of a seed into a mask. Flower's
``pseudo_rand_gen`` seeds numpy's MT19937 with 32 bits folded from the seed, so
2**32 guesses recover a mask; here a mask is the AES-256-CTR keystream of the seed
(``cryptography``'s AES, the PRG both SecAgg papers name), read as integers mod 2**bits.

Arithmetic: each client quantizes every coordinate of its update, clipped to
``[-clip, clip]``, to an integer in ``[0, 2**bits]`` (Flower's ``quantize``),
multiplies it by its integer weight and adds masks mod ``2**modulus_bits``, where
``modulus_bits = bits + ceil(log2(max_total_weight + 1))`` so the weighted sum never
wraps. The server's unmasked sum divided by the total weight is the weighted mean of
the quantized updates: within one quantization step ``2 * clip / 2**bits`` of the
weighted mean of the clipped updates (:func:`error_bound`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

#: Largest quantization range: Flower's ``quantize`` rounds into int32.
MAX_BITS = 30
#: Masked sums are computed in uint64.
MAX_MODULUS_BITS = 64

__all__ = [
    "combine_shares", "create_shares", "new_key_pair", "pair_key", "seal_shares", "open_shares",
    "mask", "modulus_bits", "threshold_count", "quantize_update", "masked_upload",
    "unmask_sum", "mean_update", "error_bound", "wire_dtype",
]


def threshold_count(fraction: float, num_clients: int) -> int:
    """Shares needed to rebuild a secret: ``ceil(fraction * n)``, at least 2 (at most n)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"invalid secagg threshold {fraction!r}; valid: 0 < t <= 1")
    return min(num_clients, max(2, math.ceil(fraction * num_clients - 1e-9)))


def modulus_bits(bits: int, max_total_weight: int) -> int:
    """Bits of the masking modulus: the quantized weighted sum of a round never wraps."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"invalid secagg bits {bits!r}; valid: 1..{MAX_BITS}")
    out = bits + math.ceil(math.log2(max_total_weight + 1))
    if out > MAX_MODULUS_BITS:
        raise ValueError(
            f"secagg-bits={bits} with a total weight up to {max_total_weight} needs a "
            f"{out}-bit modulus; valid: secagg-bits <= {MAX_MODULUS_BITS - (out - bits)}"
        )
    return out


def wire_dtype(mod_bits: int) -> np.dtype:
    """The smallest unsigned dtype that holds values mod ``2**mod_bits``."""
    return np.dtype(np.uint32 if mod_bits <= 32 else np.uint64)


def error_bound(bits: int, clip: float) -> float:
    """Largest per-coordinate distance between the unmasked weighted mean and the
    weighted mean of the clipped updates: one quantization step (stochastic rounding
    moves each value by less than one step, and a weighted mean of such errors too)."""
    return 2.0 * clip / 2**bits


def noise_share(noise_multiplier: float, clipping_norm: float, threshold: int) -> float:
    """Standard deviation of the Gaussian noise each client adds under distributed DP: the
    sum of at least ``threshold`` clients' shares carries ``noise_multiplier * clipping_norm``."""
    return noise_multiplier * clipping_norm / math.sqrt(threshold)


def clip_for_noise(clipping_norm: float, noise_std: float) -> float:
    """Smallest ``secagg-clip`` that leaves a clipped update plus its noise share unclipped
    but with probability ~2e-9 per coordinate (six standard deviations)."""
    return clipping_norm + 6 * noise_std


def new_key_pair() -> tuple[bytes, bytes]:
    """A fresh (secret, public) elliptic-curve key pair, serialized (Flower's primitives)."""
    sk, pk = generate_key_pairs()
    return private_key_to_bytes(sk), public_key_to_bytes(pk)


def pair_key(secret_key: bytes, public_key: bytes) -> bytes:
    """The key two clients agree on (ECDH + HKDF-SHA256): for masks or for encryption."""
    return generate_shared_key(bytes_to_private_key(secret_key), bytes_to_public_key(public_key))


def seal_shares(key: bytes, src: int, dst: int, seed_share: bytes, sk_share: bytes) -> bytes:
    """Shares from ``src`` for ``dst``, encrypted and authenticated (Fernet) with their pair key:
    the server relays them and can read none."""
    return encrypt(key, share_keys_plaintext_concat(src, dst, seed_share, sk_share))


def open_shares(key: bytes, src: int, dst: int, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`seal_shares`; ``ValueError`` if it was not sealed from ``src`` for ``dst``."""
    got_src, got_dst, seed_share, sk_share = share_keys_plaintext_separate(decrypt(key, ciphertext))
    if (got_src, got_dst) != (src, dst):
        raise ValueError(f"shares relayed as {src}->{dst} were sealed as {got_src}->{got_dst}")
    return seed_share, sk_share


def mask(seed: bytes, size: int, mod_bits: int) -> np.ndarray:
    """``size`` uniform integers mod ``2**mod_bits`` (uint64) from ``seed``: AES-256-CTR
    keystream under ``SHA-256(seed)``. Each seed masks one vector of one round."""
    key = hashlib.sha256(seed).digest()
    stream = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor().update(b"\0" * (8 * size))
    out = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    return out & np.uint64(2**mod_bits - 1) if mod_bits < 64 else out


def quantize_update(update: np.ndarray, *, bits: int, clip: float) -> np.ndarray:
    """Each coordinate clipped to ``[-clip, clip]`` and stochastically rounded onto
    ``0 .. 2**bits`` (Flower's ``quantize``); uint64."""
    return quantize([np.asarray(update, np.float64)], clip, 2**bits)[0].astype(np.uint64)


def masked_upload(
    quantized: np.ndarray, weight: int, *, own_seed: bytes, pair_seeds: dict[int, bytes],
    node_id: int, mod_bits: int,
) -> np.ndarray:
    """``weight * quantized + PRG(own_seed) +- PRG(pair seed)`` mod ``2**mod_bits``: the
    pairwise masks cancel in the sum (the larger node id adds, the smaller subtracts), and
    the server removes the own masks with the seeds the survivors' shares rebuild."""
    out = quantized.astype(np.uint64) * np.uint64(weight) + mask(own_seed, quantized.size, mod_bits)
    for other, seed in pair_seeds.items():
        pairwise = mask(seed, quantized.size, mod_bits)
        out = out + pairwise if node_id > other else out - pairwise
    return _mod(out, mod_bits)


def _mod(values: np.ndarray, mod_bits: int) -> np.ndarray:
    return values & np.uint64(2**mod_bits - 1) if mod_bits < 64 else values


def unmask_sum(
    uploads: Iterable[np.ndarray], *, own_seeds: Iterable[bytes],
    dropped_pairs: Iterable[tuple[int, int, bytes]], mod_bits: int,
) -> np.ndarray:
    """The sum of the survivors' ``weight * quantized``: their uploads added, minus each
    survivor's own mask, and for every (survivor, dropped client, pair seed) the pairwise
    mask the survivor added or subtracted for a client whose upload never came."""
    total: np.ndarray | None = None
    for upload in uploads:
        total = upload.astype(np.uint64) if total is None else total + upload.astype(np.uint64)
    if total is None:
        raise ValueError("no uploads to unmask")
    for seed in own_seeds:
        total = total - mask(seed, total.size, mod_bits)
    for survivor, dropped, seed in dropped_pairs:
        pairwise = mask(seed, total.size, mod_bits)
        total = total - pairwise if survivor > dropped else total + pairwise
    return _mod(total, mod_bits)


def mean_update(total: np.ndarray, total_weight: int, *, bits: int, clip: float) -> np.ndarray:
    """The weighted mean update (float64) from the unmasked sum of ``weight * quantized``:
    Flower's ``dequantize`` of the mean level, ``level * 2 * clip / 2**bits - clip``."""
    if total_weight < 1:
        raise ValueError(f"total weight must be >= 1, got {total_weight}")
    return total.astype(np.float64) / total_weight * (2.0 * clip / 2**bits) - clip
