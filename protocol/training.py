"""The training settings of a train message's ``config`` (Flower's convention).

A fedloom server puts each round's resolved settings there (``lr`` after the lr
schedule, ``local-epochs``, ``batch-size``, beside Flower's ``server-round``), so any
ClientApp that reads them, as Flower's examples do, trains as the run says. A fedloom
client reads them with :func:`settings_from_config`: a value the message carries wins,
one it lacks comes from the client's own run config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .keys import BATCH_SIZE, LOCAL_EPOCHS, LR


@dataclass(frozen=True)
class TrainSettings:
    """One round's local training settings."""

    lr: float
    local_epochs: float  # fractions: that share of the client's data, freshly drawn
    batch_size: int

    def to_config(self) -> dict[str, float | int]:
        """The settings as train-config entries."""
        return {LR: float(self.lr), LOCAL_EPOCHS: self.local_epochs, BATCH_SIZE: int(self.batch_size)}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _lr(value: object) -> float:
    number = _number(value)
    if number is None or number <= 0:
        raise ValueError(f"train config {LR}={value!r} is not a valid learning rate; valid: a number > 0")
    return number


def _epochs(value: object) -> float:
    number = _number(value)
    if number is None or number <= 0:
        raise ValueError(f"train config {LOCAL_EPOCHS}={value!r} is not valid; valid: a number > 0 (0.5: half)")
    return int(number) if number.is_integer() else number


def _batch_size(value: object) -> int:
    number = _number(value)
    if number is None or number < 1 or not number.is_integer():
        raise ValueError(f"train config {BATCH_SIZE}={value!r} is not valid; valid: a whole number >= 1")
    return int(number)


_READERS = {LR: ("lr", _lr), LOCAL_EPOCHS: ("local_epochs", _epochs), BATCH_SIZE: ("batch_size", _batch_size)}


def settings_from_config(
    config: Mapping[str, object], fallback: TrainSettings
) -> tuple[TrainSettings, list[str]]:
    """The settings a train message's ``config`` carries, each missing one from ``fallback``
    (the client's run config); and how the carried ones differ from ``fallback``, one
    ``key=message (run config: value)`` each. ``ValueError`` for a carried value out of range."""
    values = {field: getattr(fallback, field) for field, _ in _READERS.values()}
    differences = []
    for key, (field, read) in _READERS.items():
        if key not in config:
            continue
        got = read(config[key])
        if not math.isclose(got, values[field], rel_tol=1e-9, abs_tol=0.0):
            differences.append(f"{key}={got:g} (run config: {values[field]:g})")
        values[field] = got
    return TrainSettings(**values), differences
