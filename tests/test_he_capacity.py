"""HE capacity: how many uploads a sum holds, verified at that size, refused past it, and
a corrupted aggregate detected by the clients (issue 32)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from fedloom.privacy import he
from fedloom.privacy.he_capacity import (
    bfv_max_summands,
    ckks_max_summands,
    fresh_noise_std,
    profile_max_summands,
)
from fedloom.privacy.he_encoding import CorruptAggregate, decrypt_weights, encrypt_weights
from fedloom.config import parse_run_config


def test_capacity_by_hand():
    # (1 + 2N/3) / 12 + 1/12 with N = 4096: 2732.67 / 12 = 227.72, sqrt 15.09
    assert fresh_noise_std(4096) == pytest.approx(15.0905, abs=1e-4)
    # BFV: noise below q/2t = 2**11 at 8 sigma: (2048 / (8 * 15.0905))**2 = 287.8
    assert bfv_max_summands(data_modulus=2**60, plain_modulus=2**48, poly_modulus_degree=4096) == 287
    # CKKS: slot noise sqrt(k N) sigma / scale below 1/2 at 8 sigma
    assert ckks_max_summands(scale=2.0**19, poly_modulus_degree=4096) == math.floor(
        (0.5 * 2**19 / (8 * 15.0905 * 64)) ** 2
    )
    assert [profile_max_summands(*p) for p in (("bfv", 1), ("bfv", 2), ("ckks", 1))] == [73674, 287, 1151]


def _sum_decrypts_exactly(plain_bits: int, coeff: list[int], fresh: int, repeats: int, seed: int = 0) -> bool:
    """Sum an encryption of zeros and ``fresh`` public-key encryptions of random full-range
    vectors, each added ``repeats`` times (noise variance: ``1 + fresh * repeats**2`` fresh
    ones); True if the sum decrypts to the exact integer sums."""
    import tenseal as ts

    t = he.batching_prime(plain_bits, 4096)
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=4096, plain_modulus=t,
                     coeff_mod_bit_sizes=coeff, n_threads=1)
    limit = (t // 2) // (fresh * repeats + 1)  # the plain sum stays in range
    rng = np.random.default_rng(seed)
    total = np.zeros(4096, dtype=object)
    acc = ts.bfv_vector(ctx, [0] * 4096)
    for _ in range(fresh):
        values = rng.integers(-limit, limit, 4096)
        total += values.astype(object) * repeats
        vector = ts.bfv_vector(ctx, values.tolist())
        for _ in range(repeats):
            acc += vector
    return bool(np.all(np.asarray(acc.decrypt(), dtype=object) == total))


def test_packed_profile_decrypts_exactly_at_capacity_and_not_far_past_it():
    # he-pack=2: [60, 49] with a 48-bit plain prime; 287 independent uploads
    assert _sum_decrypts_exactly(48, [60, 49], fresh=286, repeats=1)
    # the noise of 7x the capacity (125 uploads added 4 times: variance of 2,001): 2.6x larger, 3 sigma from
    # the bound, over 4096 coefficients
    assert not _sum_decrypts_exactly(48, [60, 49], fresh=125, repeats=4)


@pytest.mark.e2e
def test_default_profile_decrypts_exactly_at_capacity():
    # 73,674 uploads' noise: 1,151 fresh encryptions each added 8 times (variance 1 + 1152 * 64
    # = 73,729 fresh ones); every value is the exact integer sum.
    started = time.perf_counter()
    capacity = profile_max_summands("bfv", 1)
    fresh, repeats = capacity // 64 + 1, 8
    assert 1 + fresh * repeats**2 >= capacity
    assert _sum_decrypts_exactly(40, [56, 53], fresh=fresh, repeats=repeats)
    assert time.perf_counter() - started < 120


def test_a_client_detects_a_corrupted_sum_instead_of_training_from_it(tmp_path):
    params = he.provision(tmp_path / "nodes", tmp_path / "server", clip=8.0, max_weight=3000, values_per_slot=2)
    ctx = he.secret_context(tmp_path / "nodes" / he.SECRET_FILE)
    values = np.linspace(-1, 1, 10_000).astype(np.float32)
    uploads = [encrypt_weights(ctx, params, values, 2) for _ in range(3)]
    summed = he.add_all([he.deserialize(ctx, u, scheme="bfv") for u in uploads])
    assert np.allclose(decrypt_weights(ctx, params, summed, [6] * len(summed), values.size), values, atol=5e-3)
    # the right sum with another total weight, as a corruption looks to the check slots
    with pytest.raises(CorruptAggregate, match=r"the encrypted global model is corrupted: 2 of 2 ciphertexts"):
        decrypt_weights(ctx, params, summed, [7] * len(summed), values.size)
    # a sum past the capacity: every slot garbage, the check slots included
    # a sum with the noise of 4,001 uploads (400 added 10 times): every slot garbage
    fresh = [he.deserialize(ctx, encrypt_weights(ctx, params, values[:10], 1), scheme="bfv") for _ in range(401)]
    with pytest.raises(CorruptAggregate, match="more than 287 uploads outgrow"):
        decrypt_weights(ctx, params, he.add_all([fresh[0], *fresh[1:] * 10]), [4001], 10)


def test_a_run_that_could_exceed_the_capacity_is_refused_before_keys_are_made():
    from fedloom.server.privacy import check_he_capacity

    cfg = parse_run_config({"he": True, "he-pack": 2, "fraction-evaluate": 0.5})
    with pytest.raises(ValueError, match="he-pack=2 sums at most 287 uploads exactly .* could have 300; .* he-pack=1 "):
        check_he_capacity(cfg, 300)
    check_he_capacity(cfg, 287)
    half = parse_run_config({"he": True, "he-pack": 2, "fraction-evaluate": 0.5, "fraction-train": 0.5})
    check_he_capacity(half, 500)  # 250 per round


def test_the_server_adds_no_more_uploads_than_the_capacity(tmp_path, task_identity):
    from unittest.mock import Mock

    from flwr.app import Message, MetricRecord, RecordDict

    from fedloom.strategies.encrypted import EncryptedFedAvg, ciphertext_record

    params = he.provision(tmp_path / "nodes", tmp_path / "server", clip=8.0, max_weight=100)
    ctx = he.secret_context(tmp_path / "nodes" / he.SECRET_FILE)
    strategy = EncryptedFedAvg(he_dir=str(tmp_path / "server"), num_parameters=10, max_weight=100)
    assert strategy.max_summands == 73674
    strategy.max_summands = 2
    replies = []
    for node in range(3):
        msg = Mock(spec=Message)
        msg.has_error.return_value = False
        msg.metadata.src_node_id = node
        msg.content = RecordDict({"arrays": ciphertext_record(encrypt_weights(ctx, params, np.ones(10, np.float32), 1)),
                                  "metrics": MetricRecord({"num-examples": 1})})
        replies.append(msg)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.total_weight == 2
    assert [r.node_id for r in strategy.rejected] == [2]
    assert "already holds 2 uploads" in strategy.rejected[0].reason


def test_the_results_file_states_the_baselines_modulus_bits():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "he.md").read_text()
    assert "moduli [60, 40, 40]" in text and f"{60 + 40 + 40} bits of modulus" in text
