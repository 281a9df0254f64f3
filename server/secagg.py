"""``--secagg`` at start-up: distributed DP's noise must fit the quantization range."""

from __future__ import annotations

from fedloom.config import DPMode, RunConfig
from fedloom.privacy.secagg import clip_for_noise, noise_share, threshold_count
from fedloom.strategies.private import client_dp_noise, clients_per_round


def threshold_clients(cfg: RunConfig, per_round: int) -> int:
    """The round's threshold in clients: of the round, or of each SecAgg+ neighbourhood."""
    k = cfg.secagg_neighbours // 2 * 2
    size = per_round if k == 0 or k + 1 >= per_round else k + 1
    return threshold_count(cfg.secagg_threshold, size)


def check_secagg_noise(cfg: RunConfig, num_clients: int) -> None:
    """Start-up check of distributed DP (``--secagg --dp client``): ``ValueError`` when
    ``secagg-clip`` would clip the noise the clients add (the accountant assumes it whole)."""
    if not cfg.secagg or cfg.dp is not DPMode.CLIENT:
        return
    per_round = min(clients_per_round(num_clients, cfg.fraction_train, cfg.min_train_nodes), num_clients)
    z = client_dp_noise(noise_multiplier=cfg.dp_noise, target_epsilon=cfg.dp_target_epsilon,
                        delta=cfg.dp_delta, sample_rate=per_round / num_clients, rounds=cfg.num_server_rounds)
    t = threshold_clients(cfg, per_round)
    needed = clip_for_noise(cfg.dp_clipping_norm, noise_share(z, cfg.dp_clipping_norm, t))
    if cfg.secagg_clip < needed:
        raise ValueError(
            f"secagg-clip={cfg.secagg_clip:g} would clip the Gaussian noise each client adds under "
            f"--secagg --dp client (noise multiplier {z:.3g}, dp-clipping-norm {cfg.dp_clipping_norm:g}, "
            f"{t} clients to unmask), which the accountant does not cover; valid: secagg-clip >= {needed:.3g}"
        )
