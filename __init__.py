"""fedloom: federated-learning simulations with real client processes (Flower + Ray).

The repository root is this package, so ``fedloom.server``, ``fedloom.client``,
``fedloom.strategies``, ... are its subpackages.

Python API (loaded on first use, so ``import fedloom`` stays cheap: no torch, no Flower)::

    import fedloom
    run = fedloom.simulate(task="digits", num_clients=4, rounds=3, fraction_evaluate=1.0)
    run.final["accuracy"], run.path
    fedloom.load_run(run.path).rows
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: Public name -> the module that defines it (imported on first access).
_LAZY = {
    "simulate": "fedloom.api",
    "load_run": "fedloom.api",
    "RunResult": "fedloom.api",
    "ConfigError": "fedloom.api",
    "RunFailed": "fedloom.api",
}
__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from fedloom.api import ConfigError, RunFailed, RunResult, load_run, simulate  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedloom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
