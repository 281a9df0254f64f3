"""The run config: one declared schema of flat kebab-case keys (:mod:`.keys`), loaded
and validated once (:mod:`.load`), passed down as a typed :class:`RunConfig`.

Nothing below server/ and client/ reads Flower's Context; both parse the run config
with :func:`parse_run_config`.
"""

from .keys import DPMode, RunConfig
from .load import DEFAULTS, KEYS, parse_run_config, resolve_best_metric, resolve_derived

#: Train-instruction config key: the run's ID (``config.json``'s ``run_id``, kept on
#: resume), under which clients keep their persistent state.
RUN_ID_KEY = "fedloom-run-id"
#: Train-instruction config key: true when the strategy wants the global model's loss
#: on the client's data before training (``train_loss_initial``, q-FFL).
INITIAL_LOSS_KEY = "fedloom-initial-loss"

__all__ = [
    "DEFAULTS", "INITIAL_LOSS_KEY", "KEYS", "RUN_ID_KEY", "DPMode", "RunConfig", "parse_run_config",
    "resolve_best_metric", "resolve_derived",
]
