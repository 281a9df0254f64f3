"""The declaration of one run-config key, and the generic checks every key gets.

A key is declared once, as a field of :class:`fedloom.config.keys.RunConfig` made with
:func:`key`: its name is the field name in kebab case, its type the field's annotation,
and the rest (default, valid values, help, section, launcher flag) is the :class:`Key`
stored in the field's metadata. Defaults, the run_sim.py flags, the README reference
and the pyproject check all read the declarations through :func:`schema`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: How a boolean run-config key may be written (any case).
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
#: The value of a key whose default is worked out when the config is loaded.
AUTO = "auto"
#: Scalar types a run-config value has in pyproject's table; ``number`` is a float
#: that stays an int when whole (config.json keeps 1, not 1.0).
KINDS = ("bool", "int", "float", "number", "str")

Choices = tuple[str, ...] | Callable[[], Iterable[str]]


@dataclass(frozen=True)
class Check:
    """A range check: ``test(value)`` must hold; ``valid`` says what is valid."""

    test: Callable[[Any], bool]
    valid: str


@dataclass(frozen=True)
class Key:
    """Everything fedloom knows about one run-config key except the code that uses it."""

    default: Any  # as written in pyproject's table
    help: str
    section: str
    kind: str = ""  # one of KINDS; empty: the field's annotation
    choices: Choices | None = None  # valid words (a callable for registries)
    check: Check | None = None
    #: The run_sim.py flag: "" none, "=" the key's own name, else the flag's name.
    flag: str = ""
    #: What ``auto`` resolves to (keys whose default is ``auto``), for the docs.
    auto: str = ""
    #: The default as the docs show it, when the table's value says little ("").
    shown_default: str = ""
    parse: Callable[[Any], Any] | None = None  # raw value -> typed object (parsed once)
    name: str = ""  # filled in by schema()

    @property
    def flag_name(self) -> str | None:
        """``--flag`` spelling, or None for keys without a flag."""
        if not self.flag:
            return None
        return f"--{self.name if self.flag == '=' else self.flag}"

    def valid_choices(self) -> tuple[str, ...]:
        if self.choices is None:
            return ()
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def default_text(self) -> str:
        if self.shown_default:
            return self.shown_default
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default) if self.default != "" else '""'


def key(default: Any, help: str, section: str, **facts: Any) -> Any:
    """A dataclass field declaring run-config key ``<field name in kebab case>``."""
    return dataclasses.field(metadata={"key": Key(default, help, section, **facts)})


def check(test: Callable[[Any], bool], valid: str) -> Check:
    return Check(test, valid)


def schema(config_class: type) -> tuple[Key, ...]:
    """The keys declared by ``config_class``'s fields, in declaration order."""
    keys = []
    for f in dataclasses.fields(config_class):
        declared: Key = f.metadata["key"]
        kind = declared.kind or _kind_of(f.type)
        keys.append(dataclasses.replace(declared, name=f.name.replace("_", "-"), kind=kind))
    return tuple(keys)


def _kind_of(annotation: Any) -> str:
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return name if name in ("bool", "int", "float") else "str"


def fail(key_name: str, value: Any, valid: str) -> ValueError:
    return ValueError(f"invalid {key_name}={value!r}; valid: {valid}")


def coerce(k: Key, value: Any) -> Any:
    """``value`` (TOML, a string from a flag, or ``auto`` where allowed) as ``k``'s kind."""
    if k.auto and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if k.kind == "bool":
        word = str(value).lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise fail(k.name, value, f"{', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}")
        return word in TRUE_WORDS
    try:
        if k.kind == "str":
            return str(value)
        if isinstance(value, bool) or not math.isfinite(float(value)):  # TOML true/false
            raise ValueError
        if k.kind == "number":
            number = float(value)
            return int(number) if number.is_integer() else number
        if k.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{k.name}={value!r} is not a valid {k.kind} (finite, not true/false)"
            + (f", or {AUTO}" if k.auto else "")
        ) from None


def validate(k: Key, value: Any) -> Any:
    """``value`` (coerced, ``auto`` resolved) checked against ``k``'s choices and range,
    then parsed into its typed object."""
    choices = k.valid_choices()
    if choices and value not in choices:
        raise fail(k.name, value, ", ".join(map(str, choices)))
    if k.check is not None and not k.check.test(value):
        raise fail(k.name, value, k.check.valid)
    return k.parse(value) if k.parse is not None else value
