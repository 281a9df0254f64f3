"""FedAvg over ciphertexts: the server adds client uploads it cannot read.

Each client sends its weights, pre-weighted by its example count and encrypted
(see :mod:`privacy.he`). The server checks every reply (ciphertext count and
validity, example count), adds the valid ones slot-wise and sums the weights in
the clear. The encrypted sum *is* the next global model: it goes to the clients
of the next round (train and evaluate) with the total weight, and they decrypt
it. Evaluation is therefore federated: the server never holds plaintext weights.

With ``block_fraction < 1`` (``--compression randk:FRACTION``) each round's
clients upload only a random subset of the ciphertext blocks, chosen by a seed
the server sends with the round (the same subset for every client, so the
uploads still add up). The server keeps the global model as one ciphertext and
one total weight per block: the initial model, encrypted once with the public
key at weight ``max_weight``; then each round replaces the blocks it received.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedloom.compression.flat import flatten
from fedloom.compression.sparse import randk_indices
from fedloom.privacy import he
from fedloom.privacy.he_encoding import block_sizes, encrypt_weights
from fedloom.protocol.keys import (
    COMPRESSION_SEED, HE_BLOCK_WEIGHTS, HE_KEY_ID, HE_TOTAL_WEIGHT, NUM_EXAMPLES, PROXIMAL_MU,
)
from fedloom.protocol.records import ciphertext_record, is_ciphertext_record, record_ciphertexts

from .compressed import round_seed
from .delegating import Rejection, RejectsReplies

class EncryptedFedAvg(RejectsReplies, FedAvg):
    """FedAvg whose aggregate is a sum of BFV or CKKS ciphertexts (Flower Message API)."""

    def __init__(
        self, *, he_dir: str, num_parameters: int, max_weight: int,
        proximal_mu: float = 0.0, block_fraction: float = 1.0, seed: int = 0, **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not 0 < block_fraction <= 1:
            raise ValueError(f"block fraction must be in (0, 1], got {block_fraction}")
        self.he_dir = he_dir
        he.check_server_folder(Path(he_dir))
        self.params = he.load_params(Path(he_dir))
        if max_weight > self.params.max_weight:
            raise ValueError(
                f"the HE keys in {he_dir} were made for at most {self.params.max_weight} examples per "
                f"round, but this task's training set has {max_weight}: sums could overflow; "
                f"make keys with a max weight >= {max_weight} (deploy/provision_he.py --max-weight)"
            )
        #: Uploads one sum holds and still decrypts exactly (the profile's noise budget).
        self.max_summands = self.params.max_summands
        self.num_ciphertexts = self.params.ciphertexts_for(num_parameters)
        self.block_sizes = block_sizes(self.params, num_parameters)
        ctx = he.public_context(Path(he_dir))
        fresh = he.encrypt(ctx, np.zeros(1, np.int64), 1, scheme=self.params.scheme)
        self.layout = he.layout(he.deserialize(ctx, fresh, scheme=self.params.scheme)[0])
        self.max_weight = max_weight
        self.proximal_mu = proximal_mu
        self.block_fraction, self.seed = block_fraction, seed
        self.total_weight = 0  # 0: the arrays sent are the plain initial model
        self.rejected: list[Rejection] = []
        self.blocks: list[bytes] = []  # partial uploads: the global model, block by block
        self.block_weights: list[int] = []
        self.selected = np.arange(self.num_ciphertexts)  # the blocks this round uploads
        self.seed_of_round = 0

    def state_dict(self) -> dict[str, Any]:
        """The total weight of the aggregate and, for partial uploads, the global model's
        ciphertext blocks (as uint8 arrays) with their weights."""
        return {
            "total_weight": self.total_weight, "seed_of_round": self.seed_of_round,
            "blocks": [np.frombuffer(b, np.uint8) for b in self.blocks],
            "block_weights": list(self.block_weights),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_weight, self.seed_of_round = int(state["total_weight"]), int(state["seed_of_round"])
        self.blocks = [np.asarray(b, np.uint8).tobytes() for b in state["blocks"]]
        self.block_weights = [int(w) for w in state["block_weights"]]

    @property
    def partial(self) -> bool:
        return self.block_fraction < 1

    def summary(self) -> None:
        log(INFO, "\t├──> Encrypted aggregation: %s N=%d, %d value(s) per slot, %d ciphertexts per model",
            self.params.scheme.upper(), self.params.poly_modulus_degree, self.params.values_per_slot,
            self.num_ciphertexts)
        if self.partial:
            log(INFO, "\t├──> Uploads: a shared random %g of the ciphertexts per round (randk)",
                self.block_fraction)
        super().summary()

    def _config(self, config: ConfigRecord) -> ConfigRecord:
        extra: dict[str, int | float | str | list[int]] = {
            HE_TOTAL_WEIGHT: self.total_weight, HE_KEY_ID: self.params.key_id,
        }
        if self.proximal_mu:
            extra[PROXIMAL_MU] = self.proximal_mu
        if self.partial:
            extra[HE_BLOCK_WEIGHTS] = list(self.block_weights)
            extra[COMPRESSION_SEED] = self.seed_of_round
        return ConfigRecord({**config, **extra})

    def encrypt_initial(self, arrays: ArrayRecord) -> ArrayRecord:
        """Partial uploads start from the initial model, encrypted with the public key."""
        if not self.blocks:
            if is_ciphertext_record(arrays):
                raise ValueError("resumed without the strategy state: the block weights are lost")
            values = flatten({k: v.numpy() for k, v in arrays.items()})
            ctx = he.public_context(Path(self.he_dir))
            self.blocks = encrypt_weights(ctx, self.params, values, self.max_weight)
            self.block_weights = [self.max_weight] * len(self.blocks)
        return ciphertext_record(self.blocks)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.rejected = []
        if self.partial:
            self.seed_of_round = round_seed(self.seed, server_round)
            self.selected = randk_indices(self.num_ciphertexts, self.block_fraction, self.seed_of_round)
            arrays = self.encrypt_initial(arrays)
        return super().configure_train(server_round, arrays, self._config(config), grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays, self._config(config), grid)

    def check_upload(self, content: RecordDict, weight_so_far: int) -> tuple[list, int]:
        """The reply's deserialized ciphertexts and weight; ``ValueError`` says why not."""
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            raise ValueError("expected one ArrayRecord and one MetricRecord")
        ciphertexts = record_ciphertexts(next(iter(content.array_records.values())))
        if len(ciphertexts) != len(self.selected):
            raise ValueError(f"{len(ciphertexts)} ciphertexts, expected {len(self.selected)}")
        weight = next(iter(content.metric_records.values())).get(NUM_EXAMPLES)
        if not isinstance(weight, int) or not 1 <= weight <= self.max_weight - weight_so_far:
            raise ValueError(
                f"{NUM_EXAMPLES}={weight!r} must be an integer in [1, {self.max_weight - weight_so_far}] "
                f"(the encrypted sum must stay below max weight {self.max_weight})"
            )
        ctx = he.public_context(Path(self.he_dir))
        vectors = he.deserialize(ctx, ciphertexts, scheme=self.params.scheme)
        for block, vector in zip(self.selected.tolist(), vectors, strict=True):
            if vector.size() != self.block_sizes[block]:
                raise ValueError(f"ciphertext {block} holds {vector.size()} slots, expected {self.block_sizes[block]}")
            got = he.layout(vector)
            if got != self.layout:
                raise ValueError(
                    f"ciphertext {block} has another modulus level or scale ({got[1]:g}) than this "
                    f"run's fresh ciphertexts ({self.layout[1]:g}): it cannot be added"
                )
        return vectors, weight

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        uploads: list[Any] = []
        good: list[Message] = []
        total = 0
        for msg in replies:
            if msg.has_error():
                continue
            try:
                if len(uploads) >= self.max_summands:
                    raise ValueError(
                        f"this round already holds {self.max_summands} uploads, the most whose "
                        "encrypted sum decrypts exactly with this HE profile"
                    )
                vectors, weight = self.check_upload(msg.content, total)
            except ValueError as exc:
                self.rejected.append(Rejection(msg.metadata.src_node_id, str(exc)))
                log(WARNING, "round %d: rejected reply from node %d: %s",
                    server_round, msg.metadata.src_node_id, exc)
                continue
            uploads.append(vectors)
            good.append(msg)
            total += weight
        if not uploads:
            return None, None
        self.total_weight = total
        summed = he.add_all(uploads)
        if self.partial:
            for block, ciphertext in zip(self.selected.tolist(), summed, strict=True):
                self.blocks[block], self.block_weights[block] = ciphertext, total
            summed = self.blocks
        arrays = ciphertext_record(summed)
        metrics = self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)
        return arrays, metrics
