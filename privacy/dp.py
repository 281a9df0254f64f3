"""Sample-level DP: Opacus DP-SGD on a client, one round at a time (Abadi et al. 2016).

Every round wraps a *fresh copy* of the plain model with ``make_private`` (so
hooks never pile up on a reused module), trains it with Poisson sampling, and
copies the unwrapped weights back into the plain model: no ``_module.`` key
ever leaves this module. The accountant's history comes in and goes out as a
:class:`~privacy.accounting.ClientAccount`, so the epsilon is cumulative over
every round the client took part in. Opacus is imported lazily.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from fedloom.tasks.base import DataSplit, Task
from fedloom.tasks.head import trainable
from fedloom.tasks.training import make_optimizer, seeded_torch

from .secure_noise import SecureGaussian
from .accounting import (
    ClientAccount,
    calibrate_noise,
    check_accountant,
    check_delta,
    poisson_plan,
)


class DPModelError(ValueError):
    """The task's model has layers Opacus can neither handle nor replace."""


class DPLossError(ValueError):
    """The task's loss cannot give one loss per example, so DP-SGD cannot clip per example."""


def make_dp_ready(model: nn.Module) -> nn.Module:
    """``model`` if Opacus can compute its per-sample gradients, else a fixed copy.

    Fixable layers (BatchNorm -> GroupNorm) are replaced with a warning; anything
    else raises :class:`DPModelError` naming the offending layers. Server and
    clients call this on the same freshly built model, so both hold the same
    architecture.
    """
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    def problems(module: nn.Module) -> list[Exception]:
        return [
            *ModuleValidator.validate(module, strict=False),
            *GradSampleModule.validate(module, strict=False),
        ]

    model.train()
    if not problems(model):
        return model
    fixed = ModuleValidator.fix(model)
    remaining = problems(fixed)
    if remaining:
        raise DPModelError(
            f"model {type(model).__name__} cannot be trained with Opacus DP-SGD and has no "
            f"automatic fix: {'; '.join(str(e).split('. ')[0] for e in remaining)}"
        )
    after = dict(fixed.named_modules())
    replaced = [
        f"{name} ({type(old).__name__} -> {type(after[name]).__name__})"
        for name, old in model.named_modules()
        if name in after and type(after[name]) is not type(old) and name
    ]
    warnings.warn(
        f"DP-SGD: replaced layers of {type(model).__name__} Opacus can not train: "
        + ", ".join(replaced),
        stacklevel=2,
    )
    return fixed


def device_generator(device: str | torch.device, seed: int) -> torch.Generator:
    """A torch generator on ``device``: torch only draws on a device from a generator there."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@contextlib.contextmanager
def opacus_noise_source() -> Iterator[None]:
    """While active, an Opacus optimizer whose generator is a :class:`SecureGaussian`
    draws its noise from it (on the gradients' device); other generators as before.

    Opacus's optimizers call the module function ``_generate_noise`` (the plain and the
    ghost-clipping ones each import it), so both names are swapped for the block.
    """
    from opacus.optimizers import optimizer as plain
    from opacus.optimizers import optimizer_fast_gradient_clipping as ghost

    original = plain._generate_noise

    def generate(std: float, reference: torch.Tensor, generator: Any = None, secure_mode: bool = False) -> torch.Tensor:
        if isinstance(generator, SecureGaussian):
            return generator.noise_like(std, reference)
        return original(std, reference, generator, secure_mode)

    plain._generate_noise = ghost._generate_noise = generate
    try:
        yield
    finally:
        plain._generate_noise = ghost._generate_noise = original


def check_per_example_loss(
    loss_fn: nn.Module, model: nn.Module, split: DataSplit, device: str = "cpu"
) -> None:
    """Raise :class:`DPLossError` unless ``loss_fn`` honours ``reduction="none"``.

    Opacus' ghost clipping sets the criterion's ``reduction`` to "none" and clips
    each example's gradient by its own loss. A loss that ignores the setting and
    returns the batch mean would clip the batch's gradient instead, and no single
    example's influence would be bounded: the privacy guarantee would not hold,
    silently. Probed on up to two examples, without gradients.
    """
    name = type(loss_fn).__name__
    reduction = getattr(loss_fn, "reduction", None)
    if reduction not in ("mean", "sum"):
        raise DPLossError(
            f"DP-SGD needs a loss with a torch-style reduction attribute; {name}.reduction is "
            f"{reduction!r}; valid: mean, sum (and it must honour none: one loss per example)"
        )
    n = min(2, len(split))
    if n == 0:
        return
    x = torch.from_numpy(split.x[:n]).to(device)
    y = torch.as_tensor(split.y[:n]).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
            # torch types Module.__setattr__'s value as Tensor | Module; any attribute works.
            loss_fn.reduction = "none"  # type: ignore[assignment]
            per_example = loss_fn(logits, y)
    finally:
        loss_fn.reduction = reduction
        model.train(was_training)
    if tuple(per_example.shape) != (n,):
        raise DPLossError(
            f"DP-SGD needs one loss per example: {name} with reduction='none' returned shape "
            f"{tuple(per_example.shape)} for {n} examples; valid: ({n},)"
        )


@dataclass(frozen=True, kw_only=True)
class SampleDPSettings:
    """DP-SGD settings of a run.

    ``noise_multiplier`` 0 means: calibrate it so that ``planned_rounds`` rounds
    (a client taking part in every one) reach ``target_epsilon``. A positive
    ``target_epsilon`` is also a budget: a round that would exceed it is refused.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    target_epsilon: float
    planned_rounds: int
    #: Draw DP-SGD's noise and Poisson batches from the run seed (reproducible
    #: simulations) instead of the OS's CSPRNG: anyone who knows the seed can then
    #: regenerate the noise, so the run is NOT private against them.
    seeded_noise: bool = False

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ValueError(f"invalid noise multiplier={self.noise_multiplier!r}; valid: >= 0")
        if self.max_grad_norm <= 0:
            raise ValueError(f"invalid max grad norm={self.max_grad_norm!r}; valid: > 0")
        if self.target_epsilon < 0:
            raise ValueError(f"invalid target epsilon={self.target_epsilon!r}; valid: >= 0")
        if self.noise_multiplier == 0 and self.target_epsilon == 0:
            raise ValueError("DP-SGD needs a noise multiplier > 0 or a target epsilon > 0")
        if self.planned_rounds < 1:
            raise ValueError(f"invalid planned rounds={self.planned_rounds!r}; valid: >= 1")
        check_delta(self.delta)
        check_accountant(self.accountant)

    def noise_for(self, *, sample_rate: float, steps_per_round: int) -> float:
        """The noise multiplier a client with this sample rate and round length uses."""
        if self.noise_multiplier > 0:
            return self.noise_multiplier
        return _calibrated(
            self.target_epsilon, self.delta, sample_rate,
            self.planned_rounds * steps_per_round, self.accountant,
        )


@lru_cache(maxsize=64)
def _calibrated(target: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    return calibrate_noise(
        target_epsilon=target, delta=delta, sample_rate=rate, steps=steps, accountant=accountant
    )


@dataclass(frozen=True)
class DPRound:
    """What one client round of DP-SGD did."""

    trained: bool
    epsilon: float
    loss: float
    noise_multiplier: float
    steps: int


def train_private(
    model: nn.Module,
    task: Task,
    split: DataSplit,
    *,
    settings: SampleDPSettings,
    account: ClientAccount,
    epochs: float,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
    device: str = "cpu",
    weight_decay: float = 0.0,
) -> DPRound:
    """One round of DP-SGD on ``split``; ``model`` and ``account`` are updated in place.

    With a budget (``settings.target_epsilon``), a round that would take the
    account past it does not train: ``DPRound.trained`` is False and nothing
    changes. Empty Poisson batches still take a (noise-only) step, as the
    analysis assumes. ``weight_decay`` is added after the noise: it depends on the
    weights only, not on the data, so the privacy analysis is unchanged.
    """
    from opacus import PrivacyEngine

    sample_rate, steps = poisson_plan(len(split), batch_size, epochs)
    noise = settings.noise_for(sample_rate=sample_rate, steps_per_round=steps)
    if settings.target_epsilon > 0:
        projected = account.projected(noise_multiplier=noise, sample_rate=sample_rate, steps=steps)
        if projected > settings.target_epsilon:
            return DPRound(False, account.epsilon(), math.nan, noise, 0)
    generator = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model).to(device).train()
    criterion = task.loss_fn()
    check_per_example_loss(criterion, work, split, device)
    # Opacus draws the noise on the parameters' device, so its generator lives there;
    # the Poisson sampler draws on the CPU, where the data loader runs.
    noise_generator: torch.Generator | SecureGaussian
    if settings.seeded_noise:  # reproducible, and predictable to whoever knows the seed
        sampling, noise_generator = generator, device_generator(device, seed + 1)
    else:  # noise from the OS's CSPRNG (Opacus secure_mode's), turned Gaussian on `device`
        sampling = torch.Generator().manual_seed(secrets.randbits(63))
        noise_generator = SecureGaussian()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(split.x), torch.from_numpy(split.y)),
        batch_size=batch_size, generator=sampling,
    )
    engine = PrivacyEngine(accountant=account.accountant)
    engine.accountant.history = list(account.history)
    # Ghost clipping (Li et al. 2022) computes per-sample gradient norms without
    # materialising per-sample gradients: same clipping and noise, ~5x faster on CPU.
    private, optimizer, criterion, dp_loader = engine.make_private(
        module=work,
        optimizer=make_optimizer(trainable(work), "sgd", lr=lr, momentum=momentum, weight_decay=weight_decay),
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_generator,
        grad_sample_mode="ghost",
    )
    total, count, done = 0.0, 0, 0
    with seeded_torch(seed + 2, device), opacus_noise_source():  # dropout; the noise
        while done < steps:  # whole passes of the Poisson loader, the last one cut at ``steps``
            for xb, yb in itertools.islice(dp_loader, steps - done):
                done += 1
                optimizer.zero_grad()
                if len(yb):  # an empty Poisson batch still steps: Opacus adds the noise
                    xb = task.augment(xb, generator)
                loss = criterion(private(xb.to(device)), yb.to(device))
                loss.backward()
                optimizer.step()
                if len(yb):
                    total += float(loss.detach()) * len(yb)
                    count += len(yb)
    model.load_state_dict(private._module.state_dict())
    taken = sum(s for *_, s in engine.accountant.history) - sum(s for *_, s in account.history)
    if taken != steps:
        raise RuntimeError(f"DP-SGD took {taken} accounted steps, planned {steps}")
    account.history = [(float(z), float(q), int(s)) for z, q, s in engine.accountant.history]
    return DPRound(True, account.epsilon(), total / max(count, 1), noise, steps)
