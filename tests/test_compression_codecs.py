"""Codec kernels: round trips, exact sizes, unbiasedness, error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.compression.flat import flatten, layout_of, unflatten
from fedloom.compression.indices import decode_indices, encode_indices, varint_decode, varint_encode
from fedloom.compression.lowrank import lowrank_count
from fedloom.compression.pipeline import decode, encode, encode_with_feedback
from fedloom.compression.quantize import qsgd_decode, qsgd_encode, qsgd_size
from fedloom.compression.spec import CodecContext, parse_spec
from fedloom.compression.sparse import randk_indices


def ctx(layout=((5,),), seed=0, rng_seed=0) -> CodecContext:
    return CodecContext(layout, seed=seed, rng=np.random.default_rng(rng_seed))


def test_varints_match_leb128_by_hand():
    # 0 -> 00; 127 -> 7f; 128 -> 80 01; 300 = 0b10_0101100 -> ac 02
    data = varint_encode(np.array([0, 127, 128, 300]))
    assert data == bytes([0x00, 0x7F, 0x80, 0x01, 0xAC, 0x02])
    values, used = varint_decode(data + b"\x05", 4)
    assert values.tolist() == [0, 127, 128, 300] and used == 6


def test_sparse_indices_are_delta_varints():
    # gaps-1 of [0, 1, 5] are [0, 0, 3]: tag 0 + three one-byte varints
    data = encode_indices(np.array([0, 1, 5]), 1000)
    assert data == bytes([0, 0, 0, 3])
    idx, used = decode_indices(data, 3, 1000)
    assert idx.tolist() == [0, 1, 5] and used == 4


def test_dense_indices_switch_to_a_bitmap():
    # 10 of 16 kept: varints would take 10 bytes, the bitmap 2 (+1 tag byte)
    data = encode_indices(np.arange(10), 16)
    assert data == bytes([1, 0xFF, 0x03])
    idx, used = decode_indices(data, 10, 16)
    assert idx.tolist() == list(range(10)) and used == 3


def test_topk_payload_by_hand():
    vec = np.zeros(20, dtype=np.float32)
    vec[:4] = [0.1, -5.0, 0.2, 3.0]
    chain = parse_spec("topk:0.1")  # k = ceil(0.1 * 20) = 2 -> indices 1, 3
    c = ctx(((20,),))
    payload = encode(chain, vec, c)
    # varints (2 bytes) beat the bitmap (3 bytes): tag, gaps-1 [1, 1], two float32
    assert len(payload) == 1 + 2 + 2 * 4
    assert payload[:3] == bytes([0, 1, 1])
    expected = np.zeros(20, dtype=np.float32)
    expected[[1, 3]] = [-5.0, 3.0]
    assert decode(chain, payload, c).tolist() == expected.tolist()
    quantized = encode(parse_spec("topk:0.1+qsgd:8"), vec, c)
    assert len(quantized) == 3 + 4 + 2  # indices, one bucket norm, two 8-bit levels
    short = encode(parse_spec("topk:0.4"), vec[:5], ctx())
    assert short[:2] == bytes([1, 0b01010])  # 5 entries: a 1-byte bitmap beats 2 varints


def test_fp16_and_float32_sizes_and_round_trip():
    vec = np.array([1.5, -2.25, 0.0, 1e-3, 7.0], dtype=np.float32)
    payload = encode(parse_spec("fp16"), vec, ctx())
    assert len(payload) == 10
    np.testing.assert_allclose(decode(parse_spec("fp16"), payload, ctx()), vec, rtol=1e-3)


def test_qsgd_sizes():
    assert qsgd_size(200, 8) == 2 * 4 + 200  # two buckets of <=128, one byte per value
    assert qsgd_size(3, 4) == 4 + 2  # one bucket, 12 bits -> 2 bytes
    assert len(qsgd_encode(np.ones(3, np.float32), 4, np.random.default_rng(0))) == 6


def test_qsgd_levels_by_hand_and_unbiased():
    # [3, -4, 1] has max-norm 4; with 2 bits s = 1, so each value decodes to 0 or +-4:
    # 3 -> 4 with probability 3/4, -4 -> -4 always, 1 -> 4 with probability 1/4.
    vec = np.array([3.0, -4.0, 1.0], dtype=np.float32)
    rng = np.random.default_rng(1)
    draws = np.stack([qsgd_decode(qsgd_encode(vec, 2, rng), 3, 2) for _ in range(20_000)])
    assert set(np.unique(draws[:, 0])) == {0.0, 4.0} and set(np.unique(draws[:, 1])) == {-4.0}
    np.testing.assert_allclose(draws.mean(axis=0), vec, atol=0.05)


def test_qsgd_is_unbiased_over_many_draws():
    vec = np.random.default_rng(2).standard_normal(300).astype(np.float32)
    rng = np.random.default_rng(3)
    mean = np.mean([qsgd_decode(qsgd_encode(vec, 4, rng), 300, 4) for _ in range(4_000)], axis=0)
    assert np.abs(mean - vec).max() < 0.1


def test_randk_mask_is_shared_and_sends_no_indices():
    vec = np.arange(20, dtype=np.float32)
    chain = parse_spec("randk:0.25")
    a = encode(chain, vec, ctx(((20,),), seed=7, rng_seed=1))
    b = encode(chain, vec + 1, ctx(((20,),), seed=7, rng_seed=2))
    assert len(a) == len(b) == 5 * 4
    idx = randk_indices(20, 0.25, 7)
    out = decode(chain, a, ctx(((20,),), seed=7))
    assert out[idx].tolist() == vec[idx].tolist()
    assert np.count_nonzero(out[np.setdiff1d(np.arange(20), idx)]) == 0


def test_lowrank_recovers_a_rank_two_matrix_and_sends_biases_as_is():
    layout = ((8, 6), (8,))
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 2)) @ rng.standard_normal((2, 6))
    vec = np.concatenate([weight.ravel(), np.arange(8)]).astype(np.float32)
    chain = parse_spec("lowrank:2")
    payload = encode(chain, vec, ctx(layout))
    assert lowrank_count(layout, 2) == 2 * (8 + 6) + 8
    assert len(payload) == 36 * 4
    np.testing.assert_allclose(decode(chain, payload, ctx(layout)), vec, atol=1e-4)


def test_lowrank_factors_conv_kernels_and_skips_small_ones():
    assert lowrank_count(((4, 2, 3, 3),), 1) == 4 + 18  # viewed as a 4 x 18 matrix
    assert lowrank_count(((2, 2),), 1) == 4  # factors (4 values) are not smaller


@pytest.mark.parametrize("spec", ["topk:0.1", "topk:0.1+qsgd:8", "randk:0.2+fp16", "lowrank:1"])
def test_error_feedback_keeps_what_was_not_sent(spec):
    layout = ((6, 5), (6,))
    chain = parse_spec(spec)
    rng = np.random.default_rng(4)
    residual, sent, true = None, np.zeros(36), np.zeros(36)
    for rnd in range(10):
        update = rng.standard_normal(36).astype(np.float32)
        c = ctx(layout, seed=rnd, rng_seed=rnd)
        payload, residual = encode_with_feedback(chain, update, residual, c)
        sent += decode(chain, payload, c)
        true += update
    np.testing.assert_allclose(sent + residual, true, atol=1e-4)


def test_unbiased_chains_keep_no_residual():
    chain = parse_spec("qsgd:8")
    payload, residual = encode_with_feedback(chain, np.ones(4, np.float32), None, ctx(((4,),)))
    assert residual is None and len(payload) == 4 + 4


def test_flatten_round_trip_keeps_keys_shapes_and_dtypes():
    arrays = {"w": np.ones((2, 3), np.float32), "n": np.array(3, np.int64)}
    vec = flatten(arrays)
    assert vec.dtype == np.float32 and vec.size == 7 and layout_of(arrays) == ((2, 3), ())
    back = unflatten(vec + 0.4, arrays)
    assert back["w"].shape == (2, 3) and back["n"].dtype == np.int64 and int(back["n"]) == 3
