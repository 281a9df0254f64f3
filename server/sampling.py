"""The generator Flower's strategies sample each round's clients with, private to the run.

Flower's ``sample_nodes`` draws from the module-level ``random``, which other threads
of the server process (the simulation engine's) draw from too, so a seeded run sampled
other clients from one run to the next. The server points Flower's sampler at
``SAMPLING_RNG``, seeded from the run's seed and saved in every checkpoint.
"""

from __future__ import annotations

import random

from fedloom.flower_compat import use_sampling_rng

SAMPLING_RNG = random.Random()


def use_private_sampling_rng(seed: int) -> None:
    """Seed ``SAMPLING_RNG`` and make Flower's ``sample_nodes`` draw from it."""
    SAMPLING_RNG.seed(seed)
    use_sampling_rng(SAMPLING_RNG)
