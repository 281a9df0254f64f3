"""The run config: flat kebab-case keys, validated once, passed down typed.

``DEFAULTS`` mirrors ``[tool.flwr.app.config]`` in pyproject.toml (a test keeps them
equal). Both the ServerApp and the ClientApp parse the run config with
:func:`parse_run_config`; nothing below server/ and client/ reads Flower's Context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.partition import parse_partition
from tasks.registry import get_task

DEFAULTS: dict[str, Any] = {
    "task": "digits",
    "dataset": "",
    "data-dir": "data",
    "num-server-rounds": 10,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "min-train-nodes": 2,
    "min-available-nodes": 2,
    "local-epochs": 1,
    "batch-size": 16,
    "lr": 0.05,
    "momentum": 0.9,
    "partition": "iid",
    "strategy": "fedavg",
    "seed": 42,
    "run-dir": "",
    "round-timeout": 3600.0,
    "proximal-mu": 0.01,
    "server-lr": 1.0,
    "server-momentum": 0.9,
    "server-adaptive-lr": 0.01,
    "num-malicious": 0,
    "trimmed-beta": 0.2,
    "qfedavg-q": 0.1,
}


@dataclass(frozen=True)
class RunConfig:
    """Typed, validated run configuration. Field ``x_y`` is run-config key ``x-y``."""

    task: str
    dataset: str
    data_dir: str
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_available_nodes: int
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    partition: str
    strategy: str
    seed: int
    run_dir: str
    round_timeout: float
    proximal_mu: float
    server_lr: float
    server_momentum: float
    server_adaptive_lr: float
    num_malicious: int
    trimmed_beta: float
    qfedavg_q: float

    def to_run_config(self) -> dict[str, Any]:
        """Back to flat kebab-case keys (what ``config.json`` records)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


def _coerce(key: str, value: Any, like: Any) -> Any:
    kind = type(like)
    try:
        if kind is bool:
            return str(value).lower() in ("1", "true", "yes")
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not a valid {kind.__name__}") from None


def _check(cond: bool, key: str, value: Any, valid: str) -> None:
    if not cond:
        raise ValueError(f"invalid {key}={value!r}; valid: {valid}")


def parse_run_config(mapping: Mapping[str, Any]) -> RunConfig:
    """Validate a run-config mapping (defaults filled in); ``ValueError`` names the key."""
    unknown = sorted(set(mapping) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown run-config key(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}"
        )
    raw = {k: _coerce(k, mapping.get(k, v), v) for k, v in DEFAULTS.items()}
    task = get_task(raw["task"])
    raw["dataset"] = task.resolve_dataset(raw["dataset"])
    raw["partition"] = str(parse_partition(raw["partition"]))
    _check(raw["num-server-rounds"] >= 1, "num-server-rounds", raw["num-server-rounds"], ">= 1")
    _check(0 < raw["fraction-train"] <= 1, "fraction-train", raw["fraction-train"], "0 < f <= 1")
    _check(0 <= raw["fraction-evaluate"] <= 1, "fraction-evaluate", raw["fraction-evaluate"], "0 <= f <= 1")
    for key in ("min-train-nodes", "min-available-nodes", "local-epochs", "batch-size"):
        _check(raw[key] >= 1, key, raw[key], ">= 1")
    for key in ("lr", "round-timeout", "server-lr", "server-adaptive-lr"):
        _check(raw[key] > 0, key, raw[key], "> 0")
    for key in ("momentum", "server-momentum"):
        _check(0 <= raw[key] < 1, key, raw[key], "0 <= m < 1")
    _check(raw["proximal-mu"] >= 0, "proximal-mu", raw["proximal-mu"], ">= 0")
    _check(raw["num-malicious"] >= 0, "num-malicious", raw["num-malicious"], ">= 0")
    _check(0 <= raw["trimmed-beta"] < 0.5, "trimmed-beta", raw["trimmed-beta"], "0 <= beta < 0.5")
    _check(raw["qfedavg-q"] >= 0, "qfedavg-q", raw["qfedavg-q"], ">= 0")
    _check(raw["seed"] >= 0, "seed", raw["seed"], ">= 0")
    return RunConfig(**{k.replace("-", "_"): v for k, v in raw.items()})
