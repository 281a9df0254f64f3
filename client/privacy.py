"""Client side of differential privacy: the Flower glue around :mod:`privacy`.

* :func:`sample_dp_round` loads the client's privacy account from
  ``Context.state``, runs one round of DP-SGD (:func:`privacy.dp.train_private`)
  and stores the account back, so the epsilon it reports is cumulative.
* :func:`private_reply_metrics` keeps a train reply under DP to what the accountant
  covers or what is public (DESIGN.md: every value a client sends is covered).
* :func:`dp_clipping_mod` applies Flower's client-side clipping mod
  (``fixedclipping_mod`` / ``adaptiveclipping_mod``) to train messages when the
  server asks for client-side clipping (``dp=client``, ``dp-clipping-side=client``).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.app.message_type import MessageType
from flwr.app.typing import MetricRecordValues
from torch import nn

from fedloom.config import DPMode
from fedloom.privacy.accounting import ClientAccount
from fedloom.privacy.dp import DPRound, SampleDPSettings, train_private
from fedloom.protocol.keys import DP_EPSILON, DP_EXHAUSTED, NUM_EXAMPLES, NUM_PARTITIONS, PARTITION_ID
from fedloom.tasks.base import DataSplit, Task

from .settings import run_config

#: ``Context.state`` record of the client's privacy account (never sent).
ACCOUNT_KEY = "dp-account"
#: Train-reply metrics sent under DP: the node's partition (set by whoever deploys it,
#: not by its data) and the privacy report. Everything else (``train_loss``, the
#: exact example count, q-FFL's initial loss, a task's extra statistics) is a
#: function of the private data that no epsilon covers, so it stays on the client.
PUBLIC_REPLY_KEYS = frozenset({PARTITION_ID, NUM_PARTITIONS, DP_EPSILON, DP_EXHAUSTED})
#: The aggregation weight every client sends under DP: the exact count of its
#: examples changes when one example is added or removed, which is what DP-SGD's
#: add/remove neighbouring relation hides, and under dp=client it is a statistic of
#: the client's data set. Equal weights are DP-FedAvg's (McMahan et al. 2018).
DP_WEIGHT = 1


def private_reply_metrics(
    metrics: dict[str, float], *, dp: DPMode
) -> dict[str, MetricRecordValues]:
    """``metrics`` as a train reply may carry them under ``dp`` (none: all of them).

    An allow-list, not a block-list: a metric added later stays on the client under
    DP until someone shows the accountant covers it.
    """
    if dp is DPMode.NONE:
        return dict(metrics)
    kept: dict[str, MetricRecordValues] = {k: v for k, v in metrics.items() if k in PUBLIC_REPLY_KEYS}
    kept[NUM_EXAMPLES] = DP_WEIGHT
    return kept


def upload_weight(num_examples: int, *, dp: DPMode) -> int:
    """The weight a client's update carries (and, under HE, multiplies it by)."""
    return num_examples if dp is DPMode.NONE else DP_WEIGHT


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
