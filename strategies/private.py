"""Wrapper strategies for differential privacy; they account, the inner strategy aggregates.

* :class:`SampleDPStrategy` (``dp=sample``, clients run DP-SGD): reads every
  reply's privacy report (``partition-id``, cumulative ``dp-epsilon``,
  ``dp-exhausted``) into an :class:`~privacy.accounting.EpsilonLedger`, removes
  those per-client keys so Flower never averages them, and leaves out clients
  whose budget is spent (they reply without arrays). When every client is out
  of budget it raises :class:`PrivacyBudgetExhausted`, which ends the run.
* :class:`ClientDPStrategy` (``dp=client``, DP-FedAvg, McMahan et al. 2018):
  wraps the inner strategy with Flower's DP wrapper (fixed or adaptive
  clipping, on the server or the clients) once the population is known, and
  accounts the client-level epsilon of the subsampled Gaussian mechanism with
  Opacus's RDP analysis.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloom.flower_compat import (
    ClientSideAdaptiveClipping,
    ClientSideFixedClipping,
    SecureNoise,
    ServerSideAdaptiveClipping,
    ServerSideFixedClipping,
    sample_nodes,
    sampling_uniform,
)
from fedloom.privacy.accounting import EpsilonLedger, calibrate_noise, client_level_epsilon_of
from fedloom.privacy.secure_noise import SecureGaussian
from fedloom.protocol.keys import DP_EPSILON as EPSILON_KEY
from fedloom.protocol.keys import DP_EXHAUSTED as EXHAUSTED_KEY
from fedloom.protocol.keys import PARTITION_ID as PARTITION_KEY

from .delegating import DelegatingStrategy, Rejection
from .state import load_strategy_state, strategy_state

REPORT_KEYS = (EPSILON_KEY, EXHAUSTED_KEY, PARTITION_KEY)
#: Slack for float noise in a client's reported epsilon against the target.
EPSILON_TOLERANCE = 1e-9


class PrivacyBudgetExhausted(RuntimeError):
    """No client, or the run as a whole, has privacy budget left for another round."""


def _metrics(msg: Message) -> MetricRecord:
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        raise ValueError(f"expected one MetricRecord, got {len(records)}")
    return records[0]


class SampleDPStrategy(DelegatingStrategy):
    """Collects DP-SGD clients' epsilons and leaves out clients without budget."""

    def __init__(self, inner: Strategy, *, ledger: EpsilonLedger, target_epsilon: float) -> None:
        if target_epsilon < 0:
            raise ValueError(f"invalid target epsilon={target_epsilon!r}; valid: >= 0 (0: none)")
        self.inner, self.ledger, self.target_epsilon = inner, ledger, target_epsilon
        self.exhausted: set[int] = set()
        #: This round's replies left out (budget spent or no valid privacy report);
        #: InstrumentedStrategy subtracts them from the clients aggregated.
        self.rejected: list[Rejection] = []

    def state_dict(self) -> dict[str, Any]:
        return {"ledger": self.ledger.state_dict(), "exhausted": sorted(self.exhausted)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state["ledger"])
        self.exhausted = {int(c) for c in state["exhausted"]}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.ledger.population = len(list(grid.get_node_ids()))
        self.rejected = []
        return self.inner.configure_train(server_round, arrays, config, grid)

    def _read_report(self, server_round: int, msg: Message) -> bool:
        """Record ``msg``'s privacy report (removing it from its metrics); True if it trained."""
        metrics = _metrics(msg)
        missing = [k for k in REPORT_KEYS if k not in metrics]
        if missing:
            raise ValueError(f"reply lacks the privacy report keys {missing}")
        client = int(metrics.pop(PARTITION_KEY))  # type: ignore[arg-type]
        value = float(metrics.pop(EPSILON_KEY))  # type: ignore[arg-type]
        exhausted = bool(metrics.pop(EXHAUSTED_KEY))
        if self.target_epsilon and value > self.target_epsilon + EPSILON_TOLERANCE:
            raise ValueError(
                f"client {client} reports epsilon {value:.4f} above the target "
                f"{self.target_epsilon}"
            )
        self.ledger.record_client(
            server_round, client, value, trained=not exhausted, tolerance=EPSILON_TOLERANCE
        )
        if exhausted:
            self.exhausted.add(client)
            log(
                WARNING,
                "client %d has no privacy budget left (epsilon %.4f, target %g): left out",
                client, value, self.target_epsilon,
            )
        return not exhausted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept: list[Message] = []
        for msg in replies:
            if msg.has_error():
                kept.append(msg)
                continue
            try:
                if self._read_report(server_round, msg):
                    kept.append(msg)
                else:
                    self.rejected.append(Rejection(msg.metadata.src_node_id, "privacy budget spent"))
            except (ValueError, TypeError) as exc:
                self.rejected.append(Rejection(msg.metadata.src_node_id, str(exc)))
                log(WARNING, "dropping reply from node %s: %s", msg.metadata.src_node_id, exc)
        population = max(self.ledger.population, 1)
        if len(self.exhausted | set(getattr(self.ledger, "refused", {}))) >= population:
            raise PrivacyBudgetExhausted(
                f"all {population} clients have spent their privacy budget "
                f"(target epsilon {self.target_epsilon:g}); stopping before round {server_round}"
            )
        if not any(not m.has_error() for m in kept):
            return None, None
        return self.inner.aggregate_train(server_round, kept)


def clients_per_round(population: int, fraction_train: float, min_train_nodes: int) -> int:
    """How many clients Flower's FedAvg samples per round (its own formula)."""
    return max(int(population * fraction_train), min_train_nodes)


def client_dp_noise(
    *, noise_multiplier: float, target_epsilon: float, delta: float, sample_rate: float, rounds: int
) -> float:
    """``noise_multiplier``, or the one that spends ``target_epsilon`` over ``rounds`` rounds."""
    if noise_multiplier > 0:
        return noise_multiplier
    return calibrate_noise(
        target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=rounds,
        accountant="rdp",
    )


#: Metric of a reply that a wrapper built from several clients' updates (SecAgg+'s
#: unmasked sum): how many. It never comes from a client and leaves the reply here.
SUMMED_CLIENTS_KEY = "fedloom-summed-clients"


class ClientDPStrategy(DelegatingStrategy):
    """Client-level DP: Flower's DP wrapper around ``inner`` plus RDP accounting.

    Each round samples clients by Poisson sampling, as the RDP analysis of the
    subsampled Gaussian assumes: every live client joins independently with
    probability q = clients per round / live clients, both measured that round (drop-outs
    raise q, and the account records each round's own q). The release is McMahan et
    al.'s fixed-denominator estimate: the sum of the clipped updates plus noise of
    deviation z*C, divided by the expected count q*N (public), not by the count drawn,
    so how many clients joined is not released either; a round that drew nobody
    releases the noise alone. Updates are summed with equal weights (each reply's
    weight is set to 1).
    """

    releases_without_replies = True  # a draw of nobody releases the noise alone

    def __init__(
        self,
        inner: Strategy,
        *,
        ledger: EpsilonLedger,
        clipping: str,
        side: str,
        noise_multiplier: float,
        clipping_norm: float,
        target_epsilon: float,
        delta: float,
        num_rounds: int,
        fraction_train: float,
        min_train_nodes: int,
        min_available_nodes: int,
        weight_key: str = "num-examples",
        seeded_noise: bool = False,
    ) -> None:
        if clipping not in ("fixed", "adaptive"):
            raise ValueError(f"invalid clipping {clipping!r}; valid: fixed, adaptive")
        if side not in ("server", "client"):
            raise ValueError(f"invalid clipping side {side!r}; valid: server, client")
        if noise_multiplier < 0 or target_epsilon < 0 or (noise_multiplier == target_epsilon == 0):
            raise ValueError(
                f"invalid noise multiplier={noise_multiplier!r} / target epsilon="
                f"{target_epsilon!r}; valid: one of them > 0, neither < 0"
            )
        if clipping_norm <= 0:
            raise ValueError(f"invalid clipping norm={clipping_norm!r}; valid: > 0")
        if not 0 < delta < 1:
            raise ValueError(f"invalid delta={delta!r}; valid: 0 < delta < 1")
        self.inner, self.ledger = inner, ledger
        self.clipping, self.side = clipping, side
        self.noise, self.clipping_norm = noise_multiplier, clipping_norm
        self.target_epsilon, self.delta, self.num_rounds = target_epsilon, delta, num_rounds
        self.fraction_train, self.min_train_nodes = fraction_train, min_train_nodes
        self.min_available_nodes, self.weight_key = min_available_nodes, weight_key
        self.seeded_noise = seeded_noise
        self.dp: Strategy | None = None
        self.sample_rate = 0.0
        self.releases = 0
        self._dp_state: dict[str, Any] | None = None  # loaded before Flower's wrapper exists
        #: Set by a SecAgg+ wrapper around it: a reply may stand for several clients.
        self.trusts_summed_replies = False
        #: The sampling rate of every release so far, in order (the accountant's history).
        self.rates: list[float] = []
        self.expected = 0.0  # this round's expected number of clients, q * N
        self.global_arrays: ArrayRecord | None = None

    def state_dict(self) -> dict[str, Any]:
        """Ledger, releases, the noise (calibrated once) and Flower's wrapper's state
        (adaptive clipping's norm)."""
        return {
            "ledger": self.ledger.state_dict(), "noise": self.noise, "sample_rate": self.sample_rate,
            "releases": self.releases, "rates": list(self.rates),
            "dp": strategy_state(self.dp) if self.dp is not None else self._dp_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state["ledger"])
        self.noise, self.sample_rate = float(state["noise"]), float(state["sample_rate"])
        self.releases = int(state["releases"])
        self.rates = [float(r) for r in state.get("rates", [])]
        self._dp_state = state["dp"]
        if self.dp is not None and self._dp_state is not None:
            load_strategy_state(self.dp, self._dp_state)

    def summary(self) -> None:
        (self.dp or self.inner).summary()

    def _setup(self, grid: Grid) -> Strategy:
        """Build Flower's DP wrapper once the population is known."""
        _, nodes = sample_nodes(grid, self.min_available_nodes, 0)
        population = len(nodes)
        per_round = min(
            clients_per_round(population, self.fraction_train, self.min_train_nodes), population
        )
        self.sample_rate = per_round / population
        self.noise = client_dp_noise(
            noise_multiplier=self.noise, target_epsilon=self.target_epsilon, delta=self.delta,
            sample_rate=self.sample_rate, rounds=self.num_rounds,
        )
        self.ledger.population = population
        log(INFO, "client-level DP: noise multiplier %.4f, sampling rate %.3f",
            self.noise, self.sample_rate)
        return flower_dp_wrapper(
            self.inner, clipping=self.clipping, side=self.side, noise_multiplier=self.noise,
            clipping_norm=self.clipping_norm, clients_per_round=per_round,
            seeded_noise=self.seeded_noise,
        )

    def release_rates(self, releases: int) -> list[float]:
        """The sampling rates of the first ``releases`` releases (checkpoints from before
        per-round rates, and a release noted after the checkpoint, use the last known)."""
        rates = list(getattr(self, "rates", None) or [])
        fill = rates[-1] if rates else self.sample_rate
        return (rates + [fill] * releases)[:releases]

    def epsilon_after(self, releases: int, next_rate: float | None = None) -> float:
        """Client-level epsilon after ``releases`` releases (and one more at ``next_rate``)."""
        rates = self.release_rates(releases) + ([next_rate] if next_rate is not None else [])
        return client_level_epsilon_of(rates, noise_multiplier=self.noise, delta=self.delta)

    def round_rate(self, grid: Grid) -> tuple[float, list[int]]:
        """This round's Poisson rate over the live clients, and those clients."""
        live = sorted(grid.get_node_ids())
        if not live:
            raise PrivacyBudgetExhausted("no client is connected: nothing to sample")
        per_round = min(clients_per_round(len(live), self.fraction_train, self.min_train_nodes), len(live))
        return per_round / len(live), live

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.dp is None:
            self.dp = self._setup(grid)
            if self._dp_state is not None:
                load_strategy_state(self.dp, self._dp_state)
        rate, live = self.round_rate(grid)
        if self.target_epsilon and self.epsilon_after(self.releases, rate) > self.target_epsilon:
            raise PrivacyBudgetExhausted(
                f"another round (sampling rate {rate:.4g}) would raise the client-level epsilon from "
                f"{self.epsilon_after(self.releases):.4f} past the target "
                f"{self.target_epsilon:g}; stopping before round {server_round}"
            )
        self.round_q, self.expected, self.global_arrays = rate, rate * len(live), arrays
        inner = self.inner  # FedAvg or FedProx (config checks): every live client gets a message
        saved = inner.fraction_train, inner.min_train_nodes  # type: ignore[attr-defined]
        inner.fraction_train, inner.min_train_nodes = 1.0, len(live)  # type: ignore[attr-defined]
        try:
            messages = list(self.dp.configure_train(server_round, arrays, config, grid))
        finally:
            inner.fraction_train, inner.min_train_nodes = saved  # type: ignore[attr-defined]
        draw = self._uniform()
        return [m for m in messages if draw() < rate]

    def _uniform(self) -> Callable[[], float]:
        """Who joins is secret (the amplification by sampling rests on it): the OS's CSPRNG,
        or with seeded noise the run's sampling generator (reproducible, not private)."""
        if self.seeded_noise:
            return sampling_uniform()
        return secrets.SystemRandom().random

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.dp is not None, "configure_train runs first"
        # Flower's wrapper skips the round on any failed reply, and noises the mean of
        # the replies it gets at z*C / (clients planned): with fewer (failures, stragglers,
        # rejected replies) one client moves that mean by up to C / (replies), more than
        # the noise covers. So failed replies are dropped and the noise is sized for the
        # replies actually averaged.
        good = [msg for msg in replies if not msg.has_error()]
        expected, start = getattr(self, "expected", 0.0), getattr(self, "global_arrays", None)
        # A reply may stand for several clients (SecAgg+ hands on their sum as one reply);
        # the count is trusted only from that wrapper, never from a client's own metrics.
        counts = [int(cast(int, _metrics(m).pop(SUMMED_CLIENTS_KEY, 1))) for m in good]
        summed = sum(counts) if self.trusts_summed_replies else len(good)
        arrays: ArrayRecord | None
        metrics: MetricRecord | None
        if not good:
            if not expected or start is None:  # a checkpoint from before Poisson sampling
                return None, None
            arrays, metrics = self._noise_only(start, expected), MetricRecord()
        else:
            for msg in good:
                _metrics(msg)[self.weight_key] = 1
            planned = self.dp.num_sampled_clients  # type: ignore[attr-defined]
            self.dp.num_sampled_clients = len(good)  # type: ignore[attr-defined]
            try:  # old checkpoints' Flower wrappers draw from numpy's global RNG, which the run seeds
                seeded = getattr(self, "seeded_noise", False)  # absent from checkpoints of older versions
                with contextlib.nullcontext() if seeded else secret_numpy_rng():
                    arrays, metrics = self.dp.aggregate_train(server_round, good)
            finally:
                self.dp.num_sampled_clients = planned  # type: ignore[attr-defined]
            if arrays is not None and expected and start is not None:
                arrays = fixed_denominator(start, arrays, replies=summed, expected=expected)
        if arrays is not None:
            self.rates = [*self.release_rates(self.releases), getattr(self, "round_q", self.sample_rate)]
            self.releases += 1
            self.ledger.record_population(server_round, self.epsilon_after(self.releases))
        return arrays, metrics

    def _noise_only(self, start: ArrayRecord, expected: float) -> ArrayRecord:
        """The release of a round that drew nobody: the global model plus the noise of an
        empty sum, divided by the expected count."""
        assert self.dp is not None
        std = self.noise * float(self.dp.clipping_norm) / expected  # type: ignore[attr-defined]
        out = {}
        for key, array in start.items():
            values = array.numpy()
            noise = (np.random.normal(0.0, std, values.shape).astype(values.dtype) if self.seeded_noise
                     else SecureGaussian().numpy_noise(std, values.shape, values.dtype))
            out[key] = Array(values + noise)
        return ArrayRecord(out)


def fixed_denominator(start: ArrayRecord, mean: ArrayRecord, *, replies: int, expected: float) -> ArrayRecord:
    """``start + (mean - start) * replies / expected``: the noised mean over ``replies``
    clients (noise sized for that count) turned into the noised sum over the expected
    count, McMahan et al. 2018's fixed-denominator estimator for Poisson sampling."""
    factor = replies / expected
    return ArrayRecord({
        k: Array((s.numpy() + (mean[k].numpy().astype(np.float64) - s.numpy()) * factor).astype(s.numpy().dtype))
        for k, s in start.items()
    })


@contextlib.contextmanager
def secret_numpy_rng() -> Iterator[None]:
    """numpy's global RNG seeded from 256 bits of OS entropy for the block, then put back.

    The run seeds numpy's global RNG (reproducible sampling and init); noise drawn
    from it could be regenerated by anyone who knows the seed. The stream outside
    the block is unchanged, so runs stay reproducible apart from the noise.
    """
    state = np.random.get_state()
    np.random.seed(np.frombuffer(os.urandom(32), dtype=np.uint32))
    try:
        yield
    finally:
        np.random.set_state(state)


def flower_dp_wrapper(
    inner: Strategy,
    *,
    clipping: str,
    side: str,
    noise_multiplier: float,
    clipping_norm: float,
    clients_per_round: int,
    seeded_noise: bool = False,
) -> Strategy:
    """The Flower DP strategy wrapper for ``clipping`` (fixed|adaptive) on ``side``,
    drawing its noise from the OS's CSPRNG unless ``seeded_noise``.

    Adaptive clipping (Andrew et al. 2021) spends part of the noise on the
    clipped-count query; its standard deviation is max(m/20, z) so that the
    total noise still equals ``noise_multiplier`` z.
    """
    wrapper: SecureNoise
    if clipping == "fixed":
        fixed = ServerSideFixedClipping if side == "server" else ClientSideFixedClipping
        wrapper = fixed(inner, noise_multiplier, clipping_norm, clients_per_round)
    else:
        adaptive = ServerSideAdaptiveClipping if side == "server" else ClientSideAdaptiveClipping
        wrapper = adaptive(
            inner, noise_multiplier, clients_per_round, initial_clipping_norm=clipping_norm,
            clipped_count_stddev=max(clients_per_round / 20, noise_multiplier),
        )
    wrapper.seeded_noise = seeded_noise
    return wrapper  # type: ignore[return-value]
