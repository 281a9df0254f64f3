"""The run config: flat kebab-case keys, validated once, passed down typed.

``DEFAULTS`` mirrors ``[tool.flwr.app.config]`` in pyproject.toml (a test keeps them
equal). Both the ServerApp and the ClientApp parse the run config with
:func:`parse_run_config`; nothing below server/ and client/ reads Flower's Context.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedloom.compression.spec import check_he, parse_down_spec, parse_spec
from fedloom.privacy.he_profiles import PACKINGS, SCHEMES, packing_error
from fedloom.privacy.accounting import ACCOUNTANTS
from fedloom.privacy.dp import SampleDPSettings
from fedloom.client.attacks import ATTACKS
from fedloom.tasks.base import Task, TaskOptions
from fedloom.tasks.partition import parse_partition
from fedloom.tasks.batchnorm import NORMS
from fedloom.tasks.registry import get_task
from fedloom.tasks.training import LR_SCHEDULES, OPTIMIZERS

DEFAULTS: dict[str, Any] = {
    "task": "digits",
    "dataset": "",
    "data-dir": "data",
    "num-server-rounds": 10,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "min-train-nodes": 2,
    "min-available-nodes": 2,
    "local-epochs": 1,
    "batch-size": 0,
    "lr": 0.0,
    "momentum": 0.9,
    "optimizer": "sgd",
    "weight-decay": 0.0,
    "logit-adjustment": 0.0,
    "lr-schedule": "constant",
    "partition": "iid",
    "strategy": "fedavg",
    "seed": 42,
    "run-dir": "",
    "round-timeout": 3600.0,
    "proximal-mu": 0.01,
    "server-lr": 1.0,
    "server-momentum": 0.9,
    "server-adaptive-lr": 0.01,
    "num-malicious": 0,
    "trimmed-beta": 0.2,
    "qfedavg-q": 0.1,
    "image-size": 28,
    "num-points": 1024,
    "pointnet-transforms": "both",
    "pointnet-norm": "group",
    "resnet-norm": "group",
    "batchnorm-calibration": True,
    "augment-rotation": 180.0,
    "augment-images": False,
    "model-width": 1.0,
    "mnist-model": "mcmahan",
    "freeze-classifier": False,
    "best-metric": "auto",
    "compression": "none",
    "compression-down": "none",
    "dp": "none",
    "dp-noise": 0.0,
    "dp-target-epsilon": 0.0,
    "dp-max-grad-norm": 1.0,
    "dp-delta": 1e-5,
    "dp-accountant": "rdp",
    "dp-clipping": "fixed",
    "dp-clipping-side": "server",
    "dp-clipping-norm": 1.0,
    "dp-seeded-noise": False,
    "resume": False,
    "fail-rate": 0.0,
    "straggler-rate": 0.0,
    "straggler-delay": 0.0,
    "attack": "none",
    "attack-fraction": 0.0,
    "attack-scale": 4.0,
    "he": False,
    "he-dir": "",
    "he-secret-dir": "",
    "he-clip": 8.0,
    "he-pack": 1,
    "he-scheme": "bfv",
}

#: Strategies whose aggregation is the weighted mean that encrypted sums compute.
HE_STRATEGIES = ("fedavg", "fedprox")
#: Train-instruction config key: the run's ID (``config.json``'s ``run_id``, kept on
#: resume), under which clients keep their persistent state.
RUN_ID_KEY = "fedloom-run-id"
#: Client-level DP's accounting holds for a plain mean of the clipped updates only.
CLIENT_DP_STRATEGIES = ("fedavg", "fedprox")


IMAGE_SIZES = (28, 64, 128, 224)
POINTNET_TRANSFORMS = ("none", "input", "feature", "both")
#: Run-config keys choosing a model's normalisation, and the task each applies to.
NORM_KEYS = {"pointnet-norm": "pointcloud", "resnet-norm": "medmnist"}
MNIST_MODELS = ("mcmahan", "dp-cnn")
DP_MODES = ("none", "sample", "client")
DP_CLIPPING = ("fixed", "adaptive")
DP_CLIPPING_SIDES = ("server", "client")
#: How a boolean run-config key may be written (any case).
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
#: ``best-metric=auto`` picks the first of these that the task reports.
BEST_AUTO_ORDER = ("val_auc", "val_accuracy")


@dataclass(frozen=True)
class RunConfig:
    """Typed, validated run configuration. Field ``x_y`` is run-config key ``x-y``."""

    task: str
    dataset: str
    data_dir: str
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_available_nodes: int
    local_epochs: float  # an int when whole; 0.5 = half an epoch per round
    batch_size: int
    lr: float
    momentum: float
    optimizer: str
    weight_decay: float
    logit_adjustment: float
    lr_schedule: str
    partition: str
    strategy: str
    seed: int
    run_dir: str
    round_timeout: float
    proximal_mu: float
    server_lr: float
    server_momentum: float
    server_adaptive_lr: float
    num_malicious: int
    trimmed_beta: float
    qfedavg_q: float
    image_size: int
    num_points: int
    pointnet_transforms: str
    pointnet_norm: str
    resnet_norm: str
    batchnorm_calibration: bool
    augment_rotation: float
    augment_images: bool
    model_width: float
    mnist_model: str
    freeze_classifier: bool
    best_metric: str
    compression: str
    compression_down: str
    dp: str
    dp_noise: float
    dp_target_epsilon: float
    dp_max_grad_norm: float
    dp_delta: float
    dp_accountant: str
    dp_clipping: str
    dp_clipping_side: str
    dp_clipping_norm: float
    dp_seeded_noise: bool
    resume: bool
    fail_rate: float
    straggler_rate: float
    straggler_delay: float
    attack: str
    attack_fraction: float
    attack_scale: float
    he: bool
    he_dir: str
    he_secret_dir: str
    he_clip: float
    he_pack: int
    he_scheme: str

    def task_options(self) -> TaskOptions:
        """The task-specific settings, as the typed argument tasks receive."""
        return TaskOptions(
            image_size=self.image_size,
            num_points=self.num_points,
            pointnet_transforms=self.pointnet_transforms,
            pointnet_norm=self.pointnet_norm,
            resnet_norm=self.resnet_norm,
            augment_rotation=self.augment_rotation,
            augment_images=self.augment_images,
            model_width=self.model_width,
            mnist_model=self.mnist_model,
        )

    def sample_dp(self) -> SampleDPSettings | None:
        """DP-SGD settings for the clients (``dp=sample``), else None."""
        if self.dp != "sample":
            return None
        return SampleDPSettings(
            noise_multiplier=self.dp_noise,
            max_grad_norm=self.dp_max_grad_norm,
            delta=self.dp_delta,
            accountant=self.dp_accountant,
            target_epsilon=self.dp_target_epsilon,
            planned_rounds=self.num_server_rounds,
            seeded_noise=self.dp_seeded_noise,
        )

    def to_run_config(self) -> dict[str, Any]:
        """Back to flat kebab-case keys (what ``config.json`` records)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


FRACTIONAL_KEYS = ("local-epochs",)


def _coerce(key: str, value: Any, like: Any) -> Any:
    kind = type(like)
    if kind is bool:
        word = str(value).lower()
        _check(word in TRUE_WORDS + FALSE_WORDS, key, value, f"{', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}")
        return word in TRUE_WORDS
    try:
        if isinstance(value, bool):  # TOML true/false for a number key
            raise ValueError
        if kind in (int, float) and not math.isfinite(float(value)):
            raise ValueError
        if key in FRACTIONAL_KEYS:  # whole numbers stay ints (config.json keeps 1, not 1.0)
            number = float(value)
            return int(number) if number.is_integer() else number
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind_name = "number" if key in FRACTIONAL_KEYS else kind.__name__
        raise ValueError(f"{key}={value!r} is not a valid {kind_name} (finite, not true/false)") from None


def _check(cond: bool, key: str, value: Any, valid: str) -> None:
    if not cond:
        raise ValueError(f"invalid {key}={value!r}; valid: {valid}")


def _check_dp(raw: dict[str, Any]) -> None:
    """Validate the ``dp-*`` keys (privacy-critical: fail at load, not mid-run)."""
    _check(raw["dp"] in DP_MODES, "dp", raw["dp"], ", ".join(DP_MODES))
    _check(raw["dp-noise"] >= 0, "dp-noise", raw["dp-noise"], ">= 0 (0: calibrate from dp-target-epsilon)")
    _check(raw["dp-target-epsilon"] >= 0, "dp-target-epsilon", raw["dp-target-epsilon"], ">= 0 (0: no budget)")
    _check(raw["dp-max-grad-norm"] > 0, "dp-max-grad-norm", raw["dp-max-grad-norm"], "> 0")
    _check(0 < raw["dp-delta"] < 1, "dp-delta", raw["dp-delta"], "0 < delta < 1")
    _check(raw["dp-accountant"] in ACCOUNTANTS, "dp-accountant", raw["dp-accountant"], ", ".join(ACCOUNTANTS))
    _check(raw["dp-clipping"] in DP_CLIPPING, "dp-clipping", raw["dp-clipping"], ", ".join(DP_CLIPPING))
    _check(
        raw["dp-clipping-side"] in DP_CLIPPING_SIDES,
        "dp-clipping-side", raw["dp-clipping-side"], ", ".join(DP_CLIPPING_SIDES),
    )
    _check(raw["dp-clipping-norm"] > 0, "dp-clipping-norm", raw["dp-clipping-norm"], "> 0")
    if raw["dp"] != "none" and raw["dp-noise"] == 0 and raw["dp-target-epsilon"] == 0:
        raise ValueError(f"dp={raw['dp']} needs dp-noise > 0 or dp-target-epsilon > 0")
    if raw["dp"] == "client" and raw["dp-accountant"] != "rdp":
        raise ValueError(
            f"invalid dp-accountant={raw['dp-accountant']!r} with dp=client; valid: rdp"
        )
    if raw["dp"] == "client" and raw["strategy"] not in CLIENT_DP_STRATEGIES:
        raise ValueError(
            f"strategy {raw['strategy']!r} does not work with dp=client: its noise and epsilon "
            "assume the release is the plain mean of the clipped updates (a median or Krum moves "
            "up to 3x further for one client; a server optimizer's momentum replays un-noised "
            f"past means); strategies that work with dp=client: {', '.join(CLIENT_DP_STRATEGIES)}"
        )
    compressed = raw["compression"] != "none" or raw["compression-down"] != "none"
    if raw["dp"] == "client" and raw["dp-clipping-side"] == "client" and compressed:
        raise ValueError(
            "dp-clipping-side=client clips the plain update on the client and cannot be "
            "combined with compression; use dp-clipping-side=server"
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


def parse_run_config(mapping: Mapping[str, Any]) -> RunConfig:
    """Validate a run-config mapping (defaults filled in); ``ValueError`` names the key."""
    unknown = sorted(set(mapping) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown run-config key(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}"
        )
    raw = {k: _coerce(k, mapping.get(k, v), v) for k, v in DEFAULTS.items()}
    task = get_task(raw["task"])
    raw["dataset"] = task.resolve_dataset(raw["dataset"])
    raw["partition"] = str(parse_partition(raw["partition"]))
    for key in ("lr", "batch-size"):  # 0: the task's own default
        if raw[key] == 0:
            raw[key] = type(DEFAULTS[key])(task.train_defaults[key])
    _check(raw["num-server-rounds"] >= 1, "num-server-rounds", raw["num-server-rounds"], ">= 1")
    _check(0 < raw["fraction-train"] <= 1, "fraction-train", raw["fraction-train"], "0 < f <= 1")
    _check(0 <= raw["fraction-evaluate"] <= 1, "fraction-evaluate", raw["fraction-evaluate"], "0 <= f <= 1")
    for key in ("min-train-nodes", "min-available-nodes", "batch-size"):
        _check(raw[key] >= 1, key, raw[key], ">= 1")
    _check(raw["local-epochs"] > 0, "local-epochs", raw["local-epochs"], "> 0 (fractions such as 0.5 allowed)")
    for key in ("lr", "round-timeout", "server-lr", "server-adaptive-lr"):
        _check(raw[key] > 0, key, raw[key], "> 0")
    for key in ("momentum", "server-momentum"):
        _check(0 <= raw[key] < 1, key, raw[key], "0 <= m < 1")
    _check(raw["weight-decay"] >= 0, "weight-decay", raw["weight-decay"], ">= 0")
    _check_logit_adjustment(raw, task)
    _check(raw["optimizer"] in OPTIMIZERS, "optimizer", raw["optimizer"], ", ".join(OPTIMIZERS))
    _check(raw["lr-schedule"] in LR_SCHEDULES, "lr-schedule", raw["lr-schedule"], ", ".join(LR_SCHEDULES))
    if raw["optimizer"] != "sgd" and raw["dp"] == "sample":
        raise ValueError(
            f"optimizer={raw['optimizer']} is not supported with dp=sample "
            "(DP-SGD trains with SGD); valid: sgd"
        )
    _check(raw["proximal-mu"] >= 0, "proximal-mu", raw["proximal-mu"], ">= 0")
    _check(raw["num-malicious"] >= 0, "num-malicious", raw["num-malicious"], ">= 0")
    _check(0 <= raw["trimmed-beta"] < 0.5, "trimmed-beta", raw["trimmed-beta"], "0 <= beta < 0.5")
    _check(raw["qfedavg-q"] >= 0, "qfedavg-q", raw["qfedavg-q"], ">= 0")
    _check(0 <= raw["seed"] < 2**63, "seed", raw["seed"], "0 <= seed < 2**63")
    _check(raw["image-size"] in IMAGE_SIZES, "image-size", raw["image-size"], ", ".join(map(str, IMAGE_SIZES)))
    _check(raw["num-points"] >= 1, "num-points", raw["num-points"], ">= 1")
    _check(
        raw["pointnet-transforms"] in POINTNET_TRANSFORMS,
        "pointnet-transforms", raw["pointnet-transforms"], ", ".join(POINTNET_TRANSFORMS),
    )
    for key, norm_task in NORM_KEYS.items():
        _check(raw[key] in NORMS, key, raw[key], ", ".join(NORMS))
        if raw[key] == "batch" and raw["dp"] == "sample" and raw["task"] == norm_task:
            raise ValueError(
                f"{key}=batch does not work with dp=sample: BatchNorm mixes the examples of a "
                "batch, so Opacus cannot clip each example's gradient; valid with dp=sample: group"
            )
    _check(
        0 <= raw["augment-rotation"] <= 180,
        "augment-rotation", raw["augment-rotation"], "0 <= degrees <= 180",
    )
    _check(raw["model-width"] > 0, "model-width", raw["model-width"], "> 0")
    _check(raw["mnist-model"] in MNIST_MODELS, "mnist-model", raw["mnist-model"], ", ".join(MNIST_MODELS))
    raw["compression"] = str(parse_spec(raw["compression"]))
    raw["compression-down"] = str(parse_down_spec(raw["compression-down"]))
    _check_dp(raw)
    for key in ("fail-rate", "straggler-rate", "attack-fraction"):
        _check(0 <= raw[key] <= 1, key, raw[key], "0 <= p <= 1")
    _check(raw["straggler-delay"] >= 0, "straggler-delay", raw["straggler-delay"], ">= 0 seconds")
    _check(raw["attack"] in ATTACKS, "attack", raw["attack"], ", ".join(ATTACKS))
    _check(raw["attack-scale"] > 0, "attack-scale", raw["attack-scale"], "> 0")
    _check(raw["he-clip"] > 0, "he-clip", raw["he-clip"], "> 0")
    _check(raw["he-pack"] in PACKINGS, "he-pack", raw["he-pack"], ", ".join(map(str, PACKINGS)))
    _check(raw["he-scheme"] in SCHEMES, "he-scheme", raw["he-scheme"], ", ".join(SCHEMES))
    packing = packing_error(raw["he-scheme"], raw["he-pack"])
    if packing:
        raise ValueError(f"invalid he-pack={raw['he-pack']} with he-scheme={raw['he-scheme']}; {packing}")
    raw["best-metric"] = resolve_best_metric(raw["best-metric"], task.selectable_metrics(), he=raw["he"])
    if raw["he"]:
        check_he_combination(raw)
    return RunConfig(**{k.replace("-", "_"): v for k, v in raw.items()})


def _check_logit_adjustment(raw: Mapping[str, Any], task: Task) -> None:
    """``logit-adjustment`` is a tau >= 0, for single-label data and training without DP-SGD."""
    tau = raw["logit-adjustment"]
    _check(tau >= 0, "logit-adjustment", tau, ">= 0 (0: off; 1: the balanced softmax)")
    if not tau:
        return
    if task.multi_label(raw["dataset"]):
        raise ValueError(
            f"logit-adjustment={tau:g} does not work with {raw['dataset']}: it shifts a softmax by "
            "the log of the client's class prior, and this data set is multi-label; valid: 0"
        )
    if raw["dp"] == "sample":
        raise ValueError(
            f"logit-adjustment={tau:g} does not work with dp=sample: the shift is computed from the "
            "client's label counts, which DP-SGD's privacy accounting does not cover; valid with "
            "dp=sample: 0 (dp=client and dp=none allow it)"
        )


def check_he_combination(raw: Mapping[str, Any]) -> None:
    """``ValueError`` for settings that encrypted aggregation cannot honour."""
    if raw["strategy"] not in HE_STRATEGIES:
        raise ValueError(
            f"strategy {raw['strategy']!r} does not work with --he: the server only adds "
            "ciphertexts, so it can compute a weighted mean but not a median, trimmed mean, "
            "Krum score or server-side optimizer step; strategies that work with --he: "
            + ", ".join(HE_STRATEGIES)
        )
    check_he(raw["compression"], he=True)
    if raw.get("compression-down", "none") != "none":
        raise ValueError(
            f"compression-down={raw['compression-down']} does not work with --he: the global model "
            "goes down as ciphertexts the server cannot decode or re-encode; valid with --he: none"
        )
    if raw.get("dp") == "client":
        raise ValueError(
            "--dp client does not work with --he: the server would have to clip or noise "
            "updates it cannot read; use --dp sample with --he"
        )
    if raw["fraction-evaluate"] <= 0:
        raise ValueError(
            "--he needs federated evaluation (the server cannot decrypt the model): "
            "set fraction-evaluate > 0"
        )
