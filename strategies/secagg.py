"""Secure aggregation (SecAgg+) around a mean-based strategy: the server learns only the sum.

:class:`SecAggStrategy` wraps the inner chain. In ``configure_train`` it runs the
protocol's first two exchanges with the sampled clients over the grid (public keys;
encrypted Shamir shares of each client's mask seed and mask key), then hands the
train messages on with every client's relayed shares attached. Each client replies
with its quantized, weighted update under masks (:mod:`client.secagg`). In
``aggregate_train`` it asks the clients whose masked update arrived for the shares
that remove the masks: the own-mask seed of every survivor, the mask key of every
client that shared keys but dropped out afterwards (its pairwise masks are still in
the survivors' uploads). The unmasked sum divided by the total weight is the round's
weighted mean update; the inner chain receives one reply holding the global model
plus that mean, with the clients' plaintext metrics averaged, and aggregates it as
usual (FedAvg returns it, FedAvgM/FedAdam/... take their server step from it).

A round in which fewer than ``threshold`` clients are left at any stage fails with
:class:`SecureAggregationFailed` (a :class:`TooFewReplies`): the previous model stands.
The protocol's extra messages are counted in ``bytes_up`` / ``bytes_down`` through
``extra_up`` / ``extra_down``; failures in them are reported through ``extra_failed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedloom.compression.flat import flatten, unflatten
from fedloom.compression.sparse import randk_indices
from fedloom.privacy import secagg as sa
from fedloom.protocol import secagg as P
from fedloom.protocol.keys import ARRAYS, METRICS
from fedloom.protocol.keys import COMPRESSION_SEED as SEED_KEY
from fedloom.protocol.keys import NUM_EXAMPLES as WEIGHT_KEY

from .compressed import round_seed
from .delegating import DelegatingStrategy, Rejection, chain_of
from .instrumented import TooFewReplies, failed_replies
from .private import SUMMED_CLIENTS_KEY, ClientDPStrategy


class SecureAggregationFailed(TooFewReplies):
    """Too few clients are left to unmask the round's sum; the previous model stands."""


def _record(msg: Message) -> ConfigRecord:
    if P.RECORD not in msg.content.config_records:
        raise ValueError(f"reply lacks the {P.RECORD!r} config record")
    return msg.content.config_records[P.RECORD]


def _bytes_list(record: ConfigRecord, key: str) -> list[bytes]:
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ValueError(f"{key} must be a list of bytes")
    return cast(list[bytes], value)


def _int_list(record: ConfigRecord, key: str) -> list[int]:
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{key} must be a list of integers")
    return cast(list[int], value)


def neighbourhoods(nodes: list[int], size: int, rng: np.random.Generator) -> dict[int, set[int]]:
    """Each node's neighbourhood, itself included: everyone (``size`` 0, SecAgg), or, as
    in SecAgg+ and Flower's workflow, ``size // 2`` nodes on either side of it on a ring
    in random order (a ``size``-regular graph; Bell et al. take ``size`` = O(log n))."""
    half = size // 2
    if size == 0 or 2 * half + 1 >= len(nodes):
        return {n: set(nodes) for n in nodes}
    ring = [nodes[i] for i in rng.permutation(len(nodes))]
    return {n: {ring[(i + d) % len(ring)] for d in range(-half, half + 1)} for i, n in enumerate(ring)}


class SecAggStrategy(DelegatingStrategy):
    """``inner`` fed the weighted mean update that SecAgg+ reveals, and nothing else."""

    def __init__(
        self, inner: Strategy, *, threshold: float, bits: int, clip: float, max_weight: int,
        equal_weights: bool = False, randk_fraction: float = 1.0, seed: int = 0,
        noise_std: float = 0.0, neighbours: int = 0, timeout: float | None = None,
    ) -> None:
        sa.threshold_count(threshold, 2)  # ValueError on a bad fraction
        sa.modulus_bits(bits, max_weight)  # ValueError on bits that cannot work
        if clip <= 0:
            raise ValueError(f"invalid secagg clip={clip!r}; valid: > 0")
        if neighbours < 0 or neighbours == 1:
            raise ValueError(f"invalid secagg neighbours={neighbours!r}; valid: 0 (all) or >= 2")
        if not 0 < randk_fraction <= 1:
            raise ValueError(f"invalid randk fraction={randk_fraction!r}; valid: 0 < f <= 1")
        self.inner, self.threshold, self.bits, self.clip = inner, threshold, bits, clip
        self.max_weight, self.equal_weights = max_weight, equal_weights
        self.randk_fraction, self.seed, self.noise_std, self.timeout = randk_fraction, seed, noise_std, timeout
        self.neighbours = neighbours
        for wrapped in chain_of(inner):  # the one reply it hands on stands for the survivors
            if isinstance(wrapped, ClientDPStrategy):
                wrapped.trusts_summed_replies = True
        self._reset()

    def _reset(self) -> None:
        self.extra_down: list[Message] = []
        self.extra_up: list[Message] = []
        self.extra_failed: list[dict[str, Any]] = []
        self.rejected: list[Rejection] = []
        self._grid: Grid | None = None
        self._round = 0
        self._count = 0  # the threshold in clients
        self._mod_bits = 0
        self._keys: dict[int, tuple[bytes, bytes]] = {}  # node -> (mask key, encryption key)
        self._sources: dict[int, list[int]] = {}  # node -> the clients whose shares it holds
        self._graph: dict[int, set[int]] = {}  # node -> its neighbourhood, itself included
        self._global = np.zeros(0, np.float32)
        self._like: dict[str, np.ndarray] = {}
        self._selected: np.ndarray | None = None  # randk: the round's shared coordinates

    def __getstate__(self) -> dict[str, Any]:  # checkpoints pickle the chain: no round state
        state = dict(self.__dict__)
        for key in ("extra_down", "extra_up", "extra_failed", "rejected", "_keys", "_sources", "_graph"):
            state[key] = type(state[key])()
        state["_grid"], state["_global"], state["_like"] = None, np.zeros(0, np.float32), {}
        return state

    def summary(self) -> None:
        log(INFO, "\t├──> Secure aggregation (SecAgg+): threshold %g of each round's clients, "
            "%d-bit quantization of updates within +-%g", self.threshold, self.bits, self.clip)
        self.inner.summary()

    # -- the exchanges ---------------------------------------------------------------

    def _exchange(self, phase: str, contents: dict[int, RecordDict], message_type: str) -> dict[int, ConfigRecord]:
        """Send ``contents`` (node -> content), return node -> the reply's protocol record."""
        assert self._grid is not None
        messages = [Message(content=c, dst_node_id=n, message_type=message_type) for n, c in contents.items()]
        replies = list(self._grid.send_and_receive(messages, timeout=self.timeout))
        self.extra_down += messages
        self.extra_up += [m for m in replies if not m.has_error()]
        self.extra_failed += failed_replies(phase, list(contents), replies, {})
        out = {}
        for msg in replies:
            if msg.has_error() or msg.metadata.src_node_id not in contents:
                continue
            try:
                out[msg.metadata.src_node_id] = _record(msg)
            except ValueError as exc:
                self.extra_failed.append({"phase": phase, "node_id": msg.metadata.src_node_id, "reason": str(exc)})
        return out

    def _check_left(self, stage: str, left: set[int]) -> None:
        """Every remaining client's neighbourhood still holds ``threshold`` remaining clients."""
        if self.neighbours == 0:
            self._check_count(stage, len(left), len(self._graph))
            return
        for node in sorted(left):
            near = self._graph[node] & left
            if len(near) < self._count:
                raise SecureAggregationFailed(
                    f"round {self._round}: secure aggregation failed at {stage}: node {node} has "
                    f"{len(near)} of its {len(self._graph[node])} neighbourhood left, {self._count} "
                    f"(secagg-threshold={self.threshold:g}) needed to unmask; the model of the "
                    "previous round stands"
                )

    def _check_count(self, stage: str, left: int, of: int) -> None:
        if left < self._count:
            raise SecureAggregationFailed(
                f"round {self._round}: secure aggregation failed at {stage}: {left} of {of} clients "
                f"left, {self._count} (secagg-threshold={self.threshold:g}) needed to unmask the sum; "
                "the model of the previous round stands"
            )

    def _distributed_noise(self) -> None:
        """Client-level DP (``dp=client``, clipped on the clients): each client adds
        ``N(0, (z C)^2 / t)`` to its clipped update, so the sum of the at least ``t``
        survivors carries the ``N(0, (z C)^2)`` that DP-FedAvg adds centrally; the server
        adds none. The accountant (:class:`ClientDPStrategy`) is unchanged."""
        dp = next((s for s in chain_of(self.inner) if isinstance(s, ClientDPStrategy)), None)
        if dp is None or dp.dp is None:
            return
        dp.dp.noise_multiplier = 0.0  # type: ignore[attr-defined]  # Flower's wrapper: no central noise
        self.noise_std = sa.noise_share(dp.noise, dp.clipping_norm, self._count)
        needed = sa.clip_for_noise(dp.clipping_norm, self.noise_std)
        if self.clip < needed:
            raise ValueError(
                f"secagg-clip={self.clip:g} would clip the noise each client adds (std "
                f"{self.noise_std:.3g} per coordinate for noise multiplier {dp.noise:.3g}, "
                f"dp-clipping-norm {dp.clipping_norm:g}, {self._count} clients to unmask), which the "
                f"accountant does not cover; valid: secagg-clip >= {needed:.3g}"
            )

    def _setup(self, nodes: list[int]) -> None:
        config = ConfigRecord({
            P.ROUND: self._round, P.THRESHOLD: self._count, P.NUM_CLIENTS: len(nodes),
            P.BITS: self.bits, P.CLIP: self.clip, P.MOD_BITS: self._mod_bits,
            P.EQUAL_WEIGHTS: self.equal_weights, P.NOISE_STD: self.noise_std,
        })
        content = RecordDict({P.RECORD: config})
        for node, record in self._exchange("secagg setup", dict.fromkeys(nodes, content), P.SETUP).items():
            pk1, pk2 = record.get(P.PK1), record.get(P.PK2)
            if isinstance(pk1, bytes) and isinstance(pk2, bytes):
                self._keys[node] = (pk1, pk2)
        self._check_left("setup (public keys)", set(self._keys))

    def _share_keys(self) -> dict[int, list[tuple[int, bytes]]]:
        """The encrypted shares each client sent, by destination: dst -> [(src, ciphertext)]."""
        near = {n: sorted(self._graph[n] & set(self._keys)) for n in sorted(self._keys)}
        contents = {n: RecordDict({P.RECORD: ConfigRecord({
            P.ROUND: self._round, P.NODE_IDS: nodes,
            P.PK1S: [self._keys[m][0] for m in nodes], P.PK2S: [self._keys[m][1] for m in nodes],
        })}) for n, nodes in near.items()}
        relay: dict[int, list[tuple[int, bytes]]] = {}
        for src, record in self._exchange("secagg share keys", contents, P.SHARE_KEYS).items():
            try:
                dsts, ctxts = _int_list(record, P.DESTINATIONS), _bytes_list(record, P.CIPHERTEXTS)
                if sorted(dsts) != [n for n in near[src] if n != src] or len(ctxts) != len(dsts):
                    raise ValueError("shares must go to every other client of its neighbourhood, one each")
            except ValueError as exc:
                self.extra_failed.append({"phase": "secagg share keys", "node_id": src, "reason": str(exc)})
                continue
            for dst, ctxt in zip(dsts, ctxts, strict=True):
                relay.setdefault(dst, []).append((src, ctxt))
        senders = {src for pairs in relay.values() for src, _ in pairs}
        self._check_left("share keys", senders)
        return {dst: [(s, c) for s, c in pairs if s in senders] for dst, pairs in relay.items() if dst in senders}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reset()
        self._grid, self._round = grid, server_round
        self._like = {k: v.numpy() for k, v in arrays.items()}
        self._global = flatten(self._like)
        if self.randk_fraction < 1:
            seed = round_seed(self.seed, server_round)
            config = ConfigRecord({**config, SEED_KEY: seed})
            self._selected = randk_indices(self._global.size, self.randk_fraction, seed)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        nodes = [m.metadata.dst_node_id for m in messages]
        self._graph = neighbourhoods(nodes, self.neighbours, np.random.default_rng([self.seed, server_round, 0x5EC]))
        size = min(len(g) for g in self._graph.values()) if nodes else 0
        self._count = sa.threshold_count(self.threshold, size) if size >= 2 else 2
        self._check_count("sampling", len(nodes), len(nodes))
        self._mod_bits = sa.modulus_bits(self.bits, len(nodes) if self.equal_weights else self.max_weight)
        self._distributed_noise()
        self._setup(nodes)
        relay = self._share_keys()
        self._sources = {dst: [s for s, _ in pairs] for dst, pairs in relay.items()}
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in relay:
                continue  # dropped before its shares went out: it takes no part in this round
            content = RecordDict(dict(msg.content.items()))
            content[P.RECORD] = ConfigRecord({
                P.ROUND: server_round, P.SOURCES: [s for s, _ in relay[node]],
                P.CIPHERTEXTS: [c for _, c in relay[node]],
            })
            msg.content = content
            out.append(msg)
        return out

    # -- unmasking -------------------------------------------------------------------

    def _upload(self, msg: Message) -> tuple[np.ndarray, int]:
        """The reply's masked vector and weight; ``ValueError`` says why it cannot be used."""
        if msg.metadata.src_node_id not in self._sources:
            raise ValueError("reply from a node that did not share keys this round")
        arrays = [r for r in msg.content.array_records.values() if P.MASKED in r]
        if len(arrays) != 1 or len(arrays[0]) != 1:
            raise ValueError(f"expected one ArrayRecord holding only {P.MASKED!r}")
        vec = arrays[0][P.MASKED].numpy()
        size = self._global.size if self._selected is None else self._selected.size
        dtype = sa.wire_dtype(self._mod_bits)
        if vec.dtype != dtype or vec.shape != (size,):
            raise ValueError(f"masked update is {vec.dtype}{list(vec.shape)}, expected {dtype}[{size}]")
        metrics = list(msg.content.metric_records.values())
        weight = metrics[0].get(WEIGHT_KEY) if len(metrics) == 1 else None
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= self.max_weight:
            raise ValueError(f"{WEIGHT_KEY}={weight!r} must be an integer in [1, {self.max_weight}]")
        return vec, (1 if self.equal_weights else weight)

    @staticmethod
    def _upload_weight(msg: Message) -> int:
        """The example count a checked reply reports (:meth:`_upload` made sure it is an int)."""
        return cast(int, next(iter(msg.content.metric_records.values()))[WEIGHT_KEY])

    def _unmask(self, survivors: list[int], dropped: list[int]) -> dict[int, list[bytes]]:
        """owner -> the shares of its secret the survivors returned."""
        alive, gone = set(survivors), set(dropped)
        contents = {n: RecordDict({P.RECORD: ConfigRecord({
            P.ROUND: self._round, P.ACTIVE: sorted(self._graph[n] & alive), P.DEAD: sorted(self._graph[n] & gone),
        })}) for n in survivors}
        shares: dict[int, list[bytes]] = {n: [] for n in survivors + dropped}
        for node, record in self._exchange("secagg unmask", contents, P.UNMASK).items():
            try:
                owners, values = _int_list(record, P.NODE_IDS), _bytes_list(record, P.SHARES)
                if len(owners) != len(values) or not set(owners) <= set(shares):
                    raise ValueError("shares of nodes that were not asked for")
            except ValueError as exc:
                self.extra_failed.append({"phase": "secagg unmask", "node_id": node, "reason": str(exc)})
                continue
            for owner, share in zip(owners, values, strict=True):
                shares[owner].append(share)
        short = sorted(n for n, s in shares.items() if len(s) < self._count)
        if short:
            raise SecureAggregationFailed(
                f"round {self._round}: secure aggregation failed at unmask: the secrets of node(s) "
                f"{', '.join(map(str, short))} got fewer than {self._count} shares back "
                f"(secagg-threshold={self.threshold:g}); the model of the previous round stands"
            )
        return shares

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        uploads: dict[int, tuple[np.ndarray, int]] = {}
        good: list[Message] = []
        for msg in replies:
            if msg.has_error():
                continue
            try:
                uploads[msg.metadata.src_node_id] = self._upload(msg)
                good.append(msg)
            except (ValueError, KeyError) as exc:
                self.rejected.append(Rejection(msg.metadata.src_node_id, f"secagg: {exc}"))
                log(WARNING, "round %d: rejected reply from node %d: %s", server_round, msg.metadata.src_node_id, exc)
        survivors = sorted(uploads)
        dropped = sorted(set(self._sources) - set(survivors))
        self._check_left("collecting masked updates", set(survivors))
        shares = self._unmask(survivors, dropped)
        own_seeds = [sa.combine_shares(shares[n]) for n in survivors]
        pairs = []
        for gone in dropped:
            secret_key = sa.combine_shares(shares[gone])
            pairs += [(n, gone, sa.pair_key(secret_key, self._keys[n][0])) for n in survivors if gone in self._sources[n]]
        total = sa.unmask_sum((uploads[n][0] for n in survivors), own_seeds=own_seeds,
                              dropped_pairs=pairs, mod_bits=self._mod_bits)
        weight = sum(w for _, w in uploads.values())
        mean = sa.mean_update(total, weight, bits=self.bits, clip=self.clip)
        if self._selected is not None:
            full = np.zeros(self._global.size, np.float64)
            full[self._selected] = mean
            mean = full
        if dropped:
            log(INFO, "round %d: secure aggregation unmasked %d clients' sum; %d dropped after sharing "
                "keys were removed from it with the survivors' shares", server_round, len(survivors), len(dropped))
        weights = unflatten((self._global.astype(np.float64) + mean).astype(np.float32), self._like)
        metrics = aggregate_metricrecords([m.content for m in good], WEIGHT_KEY)
        metrics[WEIGHT_KEY] = sum(self._upload_weight(m) for m in good)
        metrics[SUMMED_CLIENTS_KEY] = len(survivors)  # client-level DP's fixed denominator
        reply = good[0]
        reply.content = RecordDict({
            ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()}),
            METRICS: metrics,
        })
        return self.inner.aggregate_train(server_round, [reply])
