"""Client side of differential privacy: the Flower glue around :mod:`privacy`.

* :func:`sample_dp_round` loads the client's privacy account from
  ``Context.state``, runs one round of DP-SGD (:func:`privacy.dp.train_private`)
  and stores the account back, so the epsilon it reports is cumulative.
* :func:`dp_clipping_mod` applies Flower's client-side clipping mod
  (``fixedclipping_mod`` / ``adaptiveclipping_mod``) to train messages when the
  server asks for client-side clipping (``dp=client``, ``dp-clipping-side=client``).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.app.message_type import MessageType
from torch import nn

from fedloom.config import DPMode
from fedloom.privacy.accounting import ClientAccount
from fedloom.privacy.dp import DPRound, SampleDPSettings, train_private
from fedloom.protocol.keys import DP_EPSILON, DP_EXHAUSTED, PARTITION_ID
from fedloom.tasks.base import DataSplit, Task

from .settings import run_config

#: ``Context.state`` record of the client's privacy account (never sent).
ACCOUNT_KEY = "dp-account"


def load_account(state: RecordDict, settings: SampleDPSettings) -> ClientAccount:
    """This client's privacy account from its persistent state (empty on first use)."""
    account = ClientAccount(settings.accountant, settings.delta)
    if ACCOUNT_KEY in state:
        account.load_state_dict(dict(state.config_records[ACCOUNT_KEY]))
    return account


def save_account(state: RecordDict, account: ClientAccount) -> None:
    if account.history:
        state[ACCOUNT_KEY] = ConfigRecord(account.state_dict())


def sample_dp_round(
    model: nn.Module,
    task: Task,
    split: DataSplit,
    *,
    settings: SampleDPSettings,
    state: RecordDict,
    partition_id: int,
    epochs: float,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
    device: str,
    weight_decay: float = 0.0,
) -> tuple[DPRound, dict[str, float]]:
    """One DP-SGD round on ``model``; returns its outcome and the reply's privacy report."""
    account = load_account(state, settings)
    outcome = train_private(
        model, task, split, settings=settings, account=account, epochs=epochs,
        batch_size=batch_size, lr=lr, momentum=momentum, seed=seed, device=device,
        weight_decay=weight_decay,
    )
    if outcome.trained:
        save_account(state, account)
    report = {
        PARTITION_ID: partition_id,
        DP_EPSILON: outcome.epsilon,
        DP_EXHAUSTED: int(not outcome.trained),
    }
    return outcome, report


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's client-side clipping for train messages of a ``dp=client`` run."""
    cfg = run_config(context)
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or cfg.dp is not DPMode.CLIENT
        or cfg.dp_clipping_side != "client"
        or cfg.secagg  # the train handler clips before masking (client/secagg.py)
    ):
        return call_next(msg, context)
    mod = adaptiveclipping_mod if cfg.dp_clipping == "adaptive" else fixedclipping_mod
    return mod(msg, context, call_next)
