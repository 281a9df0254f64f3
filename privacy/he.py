"""Every TenSEAL call in fedloom: contexts, keys, packing, serialization.

Both schemes carry the same thing: fixed-point integers (:mod:`privacy.fixed_point`)
that the server only adds. Aggregation only adds, so the shortest modulus chain
that holds the plaintext plus the noise of a few hundred additions suffices; all
profiles use N=4096 with 109 bits of coefficient modulus, within the HE
standard's 128-bit security bound for N=4096 (SEAL enforces it).

``bfv`` (default): BFV with batching, 4,096 exact integer slots per ciphertext.
Two profiles (``values_per_slot``):

* 1 value per slot (default): moduli [56, 53], a 40-bit plain prime; one
  fixed-point weight per slot, about 15.2 bytes per parameter, aggregate within
  ~1e-7 of plaintext FedAvg.
* 2 values per slot (BatchCrypt-style packing): moduli [60, 49], a 48-bit plain
  prime split into two 24-bit signed lanes; about 8.1 bytes per parameter at
  1e-5 to 1e-3 relative error (each lane keeps headroom for ``max_weight``, so
  the error grows as a round's clients hold less of it).

Only the first modulus carries data (the second is SEAL's key-switching prime),
so a ciphertext is two polynomials of 4,096 coefficients mod one prime. The plain
modulus p = 1 (mod 2N) is the largest such prime below 2**bits, so batching works.
How many uploads a sum holds before its noise garbles it is computed per profile in
:mod:`privacy.he_capacity` (73,674 / 287 / 1,151) and measured by
``benchmarks/he_capacity.py``; each ciphertext ends with a check slot (the upload's
weight) that lets clients detect a garbled sum.

``ckks``: CKKS, 2,048 real slots per ciphertext (N/2), moduli [60, 49], scale
2**19. A slot holds a fixed-point integer below 2**38 in magnitude as a real;
after decryption it is rounded back, exactly, while the sum's noise stays below 1/2
of a unit (``benchmarks/results/he_capacity.md``). Half the slots
of BFV, so about 32 bytes per parameter (8x float32; TenSEAL's usual N=8192
settings cost 57-81) at the same ~1e-7 error. One value per slot only: two
19-bit lanes leave no fixed-point resolution after the headroom for the clients'
total weight.

Key custody: :func:`provision` writes ``secret.ctx`` (with the secret key) into
the clients' folder and ``public.ctx`` (``make_context_public()``: encryption and
addition, no decryption) into another, the server's; each gets ``params.json``. Contexts load once per process; TenSEAL
objects cross process boundaries only as bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import tenseal as ts

from .files import write_private
from .he_capacity import CKKS_SCALE_BITS, batching_prime, profile_max_summands
from .he_profiles import PROFILES, SCHEMES

SECRET_FILE = "secret.ctx"
PUBLIC_FILE = "public.ctx"
PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class HEParams:
    """What both sides must agree on; stored in ``params.json`` beside the contexts.

    ``plain_modulus`` is the range slot sums live in: BFV's plain prime, or for CKKS
    ``2**39`` (slots decode to exact integers of magnitude below ``2**38``).
    """

    scheme: str = "bfv"
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (56, 53)
    plain_modulus_bits: int = 40
    plain_modulus: int = 0
    security_bits: int = 128
    clip: float = 8.0
    max_weight: int = 1
    scale: float = 0.0
    values_per_slot: int = 1
    radix: int = 0
    #: Fingerprint of the key pair (SHA-256 of public.ctx, 16 hex digits): both sides
    #: compare it, since other keys would decrypt the sums to garbage without an error.
    key_id: str = ""
    #: Slots per ciphertext that carry the upload's weight instead of model values: their
    #: sum must decrypt to the total weight, which lets clients detect a corrupted
    #: aggregate (:mod:`privacy.he_encoding`). 0 in params.json from before the check.
    check_slots: int = 0

    @property
    def slots(self) -> int:
        """Slots per ciphertext: N for BFV's integers, N/2 for CKKS's reals."""
        return self.poly_modulus_degree if self.scheme == "bfv" else self.poly_modulus_degree // 2

    @property
    def data_slots(self) -> int:
        """Slots per ciphertext that hold model values."""
        return self.slots - self.check_slots

    @property
    def max_summands(self) -> int:
        """The most uploads whose encrypted sum decrypts exactly (:mod:`privacy.he_capacity`)."""
        return profile_max_summands(self.scheme, self.values_per_slot, self.poly_modulus_degree)

    def ciphertexts_for(self, num_values: int) -> int:
        """Ciphertexts one upload of ``num_values`` parameters takes."""
        return -(-num_values // (self.data_slots * self.values_per_slot))


def provision(
    nodes_dir: Path, server_dir: Path, *, clip: float, max_weight: int, values_per_slot: int = 1,
    scheme: str = "bfv",
) -> HEParams:
    """Generate this run's keys: ``secret.ctx`` in ``nodes_dir`` (clients only, mode 0600)
    and ``public.ctx`` in ``server_dir``, which must be another folder."""
    from .fixed_point import fixed_point_scale, lane_radix

    nodes_dir, server_dir = Path(nodes_dir).expanduser().resolve(), Path(server_dir).expanduser().resolve()
    if nodes_dir == server_dir:
        raise ValueError(
            f"secret.ctx and public.ctx need two folders (both {nodes_dir}): the server must not get the secret key"
        )
    if scheme not in PROFILES:
        raise ValueError(f"invalid he-scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if values_per_slot not in PROFILES[scheme]:
        valid = ", ".join(map(str, PROFILES[scheme]))
        raise ValueError(f"invalid values per slot {values_per_slot} for {scheme}; valid: {valid}")
    coeff, plain_bits = PROFILES[scheme][values_per_slot]
    n = HEParams.poly_modulus_degree
    plain = batching_prime(plain_bits, n) if scheme == "bfv" else 2**plain_bits
    radix = lane_radix(plain, values_per_slot)
    scale = fixed_point_scale(radix=radix, max_weight=max_weight, clip=clip)
    if scale < 1:
        raise ValueError(
            f"{values_per_slot} value(s) per {scheme} slot cannot hold {max_weight} examples x clip "
            f"{clip:g}: lower the clip or use one value per slot"
        )
    params = HEParams(
        scheme=scheme, coeff_mod_bit_sizes=coeff, plain_modulus_bits=plain_bits, clip=clip,
        max_weight=max_weight, plain_modulus=plain, scale=scale, values_per_slot=values_per_slot,
        radix=radix, check_slots=1,
    )
    if scheme == "bfv":
        ctx = ts.context(
            ts.SCHEME_TYPE.BFV, poly_modulus_degree=n, plain_modulus=plain,
            coeff_mod_bit_sizes=list(coeff), n_threads=1,
        )
    else:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=n, coeff_mod_bit_sizes=list(coeff), n_threads=1)
        ctx.global_scale = float(2**CKKS_SCALE_BITS)
    nodes_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    server_dir.mkdir(parents=True, exist_ok=True)
    write_private(nodes_dir / SECRET_FILE, ctx.serialize(save_secret_key=True))
    public = ctx.copy()
    public.make_context_public()
    public_bytes = public.serialize()
    params = dataclasses.replace(params, key_id=hashlib.sha256(public_bytes).hexdigest()[:16])
    (server_dir / PUBLIC_FILE).write_bytes(public_bytes)
    for folder in (nodes_dir, server_dir):
        (folder / PARAMS_FILE).write_text(json.dumps(asdict(params), indent=2) + "\n")
    return params


def load_params(folder: Path) -> HEParams:
    """The run's HE parameters (read once per process)."""
    return _load_params(str(folder))


@lru_cache(maxsize=4)
def _load_params(folder: str) -> HEParams:
    raw = json.loads((Path(folder) / PARAMS_FILE).read_text())
    raw["coeff_mod_bit_sizes"] = tuple(raw["coeff_mod_bit_sizes"])
    raw.setdefault("radix", raw.get("plain_modulus", 0))  # params.json from before packing
    return HEParams(**raw)


@lru_cache(maxsize=4)
def _context(path: str) -> ts.Context:
    return ts.context_from(Path(path).read_bytes(), n_threads=1)


def check_key_id(params: HEParams, expected: str, where: str) -> None:
    """``ValueError`` when the run's keys (id ``expected``) are not the ones ``params``
    belongs to; keys from before key ids (empty) are not compared."""
    if expected and params.key_id and expected != params.key_id:
        raise ValueError(
            f"HE keys do not match: the run's are {expected}, {where} holds {params.key_id} "
            "(keys from another provisioning decrypt to garbage); use this run's secret.ctx"
        )


def check_server_folder(folder: Path) -> None:
    """``ValueError`` when the server's HE folder holds ``secret.ctx``: a server that can
    read the secret key could decrypt every client's upload, so it does not start.
    (Runs from before ``he-secret-dir`` kept the key there.)"""
    if (Path(folder) / SECRET_FILE).exists():
        raise ValueError(
            f"{Path(folder) / SECRET_FILE} is in the server's he-dir: the server must hold "
            f"{PUBLIC_FILE} only, or it could decrypt every upload; move {SECRET_FILE} to the "
            "clients (he-secret-dir, or a SuperNode's he-secret-context) and start again"
        )


def public_context(folder: Path) -> ts.Context:
    """The server's context: encrypt and add, never decrypt. Reads only ``public.ctx``."""
    ctx = _context(str(Path(folder) / PUBLIC_FILE))
    if ctx.is_private():
        raise ValueError(f"{Path(folder) / PUBLIC_FILE} holds a secret key; the server must not")
    return ctx


def secret_context(path: Path) -> ts.Context:
    """A client's context with the secret key (``secret.ctx``)."""
    ctx = _context(str(path))
    if not ctx.is_private():
        raise ValueError(f"{path} holds no secret key; clients need secret.ctx")
    return ctx


def encrypt(
    ctx: ts.Context, values: np.ndarray, slots: int, blocks: Sequence[int] | None = None,
    *, scheme: str,
) -> list[bytes]:
    """int64 values -> serialized ciphertexts of ``slots`` values each (last one shorter);
    with ``blocks``, only those ciphertexts (block ``b`` holds slots ``b*slots ...``).
    CKKS encodes the integers as reals (exact in float64 below 2**53)."""
    starts = range(0, len(values), slots) if blocks is None else [b * slots for b in blocks]
    if scheme == "ckks":
        return [ts.ckks_vector(ctx, values[i : i + slots].astype(np.float64).tolist()).serialize() for i in starts]
    return [ts.bfv_vector(ctx, values[i : i + slots].tolist()).serialize() for i in starts]


def _load_vector(ctx: ts.Context, data: bytes, scheme: str) -> ts.BFVVector | ts.CKKSVector:
    # The scheme must come from params.json: bfv_vector_from parses CKKS bytes without complaint.
    return ts.ckks_vector_from(ctx, data) if scheme == "ckks" else ts.bfv_vector_from(ctx, data)


def deserialize(ctx: ts.Context, ciphertexts: list[bytes], *, scheme: str) -> list:
    """Ciphertexts as TenSEAL vectors; ``ValueError`` if any is malformed."""
    try:
        return [_load_vector(ctx, c, scheme) for c in ciphertexts]
    except Exception as exc:  # TenSEAL raises several types for malformed input
        raise ValueError(f"not a valid ciphertext: {exc}") from None


def layout(vector: ts.BFVVector | ts.CKKSVector) -> tuple[tuple[int, ...], float]:
    """What must match for two ciphertexts to add: modulus level (``parms_id``) and,
    for CKKS, scale (1.0 for BFV). TenSEAL's own ``CKKSVector.scale()`` is broken in
    0.3.x, so both come from the underlying SEAL ciphertext."""
    (ct,) = vector.data.ciphertext()
    return tuple(ct.parms_id()), float(ct.scale)


def add_all(uploads: list[list]) -> list[bytes]:
    """Slot-wise sum of several clients' (deserialized) ciphertexts, serialized.

    Adds in place into the first upload's vectors, so ``uploads`` is consumed:
    TenSEAL's ``copy()`` round-trips through serialization (about 20 ms per
    ciphertext, 40x the addition itself).
    """
    if not uploads:
        raise ValueError("nothing to add")
    sums = uploads[0]
    for upload in uploads[1:]:
        if len(upload) != len(sums):
            raise ValueError(f"upload has {len(upload)} ciphertexts, expected {len(sums)}")
        for acc, vec in zip(sums, upload, strict=True):
            acc += vec
    return [v.serialize() for v in sums]


def baseline_ckks_context() -> ts.Context:
    """The usual TenSEAL setup, for benchmarks to compare against: CKKS with N=8192,
    moduli [60, 40, 40], scale 2**40 (NVIDIA FLARE's defaults); public (encrypt and add)."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40], n_threads=1)
    ctx.global_scale = float(2**40)
    ctx.make_context_public()
    return ctx


def encrypt_layers(ctx: ts.Context, layers: Sequence[np.ndarray]) -> list[bytes]:
    """The baseline's upload: one CKKS vector per layer (TenSEAL splits long ones)."""
    return [ts.ckks_vector(ctx, layer.ravel().astype(np.float64).tolist()).serialize() for layer in layers]


def decrypt(ctx: ts.Context, ciphertexts: list[bytes], length: int, *, scheme: str) -> np.ndarray:
    """The first ``length`` int64 slot values of ``ciphertexts`` (CKKS: rounded to integers)."""
    parts = [np.rint(np.asarray(_load_vector(ctx, c, scheme).decrypt())).astype(np.int64) for c in ciphertexts]
    return np.concatenate(parts)[:length] if parts else np.zeros(0, np.int64)
