"""Resolve a strategy name (``fedavg``) or import path (``pkg.mod:Class``).

Registered names map to builders that turn :class:`StrategyParams` into a Flower
Message-API :class:`~flwr.serverapp.strategy.Strategy`. Anything with a colon is a
user's own strategy: ``package.module:ClassName`` or ``path/to/file.py:ClassName``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from flwr.serverapp import strategy as fl


from .capabilities import Capabilities, check_strategy

if TYPE_CHECKING:  # a type only: importing the config (PyTorch) here would make every
    # strategy-name check, e.g. deploy/submit_run.py's before anything is sent, take seconds
    from fedloom.config import RunConfig

Builder = Callable[["StrategyParams"], fl.Strategy]


class _NoEvaluationSkippedWarning(logging.Filter):
    """Drops the warning Flower's FedAvg logs, once per strategy built, when
    ``fraction_evaluate`` is 0. That is fedloom's default: the server evaluates every
    round on the central test set, and ``fraction-evaluate`` turns the clients' own
    evaluation on; the warning made every default run start with two warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("fraction_evaluate is set to 0.0.")


logging.getLogger("flwr").addFilter(_NoEvaluationSkippedWarning())


class CommonArgs(TypedDict):
    """The keyword arguments every Flower Message-API strategy accepts."""

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


@dataclass(frozen=True)
class StrategyParams:
    """Everything a builder may need; names follow the run-config keys."""

    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    client_lr: float = 0.05
    proximal_mu: float = 0.01
    server_lr: float = 1.0
    server_momentum: float = 0.9
    server_adaptive_lr: float = 0.01
    num_malicious: int = 0
    trimmed_beta: float = 0.2
    qfedavg_q: float = 0.1

    def common(self) -> CommonArgs:
        """Keyword arguments every Flower Message-API strategy accepts."""
        return {
            "fraction_train": self.fraction_train,
            "fraction_evaluate": self.fraction_evaluate,
            "min_train_nodes": self.min_train_nodes,
            "min_evaluate_nodes": self.min_train_nodes if self.fraction_evaluate else 0,
            "min_available_nodes": self.min_available_nodes,
        }


_BUILDERS: dict[str, Builder] = {}
_CAPABILITIES: dict[str, Capabilities] = {}
NO_CAPABILITIES = Capabilities()
#: The weighted mean: what encrypted sums and client-level DP's accounting compute.
MEAN = Capabilities(he_compatible=True, client_dp_compatible=True, secagg_compatible=True)
#: A server step from the weighted mean (FedAvgM, FedAdam, ...): secure aggregation gives it.
SERVER_STEP = Capabilities(secagg_compatible=True)


def register_strategy(
    name: str, capabilities: Capabilities = NO_CAPABILITIES
) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name`` with what it can do; a taken name
    is an error."""

    def deco(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"strategy {name!r} is already registered")
        _BUILDERS[name] = builder
        _CAPABILITIES[name] = capabilities
        return builder

    return deco


def strategy_names() -> list[str]:
    return sorted(_BUILDERS)


@register_strategy("fedavg", MEAN)
def _fedavg(p: StrategyParams) -> fl.Strategy:
    return fl.FedAvg(**p.common())


@register_strategy("fedavgm", SERVER_STEP)
def _fedavgm(p: StrategyParams) -> fl.Strategy:
    return fl.FedAvgM(**p.common(), server_learning_rate=p.server_lr, server_momentum=p.server_momentum)


@register_strategy("fedprox", dataclasses.replace(MEAN, proximal_term=True))
def _fedprox(p: StrategyParams) -> fl.Strategy:
    return fl.FedProx(**p.common(), proximal_mu=p.proximal_mu)


def _fedopt(cls: Callable[..., fl.Strategy]) -> Builder:
    def build(p: StrategyParams) -> fl.Strategy:
        return cls(**p.common(), eta=p.server_adaptive_lr, eta_l=p.client_lr)

    return build


register_strategy("fedadam", SERVER_STEP)(_fedopt(fl.FedAdam))
register_strategy("fedyogi", SERVER_STEP)(_fedopt(fl.FedYogi))
register_strategy("fedadagrad", SERVER_STEP)(_fedopt(fl.FedAdagrad))


@register_strategy("fedmedian")
def _fedmedian(p: StrategyParams) -> fl.Strategy:
    return fl.FedMedian(**p.common())


@register_strategy("fedtrimmedavg", Capabilities(min_replies=lambda f: 3))
def _fedtrimmedavg(p: StrategyParams) -> fl.Strategy:
    return fl.FedTrimmedAvg(**p.common(), beta=p.trimmed_beta)


@register_strategy("krum", Capabilities(min_replies=lambda f: 2 * f + 3))
def _krum(p: StrategyParams) -> fl.Strategy:
    return fl.Krum(**p.common(), num_malicious_nodes=p.num_malicious)


@register_strategy("multikrum", Capabilities(min_replies=lambda f: 2 * f + 3))
def _multikrum(p: StrategyParams) -> fl.Strategy:
    return fl.MultiKrum(
        **p.common(), num_malicious_nodes=p.num_malicious, num_nodes_to_select=max(1, p.min_train_nodes - p.num_malicious)
    )


@register_strategy("bulyan", Capabilities(min_replies=lambda f: 4 * f + 3))
def _bulyan(p: StrategyParams) -> fl.Strategy:
    return fl.Bulyan(**p.common(), num_malicious_nodes=p.num_malicious)


@register_strategy("qfedavg", Capabilities(needs_initial_loss=True))
def _qfedavg(p: StrategyParams) -> fl.Strategy:
    return fl.QFedAvg(
        client_learning_rate=p.client_lr, q=p.qfedavg_q, train_loss_key="train_loss_initial", **p.common()
    )


def _import_object(spec: str) -> object:
    """The object ``spec`` names, imported once per process (its capabilities and its
    builds then come from the same class, and a user's file runs once)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"invalid strategy path {spec!r}; use package.module:ClassName")
    if target.endswith(".py"):
        target = str(Path(target).expanduser().resolve())
    return _load_object(target, attr)


@functools.cache
def _load_object(target: str, attr: str) -> object:
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"strategy file {path} does not exist")
        mod_name = f"fedloom_user_strategy_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        assert module_spec and module_spec.loader
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: a syntax error, a failing import, ...
            del sys.modules[mod_name]
            raise ValueError(f"cannot load strategy file {path}: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ValueError(
                f"cannot import strategy module {target!r}: {type(exc).__name__}: {exc}"
            ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {target!r} has no attribute {attr!r}") from None


def _user_builder(spec: str) -> Builder:
    obj = _import_object(spec)
    if not callable(obj):
        raise ValueError(f"strategy {spec!r} is not a class or factory")
    if inspect.isclass(obj) and not issubclass(obj, fl.Strategy):
        raise ValueError(f"strategy {spec!r} must subclass flwr.serverapp.strategy.Strategy")

    def build(p: StrategyParams) -> fl.Strategy:
        accepted = inspect.signature(obj).parameters
        takes_all = any(a.kind is inspect.Parameter.VAR_KEYWORD for a in accepted.values())
        kwargs = {k: v for k, v in p.common().items() if takes_all or k in accepted}
        try:
            strategy = obj(**kwargs)
        except TypeError as exc:  # e.g. a required argument fedloom does not pass
            raise ValueError(
                f"strategy {spec!r} cannot be built from the keyword arguments fedloom passes "
                f"({', '.join(sorted(p.common()))}; it accepts those it names): {exc}"
            ) from None
        if not isinstance(strategy, fl.Strategy):
            raise ValueError(f"strategy {spec!r} returned {type(strategy).__name__}, not a Strategy")
        return strategy

    return build


def resolve_strategy(name: str) -> Builder:
    """The builder for ``name``; ``ValueError`` lists the valid names."""
    if name in _BUILDERS:
        return _BUILDERS[name]
    if ":" in name:
        return _user_builder(name)
    raise ValueError(
        f"unknown strategy {name!r}; valid: {', '.join(strategy_names())}, "
        "or package.module:ClassName"
    )


def capabilities(name: str) -> Capabilities:
    """What strategy ``name`` declares: at registration, or as a user class's attributes."""
    if name in _CAPABILITIES:
        return _CAPABILITIES[name]
    if ":" in name:
        return Capabilities.declared_by(_import_object(name))
    resolve_strategy(name)  # raises, listing the valid names
    raise AssertionError(name)


def strategies_with(test: Callable[[Capabilities], bool]) -> list[str]:
    """The registered strategies whose capabilities pass ``test``."""
    return [n for n in strategy_names() if test(_CAPABILITIES[n])]


def min_replies(name: str, num_malicious: int) -> int:
    """Fewest replies per round ``name`` can aggregate with ``num_malicious`` attackers."""
    return capabilities(name).min_replies(num_malicious)


def check_strategy_config(cfg: RunConfig) -> Capabilities:
    """The capabilities of ``cfg.strategy``; ``ValueError`` when it cannot do what the
    rest of the run config asks (encrypted aggregation, client-level DP)."""
    caps = capabilities(cfg.strategy)
    check_strategy(cfg.strategy, caps, cfg, strategies_with)
    return caps


def build_strategy(name: str, params: StrategyParams) -> fl.Strategy:
    return resolve_strategy(name)(params)
