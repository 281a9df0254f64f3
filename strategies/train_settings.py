"""A wrapper strategy that puts each round's training settings in the train config.

Flower's convention (its examples' ClientApps read ``msg.content["config"]["lr"]``):
the server says how to train. :class:`TrainSettingsStrategy` adds the round's
resolved ``lr`` (after the lr schedule), ``local-epochs``, ``batch-size`` and
``server-round`` to every train instruction, so a ClientApp that is not fedloom's
trains as the run says, and fedloom's own client uses the same values
(:mod:`fedloom.client.settings`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloom.protocol.keys import SERVER_ROUND
from fedloom.protocol.training import TrainSettings
from fedloom.tasks.training import scheduled_lr

from .delegating import DelegatingStrategy


@dataclass
class TrainSettingsStrategy(DelegatingStrategy):
    """Delegates to ``inner``; each train config carries the round's settings."""

    inner: Strategy
    lr: float
    lr_schedule: str
    num_rounds: int
    local_epochs: float
    batch_size: int

    def settings(self, server_round: int) -> TrainSettings:
        """The settings of ``server_round`` (1-based, counted over the whole run)."""
        lr = scheduled_lr(self.lr, self.lr_schedule, server_round, self.num_rounds)
        return TrainSettings(lr=lr, local_epochs=self.local_epochs, batch_size=self.batch_size)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        entries = {**config, **self.settings(server_round).to_config(), SERVER_ROUND: server_round}
        return self.inner.configure_train(server_round, arrays, ConfigRecord(entries), grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)
