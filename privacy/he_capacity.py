"""How many uploads one encrypted sum can hold and still decrypt exactly (pure functions).

Every fresh ciphertext carries noise; a sum of ``k`` independent ones carries their
sum. SEAL encrypts at the key level and divides by the special prime, so a fresh
ciphertext's noise is that division's rounding: per coefficient ``r0 + r1 * s`` with
``r0, r1`` uniform in [-1/2, 1/2] and ``s`` the uniform ternary secret, variance
``(1 + 2N/3) / 12``, plus 1/12 from rounding ``q * m / t`` (the encryption noise
itself, divided by a ~50-bit prime, is negligible). The noise of ``k`` uploads is a
sum of ``k`` independent such terms, about Gaussian with ``k`` times the variance
(the clients' encryptions draw independent randomness).

* BFV decrypts a coefficient exactly while its noise stays below ``q / (2t)``
  (``q`` the data prime, ``t`` the plain modulus). Past it one coefficient is off, and
  batching spreads that over every slot: the whole ciphertext decrypts to garbage.
* CKKS decodes slot ``j`` as ``sum_i e_i * zeta_j**i / scale``; its noise must stay
  below 1/2 for rounding to recover the integer. Each slot is a sum of ``N``
  coefficients' noise (variance ``N`` times theirs; the real part's is half of it, the
  bound keeps the whole).

The capacity is the largest ``k`` whose noise stays ``SIGMAS`` standard deviations
inside the bound: a coefficient fails with probability below 2**-49 per ciphertext
per round. ``benchmarks/he_capacity.py`` measures SEAL's noise budget against it.
"""

from __future__ import annotations

import math

from .he_profiles import PROFILES

#: CKKS encoding scale (bits): a slot holds an integer as ``integer * 2**19``.
CKKS_SCALE_BITS = 19
#: Standard deviations of headroom: P(|N(0,1)| > 8) = 1.2e-15 per coefficient.
SIGMAS = 8.0


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n in small:
        return True
    if any(n % p == 0 for p in small):
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in small:  # deterministic Miller-Rabin for n < 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def batching_prime(bits: int, poly_modulus_degree: int) -> int:
    """The largest prime below ``2**bits`` that is 1 mod ``2 * poly_modulus_degree``."""
    step = 2 * poly_modulus_degree
    candidate = ((2**bits - 1) // step) * step + 1
    while not is_prime(candidate):
        candidate -= step
    return candidate


def fresh_noise_std(poly_modulus_degree: int) -> float:
    """Standard deviation of one coefficient's noise in a fresh public-key encryption."""
    n = poly_modulus_degree
    return math.sqrt((1 + 2 * n / 3) / 12 + 1 / 12)


def bfv_max_summands(*, data_modulus: int, plain_modulus: int, poly_modulus_degree: int) -> int:
    """The most fresh BFV ciphertexts whose sum decrypts exactly (noise below ``q / 2t``)."""
    bound = data_modulus / (2 * plain_modulus)
    return math.floor((bound / (SIGMAS * fresh_noise_std(poly_modulus_degree))) ** 2)


def ckks_max_summands(*, scale: float, poly_modulus_degree: int) -> int:
    """The most fresh CKKS ciphertexts whose sum decodes within 1/2 of each integer slot."""
    slot_std = fresh_noise_std(poly_modulus_degree) * math.sqrt(poly_modulus_degree) / scale
    return math.floor((0.5 / (SIGMAS * slot_std)) ** 2)


def profile_max_summands(scheme: str, values_per_slot: int, poly_modulus_degree: int = 4096) -> int:
    """The capacity of an HE profile (:data:`privacy.he_profiles.PROFILES`); the data
    prime is SEAL's first coefficient modulus, the largest batching prime of its size."""
    coeff, plain_bits = PROFILES[scheme][values_per_slot]
    if scheme == "ckks":
        return ckks_max_summands(scale=2.0**CKKS_SCALE_BITS, poly_modulus_degree=poly_modulus_degree)
    return bfv_max_summands(
        data_modulus=batching_prime(coeff[0], poly_modulus_degree),
        plain_modulus=batching_prime(plain_bits, poly_modulus_degree),
        poly_modulus_degree=poly_modulus_degree,
    )
