"""The HE profiles both sides and the run config agree on (no TenSEAL import here, so
``config/`` validates ``he-scheme`` / ``he-pack`` without loading it).

scheme -> values per slot -> (coefficient modulus bit sizes, bits of a slot's integer
range: BFV's plain prime, CKKS's exactly decodable range); see :mod:`privacy.he`.
"""

from __future__ import annotations

PROFILES: dict[str, dict[int, tuple[tuple[int, ...], int]]] = {
    "bfv": {1: ((56, 53), 40), 2: ((60, 49), 48)},
    "ckks": {1: ((60, 49), 39)},
}
#: Valid values of the ``he-scheme`` run-config key.
SCHEMES = tuple(PROFILES)
#: Every valid ``he-pack`` of some scheme.
PACKINGS = tuple(sorted({v for packs in PROFILES.values() for v in packs}))
#: Why a scheme offers fewer values per slot than another, for the error message.
PACKING_LIMITS = {
    "ckks": "a CKKS slot's 39-bit integer range has no room for two lanes; he-scheme=bfv takes he-pack=2",
}


def packing_error(scheme: str, values_per_slot: int) -> str | None:
    """The valid values per slot of ``scheme`` and why, when ``values_per_slot`` is not one."""
    packs = PROFILES[scheme]
    if values_per_slot in packs:
        return None
    why = PACKING_LIMITS.get(scheme, "")
    return "valid: " + ", ".join(map(str, packs)) + (f" ({why})" if why else "")
