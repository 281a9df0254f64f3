"""The client's settings: its run config, and each round's training settings.

A ClientApp runs under whatever run config its federation has, which may be another
app's (a stock Flower ServerApp's ``learning-rate``, say). The client keeps the keys it
knows and names the others once per process; the server side stays strict, so a typo
in a fedloom run is still an error there.

Each round's ``lr``, ``local-epochs`` and ``batch-size`` come from the train message's
config when it carries them (Flower's convention; a fedloom server always sends them),
else from the client's run config (``lr`` after its ``lr-schedule``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch
from flwr.app import Context

from fedloom.protocol.keys import SERVER_ROUND
from fedloom.protocol.training import TrainSettings, settings_from_config
from fedloom.config import DEFAULTS, RunConfig, parse_run_config
from fedloom.tasks.training import scheduled_lr

from .notices import warn_once
from .resources import deterministic_cuda


def known_keys(mapping: Mapping[str, object]) -> dict[str, object]:
    """``mapping`` without the keys fedloom does not know; names those once per process."""
    unknown = sorted(set(mapping) - set(DEFAULTS))
    if unknown:
        warn_once(
            "unknown-run-config",
            f"fedloom's ClientApp ignores run-config key(s) it does not know: {', '.join(unknown)} "
            "(another app's config?); it reads the train settings the server sends",
        )
    return {k: v for k, v in mapping.items() if k in DEFAULTS}


@lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return parse_run_config(known_keys(dict(items)))


def run_config(context: Context) -> RunConfig:
    """The run config, parsed once per process."""
    torch.set_num_threads(1)  # one core per Ray actor / SuperNode process
    deterministic_cuda()  # seeded runs repeat on a GPU too
    return _parse(tuple(sorted(context.run_config.items())))


def run_config_settings(cfg: RunConfig, server_round: int) -> TrainSettings:
    """The training settings ``cfg`` gives for ``server_round`` (``lr`` as scheduled)."""
    lr = scheduled_lr(cfg.lr, cfg.lr_schedule, server_round, cfg.num_server_rounds)
    return TrainSettings(lr=lr, local_epochs=cfg.local_epochs, batch_size=cfg.batch_size)


def round_settings(cfg: RunConfig, config: Mapping[str, object]) -> TrainSettings:
    """This round's training settings: the train message's where it carries them, else
    the run config's; says once per process when the two differ."""
    fallback = run_config_settings(cfg, int(config.get(SERVER_ROUND, 0)))  # type: ignore[call-overload]
    settings, differences = settings_from_config(config, fallback)
    if differences:
        warn_once(
            "train-settings-differ",
            "the server's train settings differ from this client's run config; training with "
            f"the server's: {', '.join(differences)}",
        )
    return settings
