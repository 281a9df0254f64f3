"""Server side of differential privacy: start-up checks, epsilon per round, releases.

The DP wrappers' places in the strategy chain are set in :mod:`fedloom.strategies.chain`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedloom.privacy.accounting import EpsilonLedger, poisson_plan
from fedloom.privacy.dp import check_per_example_loss, make_dp_ready
from fedloom.strategies.delegating import chain_of
from fedloom.strategies.private import (
    ClientDPStrategy,
    SampleDPStrategy,
    client_dp_noise,
    clients_per_round,
)
from fedloom.tasks.registry import get_task, load_task_data, partitions

from fedloom.config import DPMode, RunConfig

EPSILON_FILE = "epsilon.jsonl"
RELEASES_FILE = "dp_releases.json"


def check_privacy(cfg: RunConfig, num_clients: int) -> None:
    """Fail at start-up, with a ``ValueError``, on DP settings that cannot work:
    a model Opacus cannot train, a loss it cannot split per example, or a target
    epsilon no noise level reaches."""
    if cfg.dp is DPMode.SAMPLE:
        options = cfg.task_options()
        data = load_task_data(cfg.task, cfg.data_dir, cfg.dataset, options)
        task = get_task(cfg.task, options)
        check_per_example_loss(task.loss_fn(), make_dp_ready(task.build_model(data)), data.train)
        settings = cfg.sample_dp()
        assert settings is not None
        parts = partitions(
            cfg.task, cfg.data_dir, cfg.dataset, cfg.partition, num_clients, cfg.seed, options
        )
        for part in parts:
            rate, steps = poisson_plan(len(part), cfg.batch_size, cfg.local_epochs)
            settings.noise_for(sample_rate=rate, steps_per_round=steps)
    if cfg.he:
        check_he_capacity(cfg, num_clients)
    if cfg.dp is DPMode.CLIENT:
        per_round = min(
            clients_per_round(num_clients, cfg.fraction_train, cfg.min_train_nodes), num_clients
        )
        client_dp_noise(
            noise_multiplier=cfg.dp_noise, target_epsilon=cfg.dp_target_epsilon,
            delta=cfg.dp_delta, sample_rate=per_round / num_clients, rounds=cfg.num_server_rounds,
        )


def check_he_capacity(cfg: RunConfig, num_clients: int) -> None:
    """``ValueError`` when a round could sum more uploads than the HE profile decrypts
    exactly (checked before any key is made)."""
    from fedloom.privacy.he_capacity import profile_max_summands

    per_round = min(clients_per_round(num_clients, cfg.fraction_train, cfg.min_train_nodes), num_clients)
    capacity = profile_max_summands(cfg.he_scheme, cfg.he_pack)
    if per_round > capacity:
        raise ValueError(
            f"--he with he-scheme={cfg.he_scheme} he-pack={cfg.he_pack} sums at most {capacity} "
            f"uploads exactly (its noise budget), but a round could have {per_round}; train fewer "
            "clients per round (fraction-train, --num-clients)"
            + (f" or use he-pack=1 ({profile_max_summands(cfg.he_scheme, 1)})" if cfg.he_pack > 1 else "")
        )


def ledger_of(strategy: Strategy) -> EpsilonLedger | None:
    """The epsilon ledger of the DP wrapper in ``strategy``'s chain (survives resume)."""
    for wrapper in chain_of(strategy):
        if isinstance(wrapper, (SampleDPStrategy, ClientDPStrategy)):
            return wrapper.ledger
    return None


def client_dp_of(strategy: Strategy) -> ClientDPStrategy | None:
    return next((s for s in chain_of(strategy) if isinstance(s, ClientDPStrategy)), None)


def record_release(strategy: Strategy, run_dir: Path, server_round: int) -> None:
    """Under ``dp=client``, note the releases counted so far just before a round's
    noised model leaves the server for federated evaluation. That happens before
    the round's checkpoint; a kill in between would re-run the round, a second
    release the checkpointed account does not hold. The note is never rewound."""
    from .results import atomic_write_bytes

    wrapper = client_dp_of(strategy)
    if wrapper is not None:
        note = {"round": server_round, "releases": wrapper.releases}
        atomic_write_bytes(run_dir / RELEASES_FILE, json.dumps(note).encode())


def restore_releases(strategy: Strategy, run_dir: Path) -> int | None:
    """On resume, count a release noted after the checkpoint (see :func:`record_release`);
    returns the round whose model had left the server, or ``None``."""
    wrapper, path = client_dp_of(strategy), run_dir / RELEASES_FILE
    if wrapper is None or not path.is_file():
        return None
    note = json.loads(path.read_text())
    if note["releases"] <= wrapper.releases:
        return None
    wrapper.releases = note["releases"]
    return int(note["round"])


def write_epsilons(ledger: EpsilonLedger, run_dir: Path) -> None:
    """Append the per-client epsilons recorded since the last call to ``epsilon.jsonl``."""
    rows = ledger.take_rows()
    if rows:
        with open(run_dir / EPSILON_FILE, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)


def trim_epsilons(run_dir: Path, last_round: int) -> None:
    """Drop ``epsilon.jsonl`` rows past a resumed run's checkpoint: that round runs
    again and writes its own rows (a kill after the append left them behind)."""
    from .results import atomic_write_bytes

    path = run_dir / EPSILON_FILE
    if path.is_file():
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        kept = [x for x in lines if json.loads(x)["round"] <= last_round]
        if len(kept) < len(lines):
            atomic_write_bytes(path, "".join(x + "\n" for x in kept).encode())


def privacy_row(ledger: EpsilonLedger, run_dir: Path) -> dict[str, Any]:
    """``epsilon`` and ``epsilon_mean`` for the metrics row, after writing the side file."""
    write_epsilons(ledger, run_dir)
    return dict(ledger.summary())
