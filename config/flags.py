"""The run_sim.py flags of run-config keys, derived from the schema.

A flag left unset stays ``None`` so that it falls through to ``--run-config``,
``--resume`` and then the key's default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .keys import LISTED
from .load import KEYS
from .schema import AUTO, Key


def flag_help(k: Key, listings: Mapping[str, str]) -> str:
    """The key's help, its valid names where a registry lists them, and its default."""
    listed = listings.get(k.name) or (", ".join(LISTED[k.name]()) if k.name in LISTED else "")
    text = k.help + (f" ({listed})" if listed else "")
    default = k.auto if k.default == AUTO else k.default_text()
    return f"{text} [default: {default}]"


def _flag_type(k: Key) -> Callable[[str], Any]:
    numeric: Callable[[str], Any] | None = {"int": int, "float": float, "number": float}.get(k.kind)
    if numeric is None:
        return str
    if not k.auto:
        return numeric

    def number_or_auto(text: str) -> object:
        return AUTO if text.strip().lower() == AUTO else numeric(text)

    number_or_auto.__name__ = "int" if k.kind == "int" else "float"  # argparse names it in errors
    return number_or_auto


def add_key_flags(parser: argparse.ArgumentParser, listings: Mapping[str, str] | None = None) -> None:
    """One flag per key that declares one; boolean keys are switches that set true."""
    for k in flag_keys():
        assert k.flag_name is not None
        if k.kind == "bool":
            parser.add_argument(
                k.flag_name, dest=dest(k), action="store_const", const=True, help=k.help,
            )
        else:
            parser.add_argument(
                k.flag_name, dest=dest(k), type=_flag_type(k), help=flag_help(k, listings or {}),
            )


def flag_keys() -> Iterable[Key]:
    return (k for k in KEYS if k.flag)


def dest(k: Key) -> str:
    """The argparse attribute of ``k``'s flag."""
    assert k.flag_name is not None
    return k.flag_name[2:].replace("-", "_")


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The run-config values of the key flags that were given."""
    return {k.name: getattr(args, dest(k)) for k in flag_keys() if getattr(args, dest(k)) is not None}


def given_flags(args: argparse.Namespace, *, but: Iterable[str] = ()) -> list[str]:
    """``--flag`` names of the key flags that were given, except those of keys ``but``."""
    skip = set(but)
    return [
        str(k.flag_name) for k in flag_keys()
        if k.name not in skip and getattr(args, dest(k)) is not None
    ]
