"""The client's side of SecAgg+ (:mod:`strategies.secagg` is the server's).

The round's secrets live in the node's ``Context.state`` under :data:`STATE_KEY`
between the four exchanges, and never reach the disk (client/state.py leaves the
record out). :func:`setup` makes two key pairs; :func:`share_keys` splits a fresh
mask seed and the mask key into Shamir shares and seals one of each for every other
client; :func:`masked_update` (called by the train handler) opens the shares relayed
to this client and masks its quantized, weighted update; :func:`unmask` hands the
server, for each client it names, the share of the mask seed (survivor) or of the
mask key (dropped), never both for the same client.
"""

from __future__ import annotations

import os
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from flwr.supercore.differential_privacy import clip_inputs_inplace

from fedloom.client.compress import encode_update
from fedloom.compression.flat import flatten, layout_of, unflatten
from fedloom.compression.pipeline import decode
from fedloom.compression.sparse import randk_indices
from fedloom.compression.spec import Chain, CodecContext
from fedloom.privacy import secagg as sa
from fedloom.protocol import secagg as P
from fedloom.protocol.records import record_payload

STATE_KEY = "secagg"
_STAGES = ("setup", "share-keys", "masked", "unmask")


def _state(context: Context) -> ConfigRecord:
    if STATE_KEY not in context.state.config_records:
        raise ValueError("secure aggregation message before this round's setup")
    return context.state.config_records[STATE_KEY]


def _expect(state: ConfigRecord, msg_round: object, stage: str) -> None:
    """The message belongs to this round and follows the stage done last."""
    if state.get(P.ROUND) != msg_round:
        raise ValueError(f"secure aggregation message for round {msg_round!r}, but this round is "
                         f"{state.get(P.ROUND)!r}")
    done = str(state.get("stage"))
    if _STAGES.index(stage) != _STAGES.index(done) + 1:
        raise ValueError(f"secure aggregation stage {stage} after {done}")


def _reply(msg: Message, values: dict) -> Message:
    return Message(content=RecordDict({P.RECORD: ConfigRecord(values)}), reply_to=msg)


def setup(msg: Message, context: Context, *, min_threshold: float = 0.0, noise: bool = False) -> Message:
    """Round 0: keep the round's parameters, answer with two fresh public keys.

    ``min_threshold`` (the client's own ``secagg-threshold``) and ``noise`` (the client's
    run asks for distributed DP) guard against a server that asks for fewer shares to
    rebuild a secret, or for no noise, than the run was configured with."""
    config = msg.content.config_records[P.RECORD]
    if noise and not float(cast(float, config[P.NOISE_STD])) > 0:
        raise ValueError("the run asks for distributed DP noise, but the server set none")
    sk1, pk1 = sa.new_key_pair()
    sk2, pk2 = sa.new_key_pair()
    kept = (P.ROUND, P.THRESHOLD, P.NUM_CLIENTS, P.BITS, P.CLIP, P.MOD_BITS, P.EQUAL_WEIGHTS, P.NOISE_STD)
    context.state.config_records[STATE_KEY] = ConfigRecord({
        **{k: config[k] for k in kept}, "stage": "setup", "node": msg.metadata.dst_node_id,
        "sk1": sk1, "sk2": sk2, P.PK1: pk1, P.PK2: pk2, "min-threshold": float(min_threshold),
    })
    return _reply(msg, {P.PK1: pk1, P.PK2: pk2})


def share_keys(msg: Message, context: Context) -> Message:
    """Round 1: check the keys the server relays, seal shares of the mask seed and the
    mask key for every other client."""
    config = msg.content.config_records[P.RECORD]
    state = _state(context)
    _expect(state, config.get(P.ROUND), "share-keys")
    me = int(cast(int, state["node"]))
    nodes = [int(n) for n in cast(list, config[P.NODE_IDS])]
    pk1s, pk2s = cast(list, config[P.PK1S]), cast(list, config[P.PK2S])
    threshold = int(cast(int, state[P.THRESHOLD]))
    if len(nodes) < threshold:
        raise ValueError(f"{len(nodes)} clients shared keys, fewer than the threshold {threshold}")
    floor = float(cast(float, state["min-threshold"]))
    if threshold < 2 or (floor and threshold < sa.threshold_count(floor, len(nodes))):
        raise ValueError(f"the server asks for {threshold} shares of {len(nodes)} to rebuild a secret, "
                         f"fewer than secagg-threshold={floor:g} allows")
    if len(set(pk1s) | set(pk2s)) != 2 * len(nodes) or len(set(nodes)) != len(nodes):
        raise ValueError("the relayed public keys are not distinct")
    if me not in nodes or (pk1s[nodes.index(me)], pk2s[nodes.index(me)]) != (state[P.PK1], state[P.PK2]):
        raise ValueError("the server relayed this client's public keys wrongly")
    seed = os.urandom(32)
    seed_shares = sa.create_shares(seed, threshold, len(nodes))
    sk_shares = sa.create_shares(cast(bytes, state["sk1"]), threshold, len(nodes))
    dsts, ctxts = [], []
    for i, node in enumerate(nodes):
        if node == me:
            continue
        key = sa.pair_key(cast(bytes, state["sk2"]), pk2s[i])
        dsts.append(node)
        ctxts.append(sa.seal_shares(key, me, node, seed_shares[i], sk_shares[i]))
    mine = nodes.index(me)
    state.update({
        "stage": "share-keys", "seed": seed, P.NODE_IDS: nodes, P.PK1S: pk1s, P.PK2S: pk2s,
        "seed-share-of": [me], "seed-shares": [seed_shares[mine]],
        "sk-share-of": [me], "sk-shares": [sk_shares[mine]],
    })
    return _reply(msg, {P.DESTINATIONS: dsts, P.CIPHERTEXTS: ctxts})


def masked_update(msg: Message, context: Context, update: np.ndarray, weight: int) -> ArrayRecord:
    """Round 2: open the shares relayed to this client, then mask ``update`` (the flat
    update, already clipped and noised where DP asks for it) quantized and weighted."""
    config = msg.content.config_records[P.RECORD]
    state = _state(context)
    _expect(state, config.get(P.ROUND), "masked")
    me = int(cast(int, state["node"]))
    nodes, pk1s, pk2s = cast(list, state[P.NODE_IDS]), cast(list, state[P.PK1S]), cast(list, state[P.PK2S])
    sources = [int(s) for s in cast(list, config[P.SOURCES])]
    ctxts = cast(list, config[P.CIPHERTEXTS])
    threshold = int(cast(int, state[P.THRESHOLD]))
    if len(sources) + 1 < threshold or len(set(sources)) != len(sources) or not set(sources) <= set(nodes) - {me}:
        raise ValueError(f"relayed shares from {sources}: need distinct other clients of the round, "
                         f"at least {threshold - 1}")
    seed_of, seed_shares = list(cast(list, state["seed-share-of"])), list(cast(list, state["seed-shares"]))
    sk_of, sk_shares = list(cast(list, state["sk-share-of"])), list(cast(list, state["sk-shares"]))
    pair_seeds = {}
    for src, ctxt in zip(sources, ctxts, strict=True):
        i = nodes.index(src)
        seed_share, sk_share = sa.open_shares(sa.pair_key(cast(bytes, state["sk2"]), pk2s[i]), src, me, ctxt)
        seed_of.append(src)
        seed_shares.append(seed_share)
        sk_of.append(src)
        sk_shares.append(sk_share)
        pair_seeds[src] = sa.pair_key(cast(bytes, state["sk1"]), pk1s[i])
    bits, clip = int(cast(int, state[P.BITS])), float(cast(float, state[P.CLIP]))
    noise_std = float(cast(float, state[P.NOISE_STD]))
    if noise_std > 0:  # distributed DP: this client's share of the Gaussian noise
        update = update + np.random.default_rng(np.frombuffer(os.urandom(32), np.uint32)).normal(0.0, noise_std, update.size)
    quantized = sa.quantize_update(update, bits=bits, clip=clip)
    mod_bits = int(cast(int, state[P.MOD_BITS]))
    masked = sa.masked_upload(
        quantized, 1 if state[P.EQUAL_WEIGHTS] else weight, own_seed=cast(bytes, state["seed"]),
        pair_seeds=pair_seeds, node_id=me, mod_bits=mod_bits,
    )
    state.update({"stage": "masked", "seed-share-of": seed_of, "seed-shares": seed_shares,
                  "sk-share-of": sk_of, "sk-shares": sk_shares})
    return ArrayRecord({P.MASKED: Array(masked.astype(sa.wire_dtype(mod_bits)))})


def unmask(msg: Message, context: Context) -> Message:
    """Round 3: the shares that remove the masks; refuses to name a client both alive
    and dropped (its update would be exposed), or fewer survivors than the threshold."""
    config = msg.content.config_records[P.RECORD]
    state = _state(context)
    _expect(state, config.get(P.ROUND), "unmask")
    active, dead = [int(n) for n in cast(list, config[P.ACTIVE])], [int(n) for n in cast(list, config[P.DEAD])]
    threshold = int(cast(int, state[P.THRESHOLD]))
    if set(active) & set(dead) or len(set(active)) != len(active) or len(set(dead)) != len(dead):
        raise ValueError("the server named a client both alive and dropped")
    if len(active) < threshold:
        raise ValueError(f"{len(active)} survivors, fewer than the threshold {threshold}: no shares")
    seed_of, sk_of = cast(list, state["seed-share-of"]), cast(list, state["sk-share-of"])
    seed_shares, sk_shares = cast(list, state["seed-shares"]), cast(list, state["sk-shares"])
    owners, shares = [], []
    for node in active:
        if node in seed_of:
            owners.append(node)
            shares.append(seed_shares[seed_of.index(node)])
    for node in dead:
        if node in sk_of:
            owners.append(node)
            shares.append(sk_shares[sk_of.index(node)])
    del context.state.config_records[STATE_KEY]  # one unmasking per round
    return _reply(msg, {P.NODE_IDS: owners, P.SHARES: shares})


def upload_vector(
    update: np.ndarray, *, clipping_norm: float = 0.0, up: Chain | None = None,
    start: dict[str, np.ndarray] | None = None, state: RecordDict | None = None, seed: int = 0,
) -> np.ndarray:
    """What a client masks: its flat update, clipped to L2 norm ``clipping_norm`` first when
    client-side DP asks (Flower's ``clip_inputs_inplace``), then with randk (``up``) the
    round's shared coordinates, error feedback kept in ``state`` (client/compress.py)."""
    update = np.asarray(update, np.float32).copy()
    if clipping_norm > 0:
        clip_inputs_inplace([update], clipping_norm)
    if up is None or up.is_none:
        return update
    assert start is not None and state is not None
    local = unflatten(flatten(start) + update, start)
    payload = record_payload(encode_update(up, start, local, state=state, seed=seed,
                                           rng=np.random.default_rng(seed)))
    assert up.transform is not None and up.transform.param is not None
    sent = decode(up, payload, CodecContext(layout_of(start), seed=seed))
    return sent[randk_indices(sent.size, float(up.transform.param), seed)]
