"""Base class of fedloom's wrapper strategies: forward to ``inner`` unless overridden.

What a wrapper reports to the metrics wrapper (:class:`~.instrumented.InstrumentedStrategy`)
is typed here: the round's rejected replies, and the messages it exchanged beside the
round's own. :func:`chain_of` walks a chain through ``inner``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


@dataclass
class Rejection:
    """A reply left out of the aggregate: the node that sent it, and why."""

    node_id: int
    reason: str


class RejectsReplies:
    """A strategy that may leave replies out; ``rejected`` holds this round's."""

    rejected: Sequence[Rejection] = ()


class DelegatingStrategy(RejectsReplies, Strategy):
    """Forwards evaluation and the summary to ``inner``; subclasses wrap training.

    ``extra_down`` / ``extra_up``: this round's messages the wrapper sent and received
    beside the round's own (counted in the round's traffic).
    """

    inner: Strategy
    extra_down: Sequence[Message] = ()
    extra_up: Sequence[Message] = ()
    #: A round without a usable reply is still handed to it (client-level DP releases
    #: the noise alone); otherwise the wrappers outside end such a round themselves.
    releases_without_replies: bool = False

    def state_dict(self) -> dict[str, Any]:
        """What this wrapper carries from one round to the next, as plain data (see
        :mod:`.state`); nothing unless a subclass says otherwise."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""

    def summary(self) -> None:
        self.inner.summary()

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


def chain_of(strategy: Strategy) -> list[Strategy]:
    """``strategy`` and every strategy it wraps (through ``inner``)."""
    chain = [strategy]
    while isinstance(chain[-1], DelegatingStrategy):
        chain.append(chain[-1].inner)
    return chain


def rejections(strategy: Strategy) -> list[Rejection]:
    """This round's rejected replies, over the whole chain."""
    return [r for s in chain_of(strategy) if isinstance(s, RejectsReplies) for r in s.rejected]
