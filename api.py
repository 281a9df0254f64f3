"""The Python API: :func:`simulate` runs a simulation in this process and returns its
results; :func:`load_run` reads a finished run's results folder.

``simulate`` goes through the same validation as ``run_sim.py`` (one config, one set
of checks) and raises :class:`ConfigError` with the CLI's one-line message where the
CLI would exit with status 2.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The keyword arguments of :func:`simulate` that are not run-config keys.
LAUNCH_KEYWORDS = ("task", "num_clients", "rounds", "client_cpus", "client_gpus", "verbose")


class ConfigError(ValueError):
    """A run's configuration is invalid: the message names the problem and the valid choices."""


class RunFailed(RuntimeError):
    """A simulation finished without completing a round (no metrics row to return)."""


@dataclass(frozen=True)
class RunResult:
    """A run's results folder, read back: ``rows`` are ``metrics.jsonl``'s rows (one per
    round), ``config`` is ``config.json`` (resolved run config, seed, sizes, versions)."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_config(self) -> dict[str, Any]:
        """The fully resolved run-config keys (kebab-case, as in ``config.json``)."""
        return dict(self.config.get("run_config", {}))

    @property
    def final(self) -> dict[str, Any]:
        """The last round's metrics row ({} when no round completed)."""
        return dict(self.rows[-1]) if self.rows else {}

    def metric(self, name: str) -> list[Any]:
        """``name``'s value in every round (None where a round lacks it); ``KeyError``
        lists the keys the rows have."""
        keys = sorted({k for row in self.rows for k in row})
        if name not in keys:
            raise KeyError(f"no metric {name!r} in {self.path}; valid: {', '.join(keys)}")
        return [row.get(name) for row in self.rows]


def load_run(path: str | Path) -> RunResult:
    """Read a run's results folder (``config.json`` and ``metrics.jsonl``).

    ``FileNotFoundError`` when ``path`` is not a fedloom results folder.
    """
    folder = Path(path).expanduser().resolve()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a fedloom results folder (no config.json)")
    config = json.loads(config_file.read_text())
    metrics = folder / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return RunResult(folder, config, [json.loads(line) for line in lines if line.strip()])


def simulate(
    task: str | None = None,
    num_clients: int | None = None,
    rounds: int | None = None,
    *,
    client_cpus: float = 1.0,
    client_gpus: float | str = "auto",
    verbose: bool = False,
    **run_config: Any,
) -> RunResult:
    """Run a federated simulation (Flower's simulation engine, Ray client actors) and
    return its results.

    ``run_config``: any run-config key with ``_`` for ``-`` (``data_dir="data"``,
    ``fraction_evaluate=1.0``, ``dp="sample"``, ...); keys left out take their defaults,
    as on the command line. ``resume=True`` with ``run_dir`` continues that run (only
    ``rounds`` may change). Raises :class:`ConfigError` for bad input before anything
    starts, :class:`RunFailed` when no round completed.
    """
    from fedloom import run_sim

    config = _run_config_keys(run_config)
    if rounds is not None:
        if "num-server-rounds" in config:
            raise ConfigError("give rounds or num_server_rounds, not both")
        config["num-server-rounds"] = rounds
    if task is not None:
        config["task"] = task
    args = run_sim.build_parser().parse_args([])
    args.num_clients, args.client_cpus, args.client_gpus = num_clients, client_cpus, str(client_gpus)
    args.verbose = verbose
    if _truthy(config.pop("resume", False)):
        _resume_args(args, config)
    else:
        args.run_config = shlex.join(f"{key}={_text(value)}" for key, value in config.items())
    try:
        resolved = run_sim.resolve_config(args)
        gpus = run_sim.gpu_share(args.client_gpus, args.num_clients, resolved)
    except (run_sim.UsageError, ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from exc
    if not verbose:
        run_sim.quiet_flower_logs()
    from fedloom.server.outcome import NoRoundCompleted

    try:
        run_sim.simulate(resolved, args.num_clients, args.client_cpus, gpus, verbose)
    except NoRoundCompleted as exc:  # the results folder holds what there is
        raise RunFailed(str(exc)) from exc
    result = load_run(resolved["run-dir"])
    if not result.rows:
        raise RunFailed(f"the run in {result.path} completed no round (see its failures.jsonl, if any)")
    return result


def _run_config_keys(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments -> run-config keys; unknown names list the valid ones."""
    from fedloom.config import DEFAULTS

    keys = {name: name.replace("_", "-") for name in kwargs}
    unknown = sorted(name for name, key in keys.items() if key not in DEFAULTS or "-" in name)
    if unknown:
        valid = [*LAUNCH_KEYWORDS, *(k.replace("-", "_") for k in DEFAULTS if k != "task")]
        raise ConfigError(f"unknown keyword(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return {keys[name]: value for name, value in kwargs.items()}


def _resume_args(args: Any, config: dict[str, Any]) -> None:
    """``resume=True, run_dir=...`` as ``run_sim.py --resume RUN_DIR`` (``rounds`` may change)."""
    run_dir = config.pop("run-dir", "")
    rounds = config.pop("num-server-rounds", None)
    if not run_dir or config:
        extra = f"; got {', '.join(k.replace('-', '_') for k in config)}" if config else ""
        raise ConfigError(
            "resume=True needs run_dir (the run to continue) and keeps that run's config: "
            f"only rounds and num_clients may be given{extra}"
        )
    args.resume, args.rounds = str(run_dir), rounds


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def _text(value: Any) -> str:
    """A value as ``--run-config`` text (booleans as true/false, paths as strings)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
