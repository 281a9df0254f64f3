"""What a strategy can do, declared where it is registered, and the run-config checks
that ask for it (instead of comparing strategy names).

A user's ``package.module:Class`` strategy declares its capabilities as class
attributes with the names of :class:`Capabilities`' fields, for example::

    class MyMean(FedAvg):
        he_compatible = True         # aggregates the example-weighted mean
        client_dp_compatible = True  # ... of the clipped updates, nothing else
        min_replies = 3              # or a function of num-malicious: lambda f: 2 * f + 3

Undeclared capabilities are off (``min_replies``: 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config imports PyTorch; resolving a strategy name must not
    from fedloom.config import RunConfig


def _one(f: int) -> int:
    return 1


@dataclass(frozen=True)
class Capabilities:
    """Facts about one strategy that the config checks, the server and clients use."""

    #: Aggregation is the example-weighted mean of the updates, which encrypted sums
    #: compute: under ``he`` fedloom's encrypted FedAvg aggregates in its place.
    he_compatible: bool = False
    #: Aggregation is the plain mean of the clipped updates that client-level DP's noise
    #: and accounting assume (a median or Krum moves up to 3x further for one client; a
    #: server optimizer's momentum replays un-noised past means).
    client_dp_compatible: bool = False
    #: Aggregation needs only the example-weighted mean of the updates (a server step
    #: from it included), which is all secure aggregation reveals: under ``secagg`` the
    #: strategy receives that mean as one reply.
    secagg_compatible: bool = False
    #: Fewest replies per round it can aggregate, as a function of ``num-malicious``.
    min_replies: Callable[[int], int] = _one
    #: Clients report the global model's loss on their data before training
    #: (``train_loss_initial``; q-FFL weights clients by it). No DP mode covers it,
    #: so such a strategy is refused with any ``dp``.
    needs_initial_loss: bool = False
    #: Clients add the proximal term ``mu/2 ||w - w_global||^2`` (the ``proximal-mu``
    #: the strategy sends in its train config).
    proximal_term: bool = False

    @classmethod
    def declared_by(cls, obj: Any) -> Capabilities:
        """The capabilities ``obj`` (a user's class or factory) declares as attributes."""
        found: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if hasattr(obj, f.name):
                found[f.name] = getattr(obj, f.name)
        replies = found.get("min_replies")
        if isinstance(replies, int) and not isinstance(replies, bool):
            found["min_replies"] = lambda f, n=replies: n
        elif replies is not None and not callable(replies):
            raise ValueError(
                f"min_replies={replies!r} of strategy {getattr(obj, '__name__', obj)!r}; "
                "valid: an int or a function of num-malicious"
            )
        for name in ("he_compatible", "client_dp_compatible", "secagg_compatible", "needs_initial_loss",
                     "proximal_term"):
            if name in found and not isinstance(found[name], bool):
                raise ValueError(f"{name}={found[name]!r} of strategy {obj!r}; valid: True, False")
        return cls(**found)


@dataclass(frozen=True)
class Requirement:
    """What one run-config option asks of the strategy: the option as the user wrote it
    (or None when the run does not set it), the capability, and why it is needed."""

    option: Callable[[RunConfig], str | None]
    allows: Callable[[Capabilities], bool]
    why: str


def _dp_option(cfg: RunConfig) -> str | None:
    from fedloom.config import DPMode

    return None if cfg.dp is DPMode.NONE else f"dp={cfg.dp}"


#: The one table of option -> capability checks (the config checks go through it in order).
REQUIREMENTS = (
    Requirement(
        lambda cfg: "--he" if cfg.he else None, lambda c: c.he_compatible,
        "the server only adds ciphertexts, so it can compute a weighted mean but not a median, "
        "trimmed mean, Krum score or server-side optimizer step",
    ),
    Requirement(
        lambda cfg: "--secagg" if cfg.secagg else None, lambda c: c.secagg_compatible,
        "the server learns only the weighted sum of the updates, so it can compute a mean but not "
        "a median, trimmed mean, Krum score or per-client loss weighting",
    ),
    Requirement(
        _dp_option, lambda c: not c.needs_initial_loss,
        "it weights each client by its loss on its whole private partition (train_loss_initial), "
        "a statistic no epsilon covers",
    ),
    Requirement(
        lambda cfg: "dp=client" if _dp_option(cfg) == "dp=client" else None, lambda c: c.client_dp_compatible,
        "its noise and epsilon assume the release is the plain mean of the clipped updates (a median "
        "or Krum moves up to 3x further for one client; a server optimizer's momentum replays "
        "un-noised past means)",
    ),
)


def check_strategy(name: str, caps: Capabilities, cfg: RunConfig, names: Callable[[Callable[[Capabilities], bool]], list[str]]) -> None:
    """``ValueError`` when strategy ``name`` lacks what the run config asks of it;
    ``names(test)`` lists the registered strategies that pass ``test``."""
    for req in REQUIREMENTS:
        option = req.option(cfg)
        if option is not None and not req.allows(caps):
            raise ValueError(
                f"strategy {name!r} does not work with {option}: {req.why}; strategies that work "
                f"with {option}: " + ", ".join(names(req.allows))
            )
