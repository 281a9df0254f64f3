"""The wire format of fedloom's SecAgg+ rounds: message types, record and key names.

A round under ``--secagg`` is four exchanges with the sampled clients (Bell et al.'s
rounds 0-3): ``setup`` (public keys up), ``share_keys`` (every client's public keys
down, its encrypted Shamir shares up), the train message (the shares relayed to
their owners down, the masked update up) and ``unmask`` (who survived down, the
shares that remove the masks up). The server side is :mod:`strategies.secagg`, the
client side :mod:`client.secagg`.
"""

from __future__ import annotations

#: Message types of the extra exchanges (Flower routes ``query.<action>``).
SETUP = "query.secagg_setup"
SHARE_KEYS = "query.secagg_share_keys"
UNMASK = "query.secagg_unmask"
#: The ConfigRecord holding the protocol's values in every message of a secure round,
#: the train message and its reply included.
RECORD = "secagg"
#: The reply array holding the masked update (uint32 or uint64).
MASKED = "masked"

ROUND = "round"
THRESHOLD = "threshold"
NUM_CLIENTS = "num-clients"
BITS = "bits"
CLIP = "clip"
MOD_BITS = "mod-bits"
EQUAL_WEIGHTS = "equal-weights"
NOISE_STD = "noise-std"
PK1, PK2 = "pk1", "pk2"  # mask-agreement and encryption public keys
NODE_IDS = "nids"
PK1S, PK2S = "pk1s", "pk2s"
DESTINATIONS = "dsts"
SOURCES = "srcs"
CIPHERTEXTS = "ctxts"
ACTIVE = "active"
DEAD = "dead"
SHARES = "shares"
