"""Encrypted aggregation: key custody, exact sums, sizes, and bad uploads."""

from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedloom.client.app import he_upload_blocks
from fedloom.client.he_client import decrypt_global, encrypt_local
from fedloom.compression.flat import flatten
from fedloom.compression.spec import parse_spec
from fedloom.privacy import he
from fedloom.privacy.he_capacity import is_prime
from fedloom.privacy.he_encoding import value_weights
from fedloom.privacy.fixed_point import decode_mean, encode_weighted, fixed_point_scale, lane_radix, pack, unpack
from fedloom.protocol.keys import HE_BLOCK_WEIGHTS as BLOCK_WEIGHTS_KEY
from fedloom.protocol.records import ciphertext_record
from fedloom.strategies.encrypted import EncryptedFedAvg
from fedloom.tasks.mnist import MnistCNN


def provisioned(tmp_path_factory, name, **options):
    """Keys in two folders: (the clients' folder with secret.ctx, parameters), and the
    server's folder with public.ctx."""
    root = tmp_path_factory.mktemp(name)
    params = he.provision(root / "nodes", root / "server", clip=8.0, max_weight=1000, **options)
    return (root / "nodes", params), root / "server"


@pytest.fixture(scope="module")
def bfv(tmp_path_factory):
    return provisioned(tmp_path_factory, "he")


@pytest.fixture(scope="module")
def keys(bfv):
    return bfv[0]


@pytest.fixture(scope="module")
def server_dir(bfv):
    return bfv[1]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Keys with two values per slot, and the server's folder."""
    return provisioned(tmp_path_factory, "he-packed", values_per_slot=2)


@pytest.fixture(scope="module")
def ckks(tmp_path_factory):
    """CKKS keys (one value per slot), and the server's folder."""
    return provisioned(tmp_path_factory, "he-ckks", scheme="ckks")


@pytest.fixture
def profile(request, keys, server_dir, packed, ckks):
    """(keys, server folder) of the profile named by the test's ``profile`` parameter."""
    return {"bfv": (keys, server_dir), "bfv-packed": packed, "ckks": ckks}[request.param]


def test_batching_prime():
    p = he.batching_prime(40, 4096)
    assert p < 2**40 and p % 8192 == 1 and is_prime(p)
    assert not is_prime(p + 8192 * 0 + 2)


def test_fixed_point_by_hand():
    # plain modulus 2001 -> |sum| < 1000; max weight 10, clip 2 -> scale = 999 // 20 = 49
    assert lane_radix(2001, 1) == 2001
    scale = fixed_point_scale(radix=2001, max_weight=10, clip=2.0)
    assert scale == 49.0
    q = encode_weighted(np.array([0.5, -3.0], np.float32), weight=4, scale=scale, clip=2.0)
    assert q.tolist() == [98, -392]  # 4 * 0.5 * 49, 4 * (-2) * 49
    assert decode_mean(q, total_weight=4, scale=scale).tolist() == [0.5, -2.0]


def test_packing_by_hand_and_sums_without_carries():
    # radix 10: balanced digits in [-5, 5). [1, -2, 2] -> slots [1 + 2*10, -2 + 0*10] = [21, -2].
    assert pack(np.array([1, -2, 2]), lanes=2, radix=10).tolist() == [21, -2]
    assert unpack(np.array([21, -2]), lanes=2, radix=10, count=3).tolist() == [1, -2, 2]
    # Two such clients: lane sums [2, -4, 4] stay in [-5, 5), so the slot sums unpack exactly.
    assert unpack(np.array([42, -4]), lanes=2, radix=10, count=3).tolist() == [2, -4, 4]
    # The real profile: sums of 200 clients' full-headroom values, signed slots below p / 2.
    p = he.batching_prime(48, 4096)
    radix = lane_radix(p, 2)
    assert radix**2 + radix <= p and radix > 2**23
    rng = np.random.default_rng(0)
    values = [rng.integers(-(radix // 2 - 1) // 200, (radix // 2 - 1) // 200, 999) for _ in range(200)]
    total = sum(pack(v, lanes=2, radix=radix) for v in values)
    assert np.abs(total).max() < p // 2
    assert np.array_equal(unpack(total, lanes=2, radix=radix, count=999), sum(values))


@pytest.mark.parametrize("profile", ["bfv", "ckks"], indirect=True)
def test_server_context_cannot_decrypt(profile):
    keys, server_dir = profile
    scheme = keys[1].scheme
    secret = he.secret_context(keys[0] / he.SECRET_FILE)
    public = he.public_context(server_dir)
    assert secret.is_private() and not public.is_private()
    cts = he.encrypt(secret, np.arange(5, dtype=np.int64), keys[1].slots, scheme=scheme)
    assert he.decrypt(secret, cts, 5, scheme=scheme).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        he.decrypt(public, cts, 5, scheme=scheme)
    with pytest.raises(ValueError, match="clients need secret.ctx"):
        he.secret_context(server_dir / he.PUBLIC_FILE)
    assert not list(server_dir.glob("secret*"))


def _models(n):
    torch.manual_seed(0)
    base = MnistCNN()
    out = []
    for i in range(n):
        state = {k: v + 0.01 * (i + 1) * torch.randn_like(v) for k, v in base.state_dict().items()}
        out.append(state)
    return base, out


def train_reply(instruction, arrays, weight):
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": weight, "train_loss": 1.0})})
    return Message(content=content, reply_to=instruction)


@pytest.mark.parametrize(
    ("profile", "values_per_slot", "max_error", "max_bytes"),
    [("bfv", 1, 1e-6, 16.0), ("bfv-packed", 2, 5e-4, 8.1), ("ckks", 1, 1e-6, 32.2)],
    indirect=["profile"],
)
def test_encrypted_fedavg_equals_plaintext_fedavg(profile, values_per_slot, max_error, max_bytes, task_identity):
    # Prepare: three clients of the 1,663,370-parameter MNIST CNN with 100, 250, 7 examples.
    (key_dir, params), server = profile
    assert params.values_per_slot == values_per_slot
    base, states = _models(3)
    weights = [100, 250, 7]
    secret_key = key_dir / he.SECRET_FILE
    strategy = EncryptedFedAvg(he_dir=str(server), num_parameters=1_663_370, max_weight=1000)
    instruction = Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type="train")
    replies = [train_reply(instruction, encrypt_local(s, w, secret_key), w) for s, w in zip(states, weights)]
    upload_bytes = sum(len(a.data) for a in replies[0].content["arrays"].values())
    # Execute: the server adds what it cannot read; a client decrypts the sum.
    arrays, metrics = strategy.aggregate_train(1, replies)
    mean = decrypt_global(arrays, strategy.total_weight, base.state_dict(), secret_key)
    # Assert
    slots = 4096 if params.scheme == "bfv" else 2048  # CKKS: N/2 real slots
    assert params.slots == slots
    assert strategy.num_ciphertexts == -(-1_663_370 // (slots * values_per_slot))
    assert strategy.total_weight == 357 and metrics["train_loss"] == pytest.approx(1.0)
    for key in mean:
        expected = sum(s[key] * w for s, w in zip(states, weights)) / 357
        err = torch.linalg.norm(mean[key] - expected) / torch.linalg.norm(expected)
        assert err < max_error, key
    assert upload_bytes / 1_663_370 <= max_bytes


def test_bad_uploads_are_rejected_not_added(keys, server_dir, task_identity):
    base, states = _models(1)
    secret_key = keys[0] / he.SECRET_FILE
    strategy = EncryptedFedAvg(he_dir=str(server_dir), num_parameters=1_663_370, max_weight=1000)
    instruction = Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type="train")
    good = encrypt_local(states[0], 10, secret_key)
    cts = [a.numpy().tobytes() for a in good.values()]
    garbage = ciphertext_record([b"\x00garbage"] + cts[1:])
    replies = [
        train_reply(instruction, good, 10),
        train_reply(instruction, ciphertext_record(cts[:-1]), 10),  # a ciphertext missing
        train_reply(instruction, garbage, 10),
        train_reply(instruction, good, 5000),  # more examples than the whole data set
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    reasons = [r.reason for r in strategy.rejected]
    assert len(reasons) == 3
    assert "ciphertexts, expected" in reasons[0] and "not a valid ciphertext" in reasons[1]
    assert "num-examples=5000" in reasons[2]
    assert strategy.total_weight == 10
    mean = decrypt_global(arrays, 10, base.state_dict(), secret_key)
    assert torch.allclose(mean["classifier.3.bias"], states[0]["classifier.3.bias"], atol=1e-6)


def _small_state(value: float = 0.5) -> dict[str, torch.Tensor]:
    """5,000 parameters: two BFV ciphertexts (4,096 + 904 slots), three CKKS ones."""
    return {"w": torch.full((5000,), value)}


@pytest.mark.parametrize("profile", ["bfv", "ckks"], indirect=True)
def test_ciphertexts_of_the_wrong_size_or_scale_are_rejected_not_added(profile, task_identity):
    # A reply whose ciphertexts parse but cannot be added (fewer slots; for CKKS another
    # scale) is rejected like any bad reply, instead of crashing the server's sum.
    import tenseal as ts

    (key_dir, params), server = profile
    secret_key = key_dir / he.SECRET_FILE
    ctx = he.secret_context(secret_key)
    strategy = EncryptedFedAvg(he_dir=str(server), num_parameters=5000, max_weight=1000)
    instruction = Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type="train")
    good = encrypt_local(_small_state(), 10, secret_key)
    cts = [a.numpy().tobytes() for a in good.values()]
    if params.scheme == "bfv":
        odd = ts.bfv_vector(ctx, [1, 2, 3]).serialize()
    else:
        odd = ts.ckks_vector(ctx, [1.0] * params.slots, scale=2.0**20).serialize()
    replies = [train_reply(instruction, ciphertext_record([odd] + cts[1:]), 10), train_reply(instruction, good, 10)]
    arrays, _ = strategy.aggregate_train(1, replies)
    reason = strategy.rejected[0].reason
    assert len(strategy.rejected) == 1 and strategy.total_weight == 10
    expected = (
        "holds 3 slots, expected 4096" if params.scheme == "bfv"
        else "has another modulus level or scale (1.04858e+06) than this run's fresh ciphertexts (524288)"
    )
    assert f"ciphertext 0 {expected}" in reason, reason
    mean = decrypt_global(arrays, 10, _small_state(), secret_key)
    assert torch.allclose(mean["w"], _small_state()["w"], atol=1e-6)


def test_a_client_refuses_to_encrypt_non_finite_values_or_too_large_a_weight(keys):
    # Clipping keeps a NaN, which would garble its whole ciphertext in the sum unseen.
    secret_key = keys[0] / he.SECRET_FILE
    state = _small_state()
    state["w"][[3, 4100]] = torch.tensor([float("nan"), float("inf")])
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\) \(NaN or inf\) in the local model"):
        encrypt_local(state, 10, secret_key)
    with pytest.raises(ValueError, match=r"weight 1001 is outside \[1, 1000\], the max weight the HE keys"):
        encrypt_local(_small_state(), 1001, secret_key)


def test_the_server_refuses_keys_made_for_fewer_examples(server_dir):
    with pytest.raises(ValueError, match="made for at most 1000 examples per round, but this task's training set has 60000"):
        EncryptedFedAvg(he_dir=str(server_dir), num_parameters=5000, max_weight=60_000)


@pytest.mark.parametrize("clip", [0.3, 1.85, 2.5, 8.0])
def test_rounding_cannot_push_a_full_round_out_of_its_lane(clip):
    # Worst case: max_weight clients of weight 1, every value at +clip, each rounded up.
    for radix in range(1001, 3001, 97):
        for max_weight in range(1, 60):
            scale = fixed_point_scale(radix=radix, max_weight=max_weight, clip=clip)
            if scale < 1:
                continue
            one = encode_weighted(np.array([clip, -clip]), weight=1, scale=scale, clip=clip)
            assert max_weight * abs(one).max() <= radix // 2 - 1, (radix, max_weight)


def test_randk_under_he_uploads_a_shared_subset_of_ciphertexts(keys, server_dir, task_identity):
    # Prepare: the MNIST CNN in 407 ciphertexts; randk:0.25 uploads ceil(0.25 * 407) = 102 of them.
    base, states = _models(2)
    weights = [100, 300]
    secret_key = keys[0] / he.SECRET_FILE
    strategy = EncryptedFedAvg(he_dir=str(server_dir), num_parameters=1_663_370, max_weight=1000,
                               block_fraction=0.25, seed=3)
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    sent = list(strategy.configure_train(1, ArrayRecord(base.state_dict()), ConfigRecord(), grid))
    config = sent[0].content["config"]
    blocks = he_upload_blocks(parse_spec("randk:0.25"), config)
    assert blocks == strategy.selected.tolist() and len(blocks) == 102
    # The first download is the initial model, encrypted by the server with the public key.
    initial = decrypt_global(sent[0].content["arrays"], list(config[BLOCK_WEIGHTS_KEY]), base.state_dict(), secret_key)
    assert all(torch.allclose(initial[k], v, atol=1e-6) for k, v in base.state_dict().items())
    # Execute: both clients upload the same 102 blocks; the server adds them in place.
    replies = [train_reply(m, encrypt_local(s, w, secret_key, blocks), w) for m, s, w in zip(sent, states, weights)]
    upload = sum(len(a.data) for a in replies[0].content["arrays"].values())
    arrays, _ = strategy.aggregate_train(1, replies)
    mean = flatten({k: v.numpy() for k, v in
                    decrypt_global(arrays, strategy.block_weights, base.state_dict(), secret_key).items()})
    # Assert: the uploaded blocks hold FedAvg of the clients, the others the initial model.
    expected = flatten({k: (sum(s[k] * w for s, w in zip(states, weights)) / 400).numpy() for k in states[0]})
    start = flatten({k: v.numpy() for k, v in base.state_dict().items()})
    updated = value_weights(strategy.block_weights, keys[1], start.size) == 400
    assert updated.mean() == pytest.approx(102 / 407, abs=0.01)
    np.testing.assert_allclose(mean[updated], expected[updated], atol=1e-6)
    np.testing.assert_allclose(mean[~updated], start[~updated], atol=1e-6)
    assert upload / 1_663_370 <= 16.0 * 0.26


def test_ckks_slots_round_back_to_exact_integer_sums(ckks):
    # 64 public-key encryptions of values at the edge of each one's share of the 2**38
    # range: the CKKS sum, rounded, is the exact integer sum (the slot noise stays < 0.5).
    (key_dir, params), server = ckks
    public, secret = he.public_context(server), he.secret_context(key_dir / he.SECRET_FILE)
    rng = np.random.default_rng(1)
    limit = 2**38 // 64 - 1
    values = [rng.integers(-limit, limit, params.slots) for _ in range(64)]
    uploads = [he.deserialize(public, he.encrypt(public, v, params.slots, scheme="ckks"), scheme="ckks") for v in values]
    total = he.decrypt(secret, he.add_all(uploads), params.slots, scheme="ckks")
    assert np.array_equal(total, np.sum(values, axis=0))


def test_provision_refuses_lanes_too_narrow_for_the_weights(tmp_path):
    with pytest.raises(ValueError, match="cannot hold 10000000 examples"):
        he.provision(tmp_path / "n", tmp_path / "s", clip=8.0, max_weight=10_000_000, values_per_slot=2)
    with pytest.raises(ValueError, match="valid: bfv, ckks"):
        he.provision(tmp_path / "n", tmp_path / "s", clip=8.0, max_weight=100, scheme="paillier")
    with pytest.raises(ValueError, match="for ckks; valid: 1"):
        he.provision(tmp_path / "n", tmp_path / "s", clip=8.0, max_weight=100, values_per_slot=2, scheme="ckks")


def test_values_beyond_the_clip_are_reported(keys, caplog):
    import logging

    state = _small_state()
    state["w"][:3] = torch.tensor([9.0, -12.0, 7.9])  # clip 8: two are cut
    with caplog.at_level(logging.WARNING, logger="flwr"):
        encrypt_local(state, 10, keys[0] / he.SECRET_FILE)
    assert "2 of 5000 values lie outside +-he-clip=8 and were clipped" in caplog.text


def test_provision_keeps_the_secret_key_out_of_the_servers_folder(tmp_path):
    import stat

    he.provision(tmp_path / "nodes", tmp_path / "server", clip=8.0, max_weight=100)
    assert sorted(f.name for f in (tmp_path / "server").iterdir()) == [he.PARAMS_FILE, he.PUBLIC_FILE]
    assert sorted(f.name for f in (tmp_path / "nodes").iterdir()) == [he.PARAMS_FILE, he.SECRET_FILE]
    assert stat.S_IMODE((tmp_path / "nodes" / he.SECRET_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "nodes").stat().st_mode) == 0o700
    assert not he.public_context(tmp_path / "server").is_private()
    with pytest.raises(ValueError, match="need two folders"):
        he.provision(tmp_path / "one", tmp_path / "one", clip=8.0, max_weight=100)
    assert not (tmp_path / "one").exists()


def test_a_client_refuses_keys_from_another_provisioning(tmp_path, task_identity):
    # Two provisionings with the same settings: params.json alike but for the key id.
    # The other secret key would decrypt the sums to garbage without any error.
    from types import SimpleNamespace

    from fedloom.client.app import he_inputs
    from fedloom.config import parse_run_config
    from fedloom.protocol.keys import HE_KEY_ID as KEY_ID_KEY

    first = he.provision(tmp_path / "a-nodes", tmp_path / "a-server", clip=8.0, max_weight=100)
    second = he.provision(tmp_path / "b-nodes", tmp_path / "b-server", clip=8.0, max_weight=100)
    assert len(first.key_id) == 16 and first.key_id != second.key_id
    strategy = EncryptedFedAvg(he_dir=str(tmp_path / "a-server"), num_parameters=10, max_weight=100)
    config = strategy._config(ConfigRecord())
    assert config[KEY_ID_KEY] == first.key_id
    msg = Message(content=RecordDict({"config": config}), dst_node_id=1, message_type="train")
    context = SimpleNamespace(node_config={})
    for nodes, ok in (("a-nodes", True), ("b-nodes", False)):
        cfg = parse_run_config({"he": True, "fraction-evaluate": 1.0, "he-secret-dir": str(tmp_path / nodes)})
        if ok:
            assert he_inputs(cfg, msg, context) == (0, tmp_path / nodes / he.SECRET_FILE)
        else:
            with pytest.raises(ValueError, match=f"HE keys do not match: the run's are {first.key_id}"):
                he_inputs(cfg, msg, context)
