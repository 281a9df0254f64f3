"""Encrypted aggregation: key custody, exact sums, sizes, and bad uploads."""

import shutil

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.he_client import decrypt_global, encrypt_local
from privacy import he
from privacy.fixed_point import decode_mean, encode_weighted, fixed_point_scale
from strategies.encrypted import EncryptedFedAvg, ciphertext_record
from tasks.mnist import MnistCNN


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A provisioned run: secret.ctx for clients, public.ctx for the server."""
    folder = tmp_path_factory.mktemp("he")
    params = he.provision(folder, clip=8.0, max_weight=1000)
    return folder, params


@pytest.fixture(scope="module")
def server_dir(keys, tmp_path_factory):
    """What the server machine gets: the public context and the parameters, no secret."""
    folder = tmp_path_factory.mktemp("server")
    for name in (he.PUBLIC_FILE, he.PARAMS_FILE):
        shutil.copy(keys[0] / name, folder / name)
    return folder


def test_batching_prime():
    p = he.batching_prime(40, 4096)
    assert p < 2**40 and p % 8192 == 1 and he._is_prime(p)
    assert not he._is_prime(p + 8192 * 0 + 2)


def test_fixed_point_by_hand():
    # plain modulus 2001 -> |sum| < 1000; max weight 10, clip 2 -> scale = 999 // 20 = 49
    scale = fixed_point_scale(plain_modulus=2001, max_weight=10, clip=2.0)
    assert scale == 49.0
    q = encode_weighted(np.array([0.5, -3.0], np.float32), weight=4, scale=scale, clip=2.0)
    assert q.tolist() == [98, -392]  # 4 * 0.5 * 49, 4 * (-2) * 49
    assert decode_mean(q, total_weight=4, scale=scale).tolist() == [0.5, -2.0]


def test_server_context_cannot_decrypt(keys, server_dir):
    secret = he.secret_context(keys[0] / he.SECRET_FILE)
    public = he.public_context(server_dir)
    assert secret.is_private() and not public.is_private()
    cts = he.encrypt(secret, np.arange(5, dtype=np.int64), keys[1].slots)
    assert he.decrypt(secret, cts, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        he.decrypt(public, cts, 5)
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


def test_encrypted_fedavg_equals_plaintext_fedavg(keys, server_dir, task_identity):
    # Prepare: three clients of the 1,663,370-parameter MNIST CNN with 100, 250, 7 examples.
    base, states = _models(3)
    weights = [100, 250, 7]
    secret_key = keys[0] / he.SECRET_FILE
    strategy = EncryptedFedAvg(he_dir=str(server_dir), num_parameters=1_663_370, max_weight=1000)
    instruction = Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type="train")
    replies = [train_reply(instruction, encrypt_local(s, w, secret_key), w) for s, w in zip(states, weights)]
    upload_bytes = sum(len(a.data) for a in replies[0].content["arrays"].values())
    # Execute: the server adds what it cannot read; a client decrypts the sum.
    arrays, metrics = strategy.aggregate_train(1, replies)
    mean = decrypt_global(arrays, strategy.total_weight, base.state_dict(), secret_key)
    # Assert
    assert strategy.total_weight == 357 and metrics["train_loss"] == pytest.approx(1.0)
    for key in mean:
        expected = sum(s[key] * w for s, w in zip(states, weights)) / 357
        err = torch.linalg.norm(mean[key] - expected) / torch.linalg.norm(expected)
        assert err < 1e-6, key
    assert upload_bytes / 1_663_370 <= 16.0


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
