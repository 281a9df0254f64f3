"""Every run-config key, declared once: the fields of :class:`RunConfig`.

To add a key, add one field here, in its section's block: the name in snake case (the
key is its kebab-case spelling), the type, then ``key(default, help, section, ...)``
with ``choices=`` or ``check=`` for its valid values and ``flag="="`` for a run_sim.py
flag. Then run ``python -m fedloom.config.reference``: it rewrites pyproject's
``[tool.flwr.app.config]`` table and the README reference (tests fail until it has).
Rules that tie keys together go in :mod:`fedloom.config.load`; a default worked out at
load time is ``"auto"`` plus ``auto="what it means"`` and a line in ``resolve_derived``.
"""

# No ``from __future__ import annotations``: the schema reads the field types at run time.

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fedloom.compression.spec import Chain, codec_usages, parse_down_spec, parse_spec
from fedloom.privacy.accounting import ACCOUNTANTS
from fedloom.privacy.dp import SampleDPSettings
from fedloom.privacy.he_profiles import PACKINGS, SCHEMES
from fedloom.privacy.secagg import MAX_BITS
from fedloom.tasks.base import TaskOptions
from fedloom.tasks.batchnorm import NORMS
from fedloom.tasks.partition import VALID_PARTITIONS, PartitionSpec, parse_partition
from fedloom.tasks.registry import task_names
from fedloom.tasks.training import LR_SCHEDULES, OPTIMIZERS

from .schema import check, key


class DPMode(StrEnum):
    """The ``dp`` key: no DP, DP-SGD on every client, or client-level DP-FedAvg."""

    NONE = "none"
    SAMPLE = "sample"
    CLIENT = "client"


def _dp_mode(value: str) -> DPMode:
    return DPMode(value)


#: Byzantine behaviours a client can simulate (client/attacks.py implements them).
ATTACKS = ("none", "sign-flip", "gaussian", "scaled")
IMAGE_SIZES = (28, 64, 128, 224)
POINTNET_TRANSFORMS = ("none", "input", "feature", "both")
MNIST_MODELS = ("mcmahan", "dp-cnn")
DP_CLIPPING = ("fixed", "adaptive")
DP_CLIPPING_SIDES = ("server", "client")

def valid_ray_address(address: str) -> bool:
    """Whether ``address`` is a ``ray-address``: "" (none), ``auto`` or ``HOST:PORT``."""
    if address in ("", "auto"):
        return True
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


POSITIVE = check(lambda v: v > 0, "> 0")
#: What ``auto`` means for the keys whose default is the task's (``Task.defaults``).
TASK_AUTO = "the task's best measured value (README: Per-task defaults)"
NON_NEGATIVE = check(lambda v: v >= 0, ">= 0")
AT_LEAST_ONE = check(lambda v: v >= 1, ">= 1")
PROBABILITY = check(lambda v: 0 <= v <= 1, "0 <= p <= 1")
MOMENTUM = check(lambda v: 0 <= v < 1, "0 <= m < 1")


@dataclass(frozen=True)
class RunConfig:
    """Typed, validated run configuration. Field ``x_y`` is run-config key ``x-y``.

    Build it with :func:`fedloom.config.parse_run_config`, which fills in defaults,
    resolves ``auto`` values and checks every key.
    """

    # -- run ------------------------------------------------------------------
    task: str = key("digits", "learning task", "run", flag="=")
    dataset: str = key(
        "", "dataset, for tasks that offer several", "run", flag="=", shown_default="the task's first",
    )
    data_dir: str = key("data", "folder with the data files", "run", flag="=")
    num_server_rounds: int = key(10, "federated rounds", "run", flag="rounds", check=AT_LEAST_ONE)
    seed: int = key(
        42, "seed for partitions, init and sampling", "run", flag="=",
        check=check(lambda v: 0 <= v < 2**63, "0 <= seed < 2**63"),
    )
    run_dir: str = key(
        "", "results folder", "run", flag="=", shown_default="runs/<timestamp>-<task>-<strategy>",
    )
    round_timeout: float = key(3600.0, "seconds the server waits for a round's replies", "run", check=POSITIVE)
    resume: bool = key(False, "continue the run in run-dir from its checkpoint", "run")
    best_metric: str = key(
        "auto",
        "best.pt + best.json at the best round: auto (val_auc/val_accuracy if the task has a "
        "validation split, else off), none, or a metric key",
        "run",
    )
    # -- clients and sampling -------------------------------------------------
    fraction_train: float = key(
        1.0, "share of clients sampled per round", "sampling", flag="fraction",
        check=check(lambda v: 0 < v <= 1, "0 < f <= 1"),
    )
    fraction_evaluate: float = key(
        "auto", "share of clients that evaluate the global model on their test share", "sampling",
        check=check(lambda v: 0 <= v <= 1, "0 <= f <= 1"),
        auto="1.0 with he (the server cannot evaluate), else 0.0 (the server evaluates centrally)",
    )
    min_train_nodes: int = key(
        "auto", "fewest clients that train in a round", "sampling", check=AT_LEAST_ONE,
        auto="2, or the number of clients when fewer",
    )
    min_available_nodes: int = key(
        "auto", "clients that must be connected before a round starts", "sampling",
        check=AT_LEAST_ONE, auto="the number of clients (run_sim.py), else 2",
    )
    partition: PartitionSpec = key(
        "iid", f"how the training set is split over clients: {VALID_PARTITIONS}", "sampling",
        flag="=", kind="str", parse=parse_partition,
    )
    # -- local training -------------------------------------------------------
    local_epochs: float = key(
        "auto", "local epochs per round; a fraction such as 0.5 trains on a fresh random half of "
        "the client's data each round", "training", flag="=", kind="number",
        check=check(lambda v: v > 0, "> 0 (fractions such as 0.5 allowed)"), auto=TASK_AUTO,
    )
    batch_size: int = key(
        "auto", "local batch size", "training", flag="=", check=AT_LEAST_ONE, auto=TASK_AUTO,
    )
    lr: float = key(
        "auto", "client learning rate", "training", flag="=", check=POSITIVE, auto=TASK_AUTO,
    )
    momentum: float = key(0.9, "local SGD momentum", "training", check=MOMENTUM)
    optimizer: str = key(
        "auto", "local optimizer: sgd (with momentum) or adam (lr = step size)", "training",
        choices=OPTIMIZERS, auto=TASK_AUTO,
    )
    weight_decay: float = key(
        "auto", "local optimizer: L2 penalty coefficient (torch's weight_decay), e.g. 5e-4",
        "training", check=NON_NEGATIVE, auto=TASK_AUTO,
    )
    logit_adjustment: float = key(
        "auto", "local loss: logits + tau * log(client label prior) (1: balanced softmax; not with "
        "dp=sample)", "training",
        check=check(lambda v: v >= 0, ">= 0 (0: off; 1: the balanced softmax)"), auto=TASK_AUTO,
    )
    lr_schedule: str = key(
        "auto", "client lr over the rounds: constant or cosine (lr -> 0 by the last round)",
        "training", choices=LR_SCHEDULES, auto=TASK_AUTO,
    )
    freeze_classifier: bool = key(
        "auto", "FedBABU: keep the last (logits) layer at its random init; clients train the body",
        "training", auto=TASK_AUTO,
    )
    # -- aggregation strategy -------------------------------------------------
    strategy: str = key(
        "fedavg", "aggregation strategy: a registered name (see run_sim.py --help), or "
        "package.module:Class / file.py:Class", "strategy", flag="=",
    )
    proximal_mu: float = key(0.01, "fedprox: weight of the proximal term", "strategy", check=NON_NEGATIVE)
    server_lr: float = key(1.0, "fedavgm: server learning rate", "strategy", check=POSITIVE)
    server_momentum: float = key(0.9, "fedavgm: server momentum", "strategy", check=MOMENTUM)
    server_adaptive_lr: float = key(
        0.01, "fedadam, fedyogi, fedadagrad: server step size (eta)", "strategy", check=POSITIVE,
    )
    num_malicious: int = key(
        0, "krum, multikrum, bulyan: attackers the aggregation tolerates", "strategy",
        check=NON_NEGATIVE,
    )
    trimmed_beta: float = key(
        0.2, "fedtrimmedavg: share cut at each end", "strategy",
        check=check(lambda v: 0 <= v < 0.5, "0 <= beta < 0.5"),
    )
    qfedavg_q: float = key(0.1, "qfedavg: fairness exponent q", "strategy", check=NON_NEGATIVE)
    # -- models and data ------------------------------------------------------
    image_size: int = key(
        28, "medmnist: 28, 64, 128 or 224 px (which npz file is read)", "model", choices=IMAGE_SIZES,
    )
    num_points: int = key(1024, "pointcloud: points per shape", "model", check=AT_LEAST_ONE)
    pointnet_transforms: str = key(
        "auto", "pointcloud: none, input, feature or both T-Nets", "model",
        choices=POINTNET_TRANSFORMS, auto=TASK_AUTO,
    )
    pointnet_norm: str = key(
        "auto", "pointcloud: group (GroupNorm, works with dp=sample) or batch (BatchNorm)",
        "model", choices=NORMS, auto=TASK_AUTO,
    )
    resnet_norm: str = key(
        "auto", "medmnist: the same choice for the ResNet-18 (batch: as MedMNIST v2's reference)",
        "model", choices=NORMS, auto=TASK_AUTO,
    )
    batchnorm_calibration: bool = key(
        True, "models with BatchNorm: clients measure each aggregate's running mean/variance "
        "(not with dp=client or he)", "model",
    )
    augment_rotation: float = key(
        "auto", "pointcloud: train-time rotation about the up axis, max degrees", "model",
        check=check(lambda v: 0 <= v <= 180, "0 <= degrees <= 180"), auto=TASK_AUTO,
    )
    augment_images: bool = key(
        "auto", "medmnist: train-time random horizontal flips and shifts of up to 10%", "model", auto=TASK_AUTO,
    )
    model_width: float = key(
        "auto", "medmnist, pointcloud: channel multiplier (1.0 = published model)", "model",
        check=POSITIVE, auto=TASK_AUTO,
    )
    mnist_model: str = key(
        "auto", "mnist: mcmahan (1.66M-parameter CNN) or dp-cnn (26k, for DP-SGD)", "model",
        choices=MNIST_MODELS, auto=TASK_AUTO,
    )
    # -- compression ----------------------------------------------------------
    compression: Chain = key(
        "none", "upload codec chain: TRANSFORM, QUANTIZER or TRANSFORM+QUANTIZER such as "
        "topk:0.01+qsgd:8", "compression", flag="=", kind="str", parse=parse_spec,
    )
    compression_down: Chain = key(
        "none", "download codec for the global model: none, fp16 or qsgd:BITS", "compression",
        flag="=", kind="str", parse=parse_down_spec,
    )
    # -- differential privacy -------------------------------------------------
    dp: DPMode = key(
        "none", "differential privacy: none, sample (Opacus DP-SGD on every client) or client "
        "(client-level DP-FedAvg with Flower's DP wrappers)", "privacy", flag="=", kind="str",
        choices=tuple(DPMode), parse=_dp_mode,
    )
    dp_noise: float = key(
        0.0, "noise multiplier (sample: per-step gradient noise; client: noise on the "
        "aggregate); 0 = calibrate from dp-target-epsilon", "privacy", flag="=",
        check=check(lambda v: v >= 0, ">= 0 (0: calibrate from dp-target-epsilon)"),
    )
    dp_target_epsilon: float = key(
        0.0, "privacy budget at dp-delta (sample: per client, enforced; client: for the run); "
        "without dp-noise the noise is calibrated to spend it in the run's rounds; 0 = none",
        "privacy", flag="=", check=check(lambda v: v >= 0, ">= 0 (0: no budget)"),
    )
    dp_max_grad_norm: float = key(
        1.0, "sample: per-example gradient clipping bound", "privacy", flag="=", check=POSITIVE,
    )
    dp_delta: float = key(
        1e-5, "delta of the reported (epsilon, delta)", "privacy", flag="=",
        check=check(lambda v: 0 < v < 1, "0 < delta < 1"),
    )
    dp_accountant: str = key(
        "rdp", "sample: Opacus accountant, rdp or prv (client-level is always rdp)", "privacy",
        flag="=", choices=ACCOUNTANTS,
    )
    dp_clipping: str = key(
        "fixed", "client: fixed or adaptive clipping of client updates", "privacy", flag="=",
        choices=DP_CLIPPING,
    )
    dp_clipping_side: str = key(
        "server", "client: clip on the server or on the clients", "privacy", flag="=",
        choices=DP_CLIPPING_SIDES,
    )
    dp_clipping_norm: float = key(
        1.0, "client: update clipping norm (initial norm when adaptive)", "privacy", flag="=",
        check=POSITIVE,
    )
    dp_seeded_noise: bool = key(
        False, "DP noise from the run seed: reproducible, NOT private (anyone knowing the seed removes it)",
        "privacy",
    )
    # -- faults and attacks ---------------------------------------------------
    fail_rate: float = key(
        0.0, "fault injection: PROBABILITY that a client's training raises", "faults", flag="=",
        check=PROBABILITY,
    )
    straggler_rate: float = key(
        0.0, "fault injection: PROBABILITY that a client sleeps", "faults", flag="=",
        check=PROBABILITY,
    )
    straggler_delay: float = key(
        0.0, "seconds a straggler sleeps", "faults", flag="=",
        check=check(lambda v: v >= 0, ">= 0 seconds"),
    )
    attack: str = key(
        "none", "byzantine clients: none, sign-flip, gaussian, scaled", "faults", flag="=",
        choices=ATTACKS,
    )
    attack_fraction: float = key(0.0, "share of clients that attack", "faults", flag="=", check=PROBABILITY)
    attack_scale: float = key(
        4.0, "strength of the attack (see client/attacks.py)", "faults", check=POSITIVE,
    )
    max_num_examples: int = key(
        1_000_000_000, "reply validation: the most num-examples one reply may claim (clients hold "
        "data the server never sees, so this is a bound, not the server's data size)", "faults",
        check=AT_LEAST_ONE,
    )
    # -- homomorphic encryption -----------------------------------------------
    he: bool = key(
        False, "encrypted aggregation: clients send ciphertexts the server can add but not "
        "read (TenSEAL; scheme: he-scheme)", "he", flag="=",
    )
    he_dir: str = key(
        "", "the server's folder: public.ctx + params.json", "he",
        shown_default="run_sim.py: <run-dir>/he",
    )
    he_secret_dir: str = key(
        "", "simulations: the clients' folder with secret.ctx, outside run-dir", "he",
        shown_default="run_sim.py: a new one under ~/.local/share/fedloom/he-keys",
    )
    he_clip: float = key(8.0, "|weight| bound of the fixed-point encoding under he", "he", check=POSITIVE)
    he_pack: int = key(
        1, "values per slot under he: 1 (~15 B/param, ~1e-7) or 2 (~8 B/param, <=1e-3)", "he",
        choices=PACKINGS,
    )
    he_scheme: str = key(
        "bfv", "TenSEAL scheme: bfv (4,096 integer slots per ciphertext, ~15 bytes/parameter) "
        "or ckks (2,048 real slots, ~32 bytes/parameter)", "he", flag="=", choices=SCHEMES,
    )
    # -- secure aggregation ---------------------------------------------------
    secagg: bool = key(
        False, "secure aggregation (SecAgg+): clients send masked updates; the server learns "
        "only their sum", "secagg", flag="=",
    )
    secagg_threshold: float = key(
        0.6, "share of a round's clients (of each neighbourhood) whose key shares unmask the "
        "sum, at least 2", "secagg", check=check(lambda v: 0 < v <= 1, "0 < t <= 1"),
    )
    secagg_bits: int = key(
        16, "quantization under secagg: each update coordinate becomes an integer in 0..2**bits",
        "secagg", check=check(lambda v: 1 <= v <= MAX_BITS, f"1..{MAX_BITS}"),
    )
    secagg_clip: float = key(2.0, "|update coordinate| bound of the quantization under secagg", "secagg",
                             check=POSITIVE)
    secagg_neighbours: int = key(
        0, "SecAgg+: clients each one shares masks and secrets with (0: all others)", "secagg",
        check=check(lambda v: v == 0 or v >= 2, "0 (every other client of the round) or >= 2"),
    )
    # -- simulation on an existing Ray cluster --------------------------------
    ray_address: str = key(
        "", "join the running Ray cluster at auto or HOST:PORT (its head) instead of starting a "
        "local Ray instance; the cluster keeps running afterwards", "cluster", flag="=",
        check=check(lambda v: valid_ray_address(v), "empty (a local Ray instance), auto, or HOST:PORT "
                    "of a Ray cluster's head"),
        shown_default="none: a local Ray instance",
    )
    # -- experiment tracking --------------------------------------------------
    tensorboard: bool = key(
        False, "TensorBoard event files in the results folder (scalars per round, the run config "
        "as hparams)", "tracking", flag="=",
    )

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
        if self.dp is not DPMode.SAMPLE:
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
        """Back to flat kebab-case keys of plain values (what ``config.json`` records)."""
        plain = (str, int, float, bool)
        return {
            f.name.replace("_", "-"): v if type(v) in plain else str(v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }


#: Listing helpers for the docs and flags: registries below config.
LISTED = {"task": task_names, "compression": codec_usages}
