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


def check_strategy(name: str, caps: Capabilities, cfg: RunConfig, names: Callable[[Callable[[Capabilities], bool]], list[str]]) -> None:
    """``ValueError`` when strategy ``name`` lacks what the run config asks of it;
    ``names(test)`` lists the registered strategies that pass ``test``."""
    from fedloom.config import DPMode

    if cfg.he and not caps.he_compatible:
        raise ValueError(
            f"strategy {name!r} does not work with --he: the server only adds "
            "ciphertexts, so it can compute a weighted mean but not a median, trimmed mean, "
            "Krum score or server-side optimizer step; strategies that work with --he: "
            + ", ".join(names(lambda c: c.he_compatible))
        )
    if cfg.secagg and not caps.secagg_compatible:
        raise ValueError(
            f"strategy {name!r} does not work with --secagg: the server learns only the "
            "weighted sum of the updates, so it can compute a mean but not a median, trimmed mean, "
            "Krum score or per-client loss weighting; strategies that work with --secagg: "
            + ", ".join(names(lambda c: c.secagg_compatible))
        )
    if cfg.dp is not DPMode.NONE and caps.needs_initial_loss:
        raise ValueError(
            f"strategy {name!r} does not work with dp={cfg.dp}: it weights each client by its "
            "loss on its whole private partition (train_loss_initial), a statistic no epsilon "
            "covers; valid with dp: any strategy that does not need the initial loss: "
            + ", ".join(names(lambda c: not c.needs_initial_loss))
        )
    if cfg.dp is DPMode.CLIENT and not caps.client_dp_compatible:
        raise ValueError(
            f"strategy {name!r} does not work with dp=client: its noise and epsilon "
            "assume the release is the plain mean of the clipped updates (a median or Krum moves "
            "up to 3x further for one client; a server optimizer's momentum replays un-noised "
            "past means); strategies that work with dp=client: "
            + ", ".join(names(lambda c: c.client_dp_compatible))
        )
