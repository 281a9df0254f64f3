"""FedAvg over ciphertexts: the server adds client uploads it cannot read.

Each client sends its weights, pre-weighted by its example count and encrypted
(see :mod:`privacy.he`). The server checks every reply (ciphertext count and
validity, example count), adds the valid ones slot-wise and sums the weights in
the clear. The encrypted sum *is* the next global model: it goes to the clients
of the next round (train and evaluate) with the total weight, and they decrypt
it. Evaluation is therefore federated: the server never holds plaintext weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from privacy import he

from .validation import WEIGHT_KEY, Rejection

TOTAL_WEIGHT_KEY = "he-total-weight"


def ciphertext_record(ciphertexts: list[bytes]) -> ArrayRecord:
    """Ciphertexts on the wire: one uint8 array per ciphertext, in order."""
    return ArrayRecord({f"ct{i:06d}": Array(np.frombuffer(c, np.uint8)) for i, c in enumerate(ciphertexts)})


def record_ciphertexts(record: ArrayRecord) -> list[bytes]:
    """Inverse of :func:`ciphertext_record`; ``ValueError`` if it is not one."""
    keys = list(record.keys())
    if keys != [f"ct{i:06d}" for i in range(len(keys))]:
        raise ValueError("arrays are not a ciphertext sequence ct000000, ct000001, ...")
    out = []
    for key in keys:
        arr = record[key].numpy()
        if arr.dtype != np.uint8 or arr.ndim != 1:
            raise ValueError(f"{key}: expected 1-d uint8, got {arr.dtype}{list(arr.shape)}")
        out.append(arr.tobytes())
    return out


class EncryptedFedAvg(FedAvg):
    """FedAvg whose aggregate is a sum of BFV ciphertexts (Flower Message API)."""

    def __init__(
        self, *, he_dir: str, num_parameters: int, max_weight: int,
        proximal_mu: float = 0.0, **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.he_dir = he_dir
        self.params = he.load_params(Path(he_dir))
        self.num_ciphertexts = math.ceil(num_parameters / self.params.slots)
        self.max_weight = max_weight
        self.proximal_mu = proximal_mu
        self.total_weight = 0  # 0: the arrays sent are the plain initial model
        self.rejected: list[Rejection] = []

    def summary(self) -> None:
        log(INFO, "\t├──> Encrypted aggregation: BFV N=%d, %d ciphertexts per upload",
            self.params.poly_modulus_degree, self.num_ciphertexts)
        super().summary()

    def _config(self, config: ConfigRecord) -> ConfigRecord:
        extra: dict[str, int | float] = {TOTAL_WEIGHT_KEY: self.total_weight}
        if self.proximal_mu:
            extra["proximal-mu"] = self.proximal_mu
        return ConfigRecord({**config, **extra})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.rejected = []
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
        if len(ciphertexts) != self.num_ciphertexts:
            raise ValueError(f"{len(ciphertexts)} ciphertexts, expected {self.num_ciphertexts}")
        weight = next(iter(content.metric_records.values())).get(WEIGHT_KEY)
        if not isinstance(weight, int) or not 1 <= weight <= self.max_weight - weight_so_far:
            raise ValueError(
                f"{WEIGHT_KEY}={weight!r} must be an integer in [1, {self.max_weight - weight_so_far}] "
                f"(the encrypted sum must stay below max weight {self.max_weight})"
            )
        return he.deserialize(he.public_context(Path(self.he_dir)), ciphertexts), weight

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        uploads, good, total = [], [], 0
        for msg in replies:
            if msg.has_error():
                continue
            try:
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
        arrays = ciphertext_record(he.add_all(uploads))
        metrics = self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)
        return arrays, metrics
