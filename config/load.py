"""Load a run config: coerce, resolve ``auto`` values, check every key and the rules
that tie keys together. Both launchers (run_sim.py and ``flwr run``, through the
ServerApp) and the ClientApp go through :func:`parse_run_config`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from fedloom.compression.spec import check_he
from fedloom.privacy.he_profiles import packing_error
from fedloom.tasks.base import Task
from fedloom.tasks.defaults import is_auto, resolve_auto
from fedloom.tasks.registry import get_task

from .keys import DPMode, RunConfig
from .schema import AUTO, Key, coerce, schema, validate
from .secagg import check_secagg_combination

KEYS: tuple[Key, ...] = schema(RunConfig)
#: Every key's default as written in pyproject's ``[tool.flwr.app.config]``.
DEFAULTS: dict[str, Any] = {k.name: k.default for k in KEYS}
#: Run-config keys choosing a model's normalisation, and the task each applies to.
NORM_KEYS = {"pointnet-norm": "pointcloud", "resnet-norm": "medmnist"}
#: ``best-metric=auto`` picks the first of these that the task reports.
BEST_AUTO_ORDER = ("val_auc", "val_accuracy")
#: Keys whose old value 0 meant "the task's default" (now ``auto``).
ZERO_MEANT_AUTO = ("batch-size", "lr")


def resolve_derived(raw: dict[str, Any], task: Task, num_nodes: int | None = None) -> None:
    """Replace every ``auto`` in ``raw`` by its value: the task's training defaults,
    the node counts (``num_nodes`` clients when the launcher knows it), and federated
    evaluation under HE. The one place derived defaults are worked out."""
    for name in ZERO_MEANT_AUTO:
        if raw[name] == 0:
            warnings.warn(
                f"{name}=0 for the task's default is deprecated; write {name}=\"auto\"",
                FutureWarning, stacklevel=3,
            )
            raw[name] = AUTO
    derived: dict[str, Any] = {
        **{name: value for name, (value, _) in resolve_auto(task, str(raw.get("dp", "none"))).items()},
        "min-train-nodes": 2 if num_nodes is None else min(2, num_nodes),
        "min-available-nodes": 2 if num_nodes is None else num_nodes,
        "fraction-evaluate": 1.0 if raw["he"] else 0.0,  # the server cannot evaluate under HE
    }
    for name, value in derived.items():
        if raw.get(name) == AUTO:
            raw[name] = value


def task_default_choices(mapping: Mapping[str, Any], cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """``config.json``'s ``auto``: each key with a task default that ``mapping`` leaves at
    ``auto`` (or out, or at the old 0), the value ``cfg`` got and why."""
    notes = resolve_auto(get_task(cfg.task), str(cfg.dp))
    by_name = {k.name: k for k in KEYS}
    chosen = {}
    for name, (_, why) in notes.items():
        value = mapping.get(name, by_name[name].default)
        if is_auto(name, value):
            chosen[name] = {"value": getattr(cfg, name.replace("-", "_")), "why": why}
    return chosen


def parse_run_config(mapping: Mapping[str, Any], *, num_nodes: int | None = None) -> RunConfig:
    """Validate a run-config mapping (defaults filled in); ``ValueError`` names the key.

    ``num_nodes``: the number of clients, when the launcher knows it (``auto`` node
    counts follow it).
    """
    unknown = sorted(set(mapping) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown run-config key(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}"
        )
    raw = {k.name: coerce(k, mapping.get(k.name, k.default)) for k in KEYS}
    task = get_task(raw["task"])
    raw["dataset"] = task.resolve_dataset(raw["dataset"])
    resolve_derived(raw, task, num_nodes)
    typed = {k.name: validate(k, raw[k.name]) for k in KEYS}
    check_combinations(typed, task)
    typed["best-metric"] = resolve_best_metric(
        typed["best-metric"], task.selectable_metrics(), he=typed["he"]
    )
    return RunConfig(**{name.replace("-", "_"): v for name, v in typed.items()})


def check_combinations(cfg: Mapping[str, Any], task: Task) -> None:
    """``ValueError`` for values that are valid alone but not together."""
    if cfg["optimizer"] != "sgd" and cfg["dp"] is DPMode.SAMPLE:
        raise ValueError(
            f"optimizer={cfg['optimizer']} is not supported with dp=sample "
            "(DP-SGD trains with SGD); valid: sgd"
        )
    for key, norm_task in NORM_KEYS.items():
        if cfg[key] == "batch" and cfg["dp"] is DPMode.SAMPLE and cfg["task"] == norm_task:
            raise ValueError(
                f"{key}=batch does not work with dp=sample: BatchNorm mixes the examples of a "
                "batch, so Opacus cannot clip each example's gradient; valid with dp=sample: group"
            )
    _check_logit_adjustment(cfg, task)
    _check_dp(cfg)
    packing = packing_error(cfg["he-scheme"], cfg["he-pack"])
    if packing:
        raise ValueError(f"invalid he-pack={cfg['he-pack']} with he-scheme={cfg['he-scheme']}; {packing}")
    if cfg["secagg"]:  # before --he's own checks: --he with --secagg is refused as such
        check_secagg_combination(cfg)
    if cfg["he"]:
        check_he_combination(cfg)


def _check_dp(cfg: Mapping[str, Any]) -> None:
    """The ``dp-*`` rules across keys (privacy-critical: fail at load, not mid-run)."""
    mode = cfg["dp"]
    if mode is not DPMode.NONE and cfg["dp-noise"] == 0 and cfg["dp-target-epsilon"] == 0:
        raise ValueError(f"dp={mode} needs dp-noise > 0 or dp-target-epsilon > 0")
    if mode is DPMode.CLIENT and cfg["dp-accountant"] != "rdp":
        raise ValueError(
            f"invalid dp-accountant={cfg['dp-accountant']!r} with dp=client; valid: rdp"
        )
    compressed = not cfg["compression"].is_none or not cfg["compression-down"].is_none
    if mode is DPMode.CLIENT and cfg["dp-clipping-side"] == "client" and compressed:
        raise ValueError(
            "dp-clipping-side=client clips the plain update on the client and cannot be "
            "combined with compression; use dp-clipping-side=server"
        )


def _check_logit_adjustment(cfg: Mapping[str, Any], task: Task) -> None:
    """``logit-adjustment`` is for single-label data and training without DP-SGD."""
    tau = cfg["logit-adjustment"]
    if not tau:
        return
    if task.multi_label(cfg["dataset"]):
        raise ValueError(
            f"logit-adjustment={tau:g} does not work with {cfg['dataset']}: it shifts a softmax by "
            "the log of the client's class prior, and this data set is multi-label; valid: 0"
        )
    if cfg["dp"] is DPMode.SAMPLE:
        raise ValueError(
            f"logit-adjustment={tau:g} does not work with dp=sample: the shift is computed from the "
            "client's label counts, which DP-SGD's privacy accounting does not cover; valid with "
            "dp=sample: 0 (dp=client and dp=none allow it)"
        )


def resolve_best_metric(value: str, choices: tuple[str, ...], *, he: bool) -> str:
    """The metric a run selects on, or ``none``; ``ValueError`` names the valid choices.

    ``auto`` is the validation AUC, else validation accuracy, else ``none``: it never
    selects on the test set. Under HE the server cannot evaluate the model.
    """
    if value == "auto":
        return "none" if he else next((m for m in BEST_AUTO_ORDER if m in choices), "none")
    if value != "none" and value not in choices:
        raise ValueError(f"invalid best-metric={value!r}; valid: auto, none, {', '.join(choices)}")
    if he and value != "none":
        raise ValueError(
            f"best-metric={value} needs the server to evaluate the model, which --he hides "
            "from it; valid with --he: auto (off), none"
        )
    return value


def check_he_combination(cfg: Mapping[str, Any]) -> None:
    """``ValueError`` for settings that encrypted aggregation cannot honour (the
    strategy's part is :func:`fedloom.strategies.capabilities.check_strategy`)."""
    check_he(cfg["compression"], he=True)  # names the codecs that work
    if not cfg["compression-down"].is_none:
        raise ValueError(
            f"compression-down={cfg['compression-down']} does not work with --he: the global model "
            "goes down as ciphertexts the server cannot decode or re-encode; valid with --he: none"
        )
    if cfg["dp"] is DPMode.CLIENT:
        raise ValueError(
            "--dp client does not work with --he: the server would have to clip or noise "
            "updates it cannot read; use --dp sample with --he"
        )
    if cfg["fraction-evaluate"] <= 0:
        raise ValueError(
            "--he needs federated evaluation (the server cannot decrypt the model): "
            "set fraction-evaluate > 0"
        )
