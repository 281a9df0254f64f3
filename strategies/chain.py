"""The one place fedloom's strategy chain is built from the run config.

From the outside in: metrics (:class:`~.instrumented.InstrumentedStrategy`), the round's
training settings in the train config (:class:`~.train_settings.TrainSettingsStrategy`), sample-level
DP (drops clients whose budget is spent, before anything is decoded), BatchNorm
calibration, decompression, validation, client-level DP (clips full weights after
validation), then the aggregation strategy. Under HE the encrypted FedAvg takes the
aggregation strategy's and the decoder's places (the server only adds ciphertexts).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.serverapp.strategy import Strategy

from fedloom.config import DPMode, RunConfig
from fedloom.privacy.accounting import EpsilonLedger

from .calibration import BatchNormCalibration
from .compressed import DecodingStrategy
from .encrypted import EncryptedFedAvg
from .instrumented import InstrumentedStrategy
from .private import ClientDPStrategy, SampleDPStrategy
from .registry import StrategyParams, build_strategy, check_strategy_config
from .secagg import SecAggStrategy
from .train_settings import TrainSettingsStrategy
from .validation import ValidatingStrategy

FinishMetrics = Callable[[dict[str, list[np.ndarray]]], dict[str, float]]


def strategy_params(cfg: RunConfig) -> StrategyParams:
    """The run config's strategy knobs, as the registry's builders take them."""
    return StrategyParams(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_nodes,
        min_available_nodes=cfg.min_available_nodes,
        client_lr=cfg.lr,
        proximal_mu=cfg.proximal_mu,
        server_lr=cfg.server_lr,
        server_momentum=cfg.server_momentum,
        server_adaptive_lr=cfg.server_adaptive_lr,
        num_malicious=cfg.num_malicious,
        trimmed_beta=cfg.trimmed_beta,
        qfedavg_q=cfg.qfedavg_q,
    )


def strategy_chain(
    cfg: RunConfig, max_examples: int, num_parameters: int, batch_norm: bool = False
) -> Strategy:
    """The aggregation strategy inside fedloom's wrappers (all but the metrics one):
    decode uploads -> validate -> aggregate, then (models with BatchNorm, no DP) measure
    the aggregate's BatchNorm statistics on the clients."""
    caps = check_strategy_config(cfg)
    ledger = None if cfg.dp is DPMode.NONE else EpsilonLedger()
    if cfg.he:  # config checks allow only HE-compatible strategies and codecs (randk)
        fraction = cfg.compression.transform.param if cfg.compression.transform is not None else None
        chain: Strategy = EncryptedFedAvg(
            he_dir=cfg.he_dir, num_parameters=num_parameters, max_weight=max_examples,
            proximal_mu=cfg.proximal_mu if caps.proximal_term else 0.0,
            block_fraction=float(fraction) if fraction is not None else 1.0,
            seed=cfg.seed, **strategy_params(cfg).common(),
        )
    else:
        chain = build_strategy(cfg.strategy, strategy_params(cfg))
        if cfg.dp is DPMode.CLIENT and ledger is not None:
            chain = _client_dp(chain, cfg, ledger)
        chain = ValidatingStrategy(chain, cfg.max_num_examples)  # not max_examples: clients hold data the server never sees
        if cfg.secagg:  # the chain inside gets the unmasked weighted mean as one reply
            chain = _secure(chain, cfg, max_examples)  # the modulus bounds the sum of the weights
        elif not (cfg.compression.is_none and cfg.compression_down.is_none):
            chain = DecodingStrategy(chain, up=cfg.compression, down=cfg.compression_down, seed=cfg.seed)
        # Not under dp=client (an un-noised release) nor secagg (per-client statistics).
        if batch_norm and cfg.batchnorm_calibration and cfg.dp is DPMode.NONE and not cfg.secagg:
            chain = BatchNormCalibration(chain, timeout=cfg.round_timeout)  # dp=client: an un-noised release
    if cfg.dp is DPMode.SAMPLE and ledger is not None:
        chain = SampleDPStrategy(chain, ledger=ledger, target_epsilon=cfg.dp_target_epsilon)
    return TrainSettingsStrategy(  # Flower's convention: the train config says how to train
        chain, lr=cfg.lr, lr_schedule=cfg.lr_schedule, num_rounds=cfg.num_server_rounds,
        local_epochs=cfg.local_epochs, batch_size=cfg.batch_size,
    )


def instrumented(chain: Strategy, cfg: RunConfig, finish_metrics: FinishMetrics | None) -> InstrumentedStrategy:
    """``chain`` inside the metrics wrapper, which ends the run below ``min-train-nodes`` replies."""
    return InstrumentedStrategy(chain, min_replies=cfg.min_train_nodes, finish_metrics=finish_metrics)


def _secure(inner: Strategy, cfg: RunConfig, max_examples: int) -> SecAggStrategy:
    """``inner`` behind SecAgg+ (config checks allow only none or randk uploads)."""
    fraction = cfg.compression.transform.param if cfg.compression.transform is not None else None
    return SecAggStrategy(
        inner, threshold=cfg.secagg_threshold, bits=cfg.secagg_bits, clip=cfg.secagg_clip,
        max_weight=max_examples, equal_weights=cfg.dp is not DPMode.NONE,  # under DP every reply weighs 1
        randk_fraction=float(fraction) if fraction is not None else 1.0,
        seed=cfg.seed, neighbours=cfg.secagg_neighbours, timeout=cfg.round_timeout,
    )


def _client_dp(inner: Strategy, cfg: RunConfig, ledger: EpsilonLedger) -> ClientDPStrategy:
    return ClientDPStrategy(
        inner,
        ledger=ledger,
        clipping=cfg.dp_clipping,
        side=cfg.dp_clipping_side,
        noise_multiplier=cfg.dp_noise,
        clipping_norm=cfg.dp_clipping_norm,
        target_epsilon=cfg.dp_target_epsilon,
        delta=cfg.dp_delta,
        num_rounds=cfg.num_server_rounds,
        fraction_train=cfg.fraction_train,
        min_train_nodes=cfg.min_train_nodes,
        min_available_nodes=cfg.min_available_nodes,
        seeded_noise=cfg.dp_seeded_noise,
    )
