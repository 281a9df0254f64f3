#!/usr/bin/env python
"""How many uploads an encrypted sum holds: each HE profile's computed capacity against
SEAL's own measurements, and the README's HE figures (256-client sums, the next larger
plain primes, CKKS rounding error, symmetric-key ciphertext sizes), measured together.

For every BFV setting: sums of K fresh public-key encryptions of random values (in the
range K uploads may use) are decrypted and compared with the integer sums (exact or
not), and SEAL's invariant noise budget of the sum is read. CKKS: the largest distance
of a decrypted slot from its integer sum. Writes benchmarks/results/he_capacity.md.

Run from the repository root: python benchmarks/he_capacity.py
"""

from __future__ import annotations

import argparse

import numpy as np
import tenseal as ts
from common import markdown_table, write_result

from fedloom.privacy.he_capacity import (
    CKKS_SCALE_BITS,
    batching_prime,
    bfv_max_summands,
    ckks_max_summands,
    profile_max_summands,
)

N = 4096


def bfv_sum(coeff: list[int], plain_bits: int, summands: int, seed: int) -> tuple[bool, int]:
    """(exact?, SEAL's noise budget in bits) of a sum of ``summands`` fresh encryptions."""
    t = batching_prime(plain_bits, N)
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=N, plain_modulus=t, coeff_mod_bit_sizes=coeff, n_threads=1)
    limit = (t // 2) // summands
    rng = np.random.default_rng(seed)
    total, acc = np.zeros(N, dtype=object), None
    for _ in range(summands):
        values = rng.integers(-limit, limit, N)
        total += values.astype(object)
        vector = ts.bfv_vector(ctx, values.tolist())
        acc = vector if acc is None else acc + vector
    exact = bool(np.all(np.asarray(acc.decrypt(), dtype=object) == total))
    (ct,) = acc.data.ciphertext()
    budget = ctx.data.decryptor().invariant_noise_budget(ct)
    return exact, budget


def ckks_error(range_bits: int, scale_bits: int, summands: int, seed: int) -> float:
    """Largest distance of a decrypted slot of a sum of ``summands`` CKKS encryptions of
    integers below ``2**(range_bits - 1)`` in total from the integer sum."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=N, coeff_mod_bit_sizes=[60, 49], n_threads=1)
    ctx.global_scale = float(2**scale_bits)
    limit = 2 ** (range_bits - 1) // summands
    rng = np.random.default_rng(seed)
    total, acc = np.zeros(N // 2), None
    for _ in range(summands):
        values = rng.integers(-limit, limit, N // 2).astype(np.float64)
        total += values
        vector = ts.ckks_vector(ctx, values.tolist())
        acc = vector if acc is None else acc + vector
    return float(np.max(np.abs(np.asarray(acc.decrypt()) - total)))


def symmetric_bytes() -> tuple[int, int, bool]:
    """Serialized bytes of one public-key and one symmetric BFV ciphertext (default profile),
    and whether TenSEAL lets a symmetric context be made public."""
    t = batching_prime(40, N)
    sizes = []
    for kind in (ts.ENCRYPTION_TYPE.ASYMMETRIC, ts.ENCRYPTION_TYPE.SYMMETRIC):
        ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=N, plain_modulus=t,
                         coeff_mod_bit_sizes=[56, 53], encryption_type=kind, n_threads=1)
        sizes.append(len(ts.bfv_vector(ctx, list(range(N))).serialize()))
    try:
        ctx.make_context_public()
        public = True
    except Exception:  # TenSEAL raises for a symmetric context
        public = False
    return sizes[0], sizes[1], public


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    seeds = range(args.seeds)
    settings = [  # (name, coeff, plain bits, in use)
        ("bfv he-pack=1 (default)", [56, 53], 40, True),
        ("bfv he-pack=2", [60, 49], 48, True),
        ("bfv [56, 53] with the next larger plain prime, 46 bits", [56, 53], 46, False),
        ("bfv [60, 49] with the next larger plain prime, 50 bits", [60, 49], 50, False),
    ]
    rows = []
    for name, coeff, bits, _ in settings:
        capacity = bfv_max_summands(data_modulus=batching_prime(coeff[0], N),
                                    plain_modulus=batching_prime(bits, N), poly_modulus_degree=N)
        checks = [256] + ([capacity] if capacity <= 2000 else []) + ([4 * capacity] if 4 * capacity <= 2000 else [])
        for k in sorted(set(checks)):
            results = [bfv_sum(coeff, bits, k, s) for s in seeds]
            rows.append([name, f"{capacity:,}", f"{k:,}", f"{sum(e for e, _ in results)} of {len(results)}",
                         ", ".join(str(b) for _, b in results)])
    ckks_capacity = ckks_max_summands(scale=2.0**CKKS_SCALE_BITS, poly_modulus_degree=N)
    ckks_rows = []
    for range_bits, scale_bits, label in ((39, CKKS_SCALE_BITS, "he-scheme=ckks: range 2^39, scale 2^19"),
                                          (42, 16, "range 2^42, scale 2^16")):
        capacity = ckks_max_summands(scale=2.0**scale_bits, poly_modulus_degree=N)
        for k in sorted({256, min(capacity, 2000)}):
            errors = [ckks_error(range_bits, scale_bits, k, s) for s in seeds]
            ckks_rows.append([label, f"{capacity:,}", f"{k:,}", ", ".join(f"{e:.3f}" for e in errors),
                              "yes" if max(errors) < 0.5 else "no"])
    public_bytes, symmetric, can_publish = symmetric_bytes()
    text = (
        "# HE capacity: uploads per encrypted sum\n\n"
        "Computed capacity (`privacy/he_capacity.py`: noise of SEAL's fresh public-key ciphertexts, "
        "sigma 15.09 per coefficient at N=4096, 8 sigma inside the decryption bound) against sums of "
        "fresh public-key encryptions of random values (each sum's values in the range K uploads may "
        f"use), seeds 0..{args.seeds - 1}. SEAL's invariant noise budget is 0 from 1/4 of the bound "
        "on, so a sum can decrypt exactly with budget 0; past the bound it decrypts to garbage.\n\n"
        + markdown_table(["BFV setting", "capacity", "uploads summed", "exact", "noise budget (bits)"], rows)
        + "\nCKKS: largest distance of a decrypted slot from the integer sum (must stay below 0.5 for "
        f"rounding to recover it); capacity {ckks_capacity:,} for he-scheme=ckks.\n\n"
        + markdown_table(["CKKS setting", "capacity", "uploads summed", "max error", "rounds back"], ckks_rows)
        + f"\nSymmetric-key encryption (default BFV profile, one ciphertext of 4,096 slots): "
        f"{symmetric:,} bytes against {public_bytes:,} for public-key encryption; "
        f"make_context_public() on a symmetric context {'works' if can_publish else 'is refused'}.\n\n"
        f"Profiles in use: {', '.join(f'{s} {v}: {profile_max_summands(s, v):,}' for s, v in (('bfv', 1), ('bfv', 2), ('ckks', 1)))} "
        "uploads.\n\nCommand: `python benchmarks/he_capacity.py --seeds " + str(args.seeds) + "`\n"
    )
    write_result("he_capacity.md", text)


if __name__ == "__main__":
    main()
