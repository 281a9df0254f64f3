"""The run config: one declared schema of flat kebab-case keys (:mod:`.keys`), loaded
and validated once (:mod:`.load`), passed down as a typed :class:`RunConfig`.

Nothing below server/ and client/ reads Flower's Context; both parse the run config
with :func:`parse_run_config`.
"""

from .keys import DPMode, RunConfig
from .load import DEFAULTS, KEYS, parse_run_config, resolve_best_metric, resolve_derived

__all__ = [
    "DEFAULTS", "KEYS", "DPMode", "RunConfig", "parse_run_config", "resolve_best_metric", "resolve_derived",
]
