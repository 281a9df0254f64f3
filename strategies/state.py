"""Strategy state as plain data, for checkpoints loaded with ``weights_only=True``.

A checkpoint holds no pickled strategy: the resumed run builds its strategy chain
from the run config again and loads each strategy's state into it. State is plain
data (tensors, numbers, strings, lists and dicts of them); numpy arrays travel as
tensors and Flower ``ArrayRecord``s as ``{"array_record": {name: tensor}}``, so a
checkpoint written on a GPU machine loads on a CPU one.

fedloom's wrappers define ``state_dict`` / ``load_state_dict`` themselves (empty
for those that hold nothing across rounds). Flower's own strategies do not, so
the attributes that carry their state across rounds are listed here, by class
(FedAdam/FedYogi/FedAdagrad's moments, FedAvgM's momentum, adaptive clipping's
norm). A user's strategy checkpoints its state by defining the two methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.logger import log
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.fedopt import FedOpt

from .delegating import chain_of

#: Attributes of Flower's strategies that carry state from one round to the next.
#: Flower's other built-in strategies hold only their constructor arguments.
FLOWER_STATE: dict[type, tuple[str, ...]] = {
    FedOpt: ("current_arrays", "m_t", "v_t"),
    fl.FedAvgM: ("current_arrays", "momentum_vector"),
    fl.QFedAvg: ("current_arrays",),
    fl.DifferentialPrivacyServerSideAdaptiveClipping: ("clipping_norm", "_round_norm"),
    fl.DifferentialPrivacyClientSideAdaptiveClipping: ("clipping_norm", "_round_norm"),
}
_ARRAY_RECORD = "array_record"
_warned: set[str] = set()


def to_plain(value: Any) -> Any:
    """``value`` with numpy arrays as tensors and ``ArrayRecord``s tagged; ``TypeError``
    for anything that is not plain data (it would need pickled code to load)."""
    if isinstance(value, ArrayRecord):
        return {_ARRAY_RECORD: {k: to_plain(v.numpy()) for k, v in value.items()}}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True, order="C"))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    raise TypeError(f"{type(value).__name__} is not plain data (tensors, numbers, strings, lists, dicts)")


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain`: tensors back to numpy arrays, tagged records to
    ``ArrayRecord``s (tuples come back as lists)."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {_ARRAY_RECORD}:
            return ArrayRecord({k: Array(np.ascontiguousarray(from_plain(v))) for k, v in value[_ARRAY_RECORD].items()})
        return {k: from_plain(v) for k, v in value.items()}
    return value


def _flower_attributes(strategy: fl.Strategy) -> tuple[str, ...] | None:
    """The state attributes of ``strategy``'s Flower class, ``None`` if it is not one."""
    for cls in type(strategy).__mro__:
        if cls in FLOWER_STATE:
            return FLOWER_STATE[cls]
    return () if type(strategy).__module__.startswith("flwr.") else None


def strategy_state(strategy: fl.Strategy) -> dict[str, Any]:
    """One strategy's own state (not the strategies it wraps) as plain data."""
    if hasattr(strategy, "state_dict"):
        return to_plain(strategy.state_dict())
    names = _flower_attributes(strategy)
    if names is None:
        name = type(strategy).__qualname__
        if name not in _warned:
            _warned.add(name)
            log(WARNING, "strategy %s has no state_dict / load_state_dict: its state is not "
                "checkpointed, a resumed run starts it afresh", name)
        return {}
    return {n: to_plain(getattr(strategy, n)) for n in names if hasattr(strategy, n)}


def load_strategy_state(strategy: fl.Strategy, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`strategy_state`."""
    if hasattr(strategy, "load_state_dict"):
        strategy.load_state_dict(from_plain(state))
        return
    names = _flower_attributes(strategy) or ()
    for name in names:
        if name in state:
            setattr(strategy, name, from_plain(state[name]))


def chain_state(strategy: fl.Strategy) -> list[dict[str, Any]]:
    """The state of every strategy in ``strategy``'s chain, outermost first."""
    return [{"class": type(s).__qualname__, "state": strategy_state(s)} for s in chain_of(strategy)]


def load_chain_state(strategy: fl.Strategy, saved: list[dict[str, Any]]) -> None:
    """Load :func:`chain_state`'s output into a chain built from the same run config;
    ``ValueError`` when the chains differ (the checkpoint is of another run)."""
    chain = chain_of(strategy)
    have, want = [type(s).__qualname__ for s in chain], [s["class"] for s in saved]
    if have != want:
        raise ValueError(
            f"the checkpoint's strategy chain ({' > '.join(want)}) differs from this run's "
            f"({' > '.join(have)}): it belongs to another configuration"
        )
    for s, entry in zip(chain, saved, strict=True):
        load_strategy_state(s, entry["state"])
