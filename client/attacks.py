"""Byzantine clients for robustness studies: poisoned updates, pure functions.

An attacker trains honestly, then replaces its update ``u = local - global`` by:
``sign-flip``: ``-scale * u`` (Damaskinos et al. 2018); ``gaussian``: noise with
``scale`` times the update's RMS per coordinate (Blanchard et al. 2017 use Gaussian
updates); ``scaled``: ``scale * u`` (model-boosting, Bhagoji et al. 2019).
"""

from __future__ import annotations

import math

import numpy as np

from fedloom.config.keys import ATTACKS


def poison(update: np.ndarray, kind: str, *, scale: float, rng: np.random.Generator) -> np.ndarray:
    """The poisoned version of a flat float32 ``update``."""
    if kind == "sign-flip":
        return (-scale * update).astype(update.dtype)
    if kind == "scaled":
        return (scale * update).astype(update.dtype)
    if kind == "gaussian":
        rms = float(np.sqrt(np.mean(np.square(update, dtype=np.float64)))) if update.size else 0.0
        return rng.normal(0.0, scale * rms, size=update.shape).astype(update.dtype)
    raise ValueError(f"unknown attack {kind!r}; valid: {', '.join(ATTACKS)}")


def attackers(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """The partition ids that attack: ``ceil(fraction * n)`` of them, chosen by ``seed``."""
    count = math.ceil(fraction * num_partitions - 1e-9)
    order = np.random.default_rng([seed, 0xA77AC]).permutation(num_partitions)
    return frozenset(int(i) for i in order[:count])
