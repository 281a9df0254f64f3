"""Epsilon accounting with Opacus's accountants, as pure functions and small classes.

Nothing here trains a model or touches Flower: the client and the server call
these with typed arguments. Opacus is imported lazily (it takes seconds), so the
run-config parser can use the constants without paying for it.

A history is Opacus's accountant history: ``(noise_multiplier, sample_rate,
steps)`` triples, one per stretch of identical steps. RDP and PRV both compose
such histories, so a client's cumulative epsilon over many rounds is the
epsilon of its concatenated history.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

ACCOUNTANTS = ("rdp", "prv")

History = list[tuple[float, float, int]]


def check_accountant(name: str) -> str:
    """``name`` if Opacus has that accountant; ``ValueError`` lists the valid ones."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"invalid accountant {name!r}; valid: {', '.join(ACCOUNTANTS)}")
    return name


def check_delta(delta: float) -> float:
    """``delta`` if it is a probability strictly between 0 and 1."""
    if not 0 < delta < 1:
        raise ValueError(f"invalid delta={delta!r}; valid: 0 < delta < 1")
    return delta


def make_accountant(name: str, history: Sequence[tuple[float, float, int]] = ()) -> IAccountant:
    """A fresh Opacus accountant ``name`` holding ``history``."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=check_accountant(name))
    accountant.history = [(float(z), float(q), int(s)) for z, q, s in history]
    return accountant


def epsilon(history: Sequence[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of a composed history (0 for an empty one)."""
    if not history or all(s == 0 for _, _, s in history):
        return 0.0
    return float(make_accountant(accountant, history).get_epsilon(delta=check_delta(delta)))


def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Smallest noise multiplier (to Opacus's 0.01 tolerance) that keeps ``steps``
    subsampled Gaussian steps at ``sample_rate`` within ``target_epsilon``.

    Opacus's ``get_noise_multiplier`` bisects from above, so the returned noise
    gives an epsilon at most ``target_epsilon``.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if target_epsilon <= 0:
        raise ValueError(f"invalid target epsilon={target_epsilon!r}; valid: > 0")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"invalid sample rate={sample_rate!r}; valid: 0 < q <= 1")
    if steps < 1:
        raise ValueError(f"invalid steps={steps!r}; valid: >= 1")
    try:
        with warnings.catch_warnings():  # RDP's alpha-range hint; out of reach raises below
            warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon, target_delta=check_delta(delta),
                    sample_rate=sample_rate, steps=steps, accountant=check_accountant(accountant),
                )
            )
    except ValueError:
        raise ValueError(
            f"target epsilon {target_epsilon:g} at delta {delta:g} is out of reach for "
            f"{steps} steps at sample rate {sample_rate:.4g}; raise the target or take fewer steps"
        ) from None


def poisson_plan(num_examples: int, batch_size: int, epochs: float) -> tuple[float, int]:
    """Sample rate and number of steps of ``epochs`` local epochs with Poisson batches.

    Matches Opacus's ``make_private``: the sample rate is 1 / (batches of the
    original loader), and every epoch takes that many steps. A fractional
    ``epochs`` takes that share of an epoch's steps, rounded up (at least one).
    """
    if num_examples < 1 or batch_size < 1 or epochs <= 0:
        raise ValueError(
            f"invalid plan num_examples={num_examples}, batch_size={batch_size}, "
            f"epochs={epochs}; valid: examples and batch size >= 1, epochs > 0"
        )
    batches = math.ceil(num_examples / batch_size)
    return 1.0 / batches, math.ceil(round(batches * epochs, 9))


@dataclass
class ClientAccount:
    """One client's cumulative privacy account across rounds.

    ``state_dict`` / ``load_state_dict`` round-trip it through the client's
    persistent state; ``would_exceed`` tells whether one more round fits a budget.
    """

    accountant: str
    delta: float
    history: History = field(default_factory=list)

    def __post_init__(self) -> None:
        check_accountant(self.accountant)
        check_delta(self.delta)

    def epsilon(self) -> float:
        return epsilon(self.history, delta=self.delta, accountant=self.accountant)

    def projected(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after one more round of ``steps`` steps."""
        return epsilon(
            [*self.history, (noise_multiplier, sample_rate, steps)],
            delta=self.delta, accountant=self.accountant,
        )

    def state_dict(self) -> dict[str, Any]:
        """Flat lists (what a Flower ConfigRecord can hold)."""
        return {
            "mechanism": self.accountant,
            "noise": [float(z) for z, _, _ in self.history],
            "rate": [float(q) for _, q, _ in self.history],
            "steps": [int(s) for _, _, s in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mechanism", self.accountant) != self.accountant:
            raise ValueError(
                f"stored account uses accountant {state['mechanism']!r}, "
                f"this run uses {self.accountant!r}"
            )
        noise, rate, steps = state.get("noise", []), state.get("rate", []), state.get("steps", [])
        if not len(noise) == len(rate) == len(steps):
            raise ValueError("corrupt privacy account: history lists differ in length")
        self.history = [(float(z), float(q), int(s)) for z, q, s in zip(noise, rate, steps)]


def client_level_epsilon(
    *, noise_multiplier: float, sample_rate: float, rounds: int, delta: float
) -> float:
    """Client-level epsilon of DP-FedAvg after ``rounds`` rounds (McMahan et al. 2018).

    Each round is one subsampled Gaussian release of the clipped, averaged
    updates: sampling rate = clients per round / clients, one step per round,
    accounted with Opacus's RDP analysis.
    """
    return epsilon([(noise_multiplier, sample_rate, rounds)], delta=delta, accountant="rdp")


def client_level_epsilon_of(rates: Sequence[float], *, noise_multiplier: float, delta: float) -> float:
    """Client-level epsilon of releases with Poisson sampling at ``rates`` (one per release,
    each measured from that round's live population), composed with Opacus's RDP."""
    history = [(noise_multiplier, q, 1) for q in rates]
    return epsilon(history, delta=delta, accountant="rdp")


class EpsilonWentBack(ValueError):
    """A client reported a lower cumulative epsilon than before: its account was lost."""


@dataclass
class EpsilonLedger:
    """Server-side record of every client's cumulative epsilon.

    Not every client replies every round, so the latest value of each one is
    kept; ``summary`` gives the largest and the mean over the population
    (clients that never took part count as 0). Under client-level DP one
    epsilon covers every client (``population_epsilon``).
    """

    population: int = 0
    latest: dict[int, float] = field(default_factory=dict)
    population_epsilon: float | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    #: Clients refused for good (their epsilon went backwards), with the reason.
    refused: dict[int, str] = field(default_factory=dict)

    def record_client(
        self, server_round: int, client: int, value: float, *, trained: bool, tolerance: float = 1e-9
    ) -> None:
        """Record ``client``'s cumulative epsilon; :class:`EpsilonWentBack` if it is lower
        than one it reported before, or if it did so once (then it is refused for good).

        A cumulative epsilon never decreases, so a lower one means the client lost its
        accountant's history (a wiped state folder, another machine): it would spend its
        budget a second time. Its past releases still count, so no later report of it
        can be trusted either.
        """
        refused = getattr(self, "refused", None)  # absent from checkpoints of older versions
        if refused is None:
            refused = self.refused = {}
        last = self.latest.get(client)
        if client not in refused and last is not None and value < last - tolerance:
            refused[client] = (
                f"client {client} reported epsilon {value:.6g} after {last:.6g}: a cumulative "
                "epsilon never decreases, so its privacy account was lost or reset and it could "
                "train past its budget; refused for the rest of the run"
            )
        if client in refused:
            raise EpsilonWentBack(refused[client])
        self.latest[client] = max(value, last or 0.0)
        self.pending.append(
            {"round": server_round, "partition_id": client, "epsilon": value, "trained": trained}
        )

    def record_population(self, server_round: int, value: float) -> None:
        self.population_epsilon = value
        self.pending.append({"round": server_round, "partition_id": None, "epsilon": value})

    def summary(self) -> dict[str, float]:
        if self.population_epsilon is not None:
            return {"epsilon": self.population_epsilon, "epsilon_mean": self.population_epsilon}
        if not self.latest:
            return {"epsilon": 0.0, "epsilon_mean": 0.0}
        count = max(self.population, len(self.latest))
        return {
            "epsilon": max(self.latest.values()),
            "epsilon_mean": sum(self.latest.values()) / count,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the server's checkpoint."""
        return {
            "population": self.population, "latest": dict(self.latest),
            "population_epsilon": self.population_epsilon, "pending": [dict(r) for r in self.pending],
            "refused": dict(self.refused),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.population = int(state["population"])
        self.latest = {int(k): float(v) for k, v in state["latest"].items()}
        self.population_epsilon = state["population_epsilon"]
        self.pending = [dict(r) for r in state["pending"]]
        self.refused = {int(k): str(v) for k, v in state.get("refused", {}).items()}

    def take_rows(self) -> list[dict[str, Any]]:
        """The per-client rows recorded since the last call."""
        rows, self.pending = self.pending, []
        return rows
