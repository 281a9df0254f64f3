"""The client's side of the compression stage: decode the download, encode the update.

Error-feedback residuals persist across rounds in the client's ``Context.state``
(record :data:`STATE_KEY`); this module is the only one that reads or writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.logger import log

from fedloom.compression.exact import join_exact, split_exact
from fedloom.compression.flat import flatten, layout_of, unflatten
from fedloom.compression.pipeline import decode, encode_with_feedback
from fedloom.compression.spec import Chain, CodecContext
from fedloom.protocol.records import payload_record, record_payload

STATE_KEY = "compression"
RESIDUAL_KEY = "residual"


def received_state(
    arrays: ArrayRecord, like: Mapping[str, torch.Tensor], down: Chain
) -> dict[str, torch.Tensor]:
    """The global model as a state dict, decoding a compressed download against ``like``."""
    if down.is_none:
        return arrays.to_torch_state_dict()
    ref = {k: v.detach().cpu().numpy() for k, v in like.items()}
    coded, exact = split_exact(ref)  # BatchNorm statistics ride exact beside the payload
    vec = decode(down, record_payload(arrays, exact), CodecContext(layout_of(coded)))
    sent_exact = {k: arrays[k].numpy().copy() for k in exact}
    return {k: torch.from_numpy(v) for k, v in join_exact(ref, unflatten(vec, coded), sent_exact).items()}


def load_residual(state: RecordDict, size: int) -> np.ndarray | None:
    """The residual carried from earlier rounds, if any and of the right size."""
    record = state.get(STATE_KEY)
    if not isinstance(record, ArrayRecord) or RESIDUAL_KEY not in record:
        return None
    residual = record[RESIDUAL_KEY].numpy()
    return residual if residual.size == size else None


def encode_update(
    up: Chain,
    start: Mapping[str, np.ndarray],
    local: Mapping[str, np.ndarray],
    *,
    state: RecordDict,
    seed: int,
    rng: np.random.Generator,
) -> ArrayRecord:
    """The upload record for update ``local - start``; keeps the residual in ``state``."""
    update = flatten(local) - flatten(start)
    ctx = CodecContext(layout_of(start), seed=seed, rng=rng)
    payload, residual = encode_with_feedback(up, update, load_residual(state, update.size), ctx)
    if residual is not None and np.isfinite(residual).all():
        state[STATE_KEY] = ArrayRecord({RESIDUAL_KEY: Array(residual)})
    elif residual is not None:  # a NaN kept here would spoil every later upload
        log(WARNING, "the update has non-finite values (did training diverge?): the server "
            "will drop it; the error-feedback residual of the last round is kept")
    return payload_record(payload)
