"""Cross-key rules of ``secagg`` (secure aggregation): what it cannot combine with. The
strategy's part is a capability (:mod:`fedloom.strategies.capabilities`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .keys import DPMode


def _refuse(cond: bool, message: str) -> None:
    if cond:
        raise ValueError(message)


def check_secagg_combination(cfg: Mapping[str, Any]) -> None:
    """``ValueError`` (one line, with the valid choices) for settings secure aggregation
    cannot honour."""
    _refuse(cfg["he"], "--secagg does not work with --he: both hide the updates from the server "
            "(masks or ciphertexts) and one upload cannot be both; choose one")
    chain = cfg["compression"]
    if not chain.he_compatible:
        bad = ", ".join(s.codec.name for s in chain.stages if not s.codec.he_compatible)
        raise ValueError(
            f"compression {str(chain)!r} does not work with --secagg ({bad}: masks cancel "
            "only when every client's vector has the same layout, and the masked integers are "
            "uniform, so a quantizer saves nothing); codecs that work with --secagg: none, randk:FRACTION")
    _refuse(not cfg["compression-down"].is_none, (
        f"compression-down={cfg['compression-down']} does not work with --secagg: the clients "
        "would start from different lossy models and the server, seeing only the sum, could not "
        "rebase their updates; valid with --secagg: none"))
    _refuse(cfg["min-train-nodes"] < 2, (
        f"--secagg needs min-train-nodes >= 2 (got {cfg['min-train-nodes']}): the sum of one "
        "update is the update"))
    if cfg["dp"] is DPMode.CLIENT:
        _refuse(cfg["dp-clipping-side"] != "client" or cfg["dp-clipping"] != "fixed", (
            "dp=client with --secagg needs dp-clipping-side=client and dp-clipping=fixed: the "
            "server cannot clip or count clipped updates it cannot read; each client clips and "
            "adds its share of the noise (distributed DP)"))
