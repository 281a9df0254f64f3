"""Check a run config before ``flwr run`` sends it: what the SuperLink's ServerApp would
refuse fails here, in one line, before anything is submitted.

Two stages. The first needs neither PyTorch nor the task code, so the usual
mistakes fail at once: values that are not TOML, unknown keys, a value whose type
is not the declared one (``num-server-rounds="2"``: the app's
``[tool.flwr.app.config]`` table, which the SuperLink reads too, declares a number),
an unknown strategy or a ``pkg.mod:Class`` of the app that does not import. The
second is fedloom's own run-config parser (ranges and combinations), whose modules
import PyTorch.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _common import fail

#: Flower's ``k=v`` items (flwr.common.config.parse_config_args): each value is TOML.
_ITEM = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")
#: A default worked out when the config is loaded (the table cannot say the key's kind).
AUTO = "auto"
#: Run-config paths the ServerApp reads on the SuperLink machine.
SERVER_PATHS = ("run-dir", "data-dir", "he-dir")


def parse_items(items: list[str]) -> dict[str, Any]:
    """``--run-config`` items as Flower parses them (TOML values); fails with one line."""
    text = " ".join(items)
    try:
        parts = [part for item in items for part in shlex.split(item)]
    except ValueError as exc:  # e.g. an unbalanced quote
        fail(f"--run-config {text!r}: {exc}")
    for part in parts:
        if "=" not in part or part.startswith("="):
            fail(f"--run-config item {part!r} is not key=value")
    overrides: dict[str, Any] = {}
    for item in items:
        toml = "\n".join(f"{k} = {v}" for k, v in _ITEM.findall(item))
        try:
            overrides.update(tomllib.loads(toml))
        except tomllib.TOMLDecodeError:
            fail(
                f"--run-config {text!r}: values must be TOML: numbers, true/false, "
                'or strings in double quotes (task="mnist")'
            )
    return overrides


def declared_config(app: Path) -> dict[str, Any]:
    """The app's ``[tool.flwr.app.config]``: every key with its default."""
    path = app / "pyproject.toml"
    try:
        table = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        fail(f"--app {app}: cannot read [tool.flwr.app.config] from {path} ({exc})")
    return dict(table)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def check_declared(overrides: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    """Unknown keys and values of another type than their key's default (quoted numbers)."""
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        fail(f"--run-config: unknown key(s) {', '.join(unknown)}; valid: {', '.join(declared)}")
    for key, value in overrides.items():
        if declared[key] == AUTO:  # worked out when loaded: "auto" or a value of the key's own kind
            continue
        want, got = _kind(declared[key]), _kind(value)
        if want != got:
            hint = f"; write {key}={value} without quotes" if got == "string" and want != "string" else ""
            if want == "string":
                hint = f'; strings go in double quotes: {key}="{value}"'
            fail(
                f"--run-config {key}={value!r} is a {got}, but {key} takes a {want} "
                f"(default {declared[key]!r}){hint}"
            )


def _in_app(module: str, app: Path) -> bool:
    """Whether ``module``'s top-level package is the app's own code (shipped in its FAB)."""
    top = module.split(".", 1)[0]
    if (app / top).is_dir() or (app / f"{top}.py").is_file():
        return True
    spec = importlib.util.find_spec(top)
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    return origin is not None and origin.is_relative_to(app)


def check_strategy(name: str, app: Path) -> str | None:
    """Fail for a strategy the ServerApp could not build; a note when it cannot be checked here."""
    from fedloom.strategies.registry import resolve_strategy

    target = name.rpartition(":")[0]
    if ":" in name and target.endswith(".py"):
        return (f"strategy file {target} is read on the SuperLink machine "
                "(relative to start_superlink.py --workdir); not checked here")
    if ":" in name and not _in_app(target, app):
        return (f"strategy module {target!r} is not part of the app {app}: the SuperLink machine "
                "must have it installed; not checked here")
    sys.path.insert(0, str(app))  # as the ServerApp sees the app: its folder first on sys.path
    try:
        resolve_strategy(name)
    except ValueError as exc:
        fail(f"--run-config strategy: {exc}")
    finally:
        sys.path.remove(str(app))
    return None


def check_run_config(items: list[str], app: Path) -> dict[str, Any]:
    """Every check of the run config the ServerApp would make; the parsed overrides."""
    overrides = parse_items(items)
    declared = declared_config(app)
    check_declared(overrides, declared)
    for key in SERVER_PATHS:
        value = str(overrides.get(key, "") or "")
        if value and not Path(value).is_absolute():
            fail(f"--run-config {key}={value!r} must be an absolute path on the SuperLink machine")
    note = check_strategy(str(overrides.get("strategy", declared.get("strategy", "fedavg"))), app)
    if note:
        print(f"note: {note}", file=sys.stderr)
    from fedloom.config import parse_run_config

    from fedloom.strategies.registry import check_strategy_config

    try:
        cfg = parse_run_config(overrides)
        if note is None:  # a strategy checkable here: can it do what the config asks (HE, DP)?
            check_strategy_config(cfg)
    except ValueError as exc:
        fail(f"--run-config: {exc}")
    if cfg.he_secret_dir:
        fail(
            "--run-config he-secret-dir is for simulations: each SuperNode reads its own secret.ctx "
            "(start_supernode.py --he-secret-context), and the run config goes to the server"
        )
    if cfg.he and not cfg.he_dir:
        fail("--run-config he=true needs he-dir (the SuperLink machine's folder with public.ctx)")
    return overrides
