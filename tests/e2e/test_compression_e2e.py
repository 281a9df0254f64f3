"""End-to-end simulations with compression: learning continues, bytes shrink exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedloom import run_sim

pytestmark = pytest.mark.e2e

DIGITS_PARAMS = 64 * 128 + 128 + 128 * 10 + 10  # 9610
NPY_HEADER = 128
# float32 state dict of the digits MLP: data, one npy header per array, key names
DIGITS_FLOAT32 = 4 * DIGITS_PARAMS + 4 * NPY_HEADER + len("0.weight0.bias2.weight2.bias")
PAYLOAD = NPY_HEADER + len("payload")  # one uint8 array under key "payload"


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_digits_fp16_both_ways_bytes_are_exactly_the_payloads(tmp_path):
    argv = ["--num-clients", "4", "--rounds", "3", "--compression", "fp16",
            "--compression-down", "fp16", "--run-dir", str(tmp_path)]
    assert run_sim.main(argv) == 0
    metrics = rows(tmp_path)
    assert metrics[-1]["accuracy"] > 0.8
    for row in metrics:
        assert row["num_clients"] == 4
        assert row["bytes_up"] == 4 * (2 * DIGITS_PARAMS + PAYLOAD)
        assert row["bytes_down"] == 4 * (2 * DIGITS_PARAMS + PAYLOAD)
    assert DIGITS_FLOAT32 == 38_980


def test_digits_topk_qsgd_learns_with_over_25x_smaller_uploads(tmp_path):
    argv = ["--num-clients", "4", "--rounds", "5", "--compression", "topk:0.05+qsgd:8",
            "--run-dir", str(tmp_path)]
    assert run_sim.main(argv) == 0
    metrics = rows(tmp_path)
    assert metrics[-1]["accuracy"] > max(0.8, metrics[0]["accuracy"])
    for row in metrics:
        # k = 481 of 9610: varint indices (>= 1 byte each), 4 float32 norms, 481 levels
        smallest, largest = PAYLOAD + 1 + 481 + 16 + 481, PAYLOAD + 1 + 2 * 481 + 16 + 481
        assert 4 * smallest <= row["bytes_up"] <= 4 * largest
        assert row["bytes_up"] * 25 < 4 * DIGITS_FLOAT32  # ~2.3 bytes per kept value
        assert row["bytes_down"] == 4 * DIGITS_FLOAT32


def test_mnist_topk_qsgd_uploads_100x_less(tmp_path, shared_data):
    argv = ["--task", "mnist", "--data-dir", str(shared_data), "--num-clients", "10",
            "--fraction", "0.2", "--rounds", "2", "--batch-size", "32",
            "--compression", "topk:0.01+qsgd:8", "--run-dir", str(tmp_path)]
    assert run_sim.main(argv) == 0
    metrics = rows(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    float32 = 4 * config["num_parameters"]  # lower bound of a plain float32 upload
    assert metrics[-1]["accuracy"] > max(0.5, metrics[0]["accuracy"] - 0.05)
    for row in metrics:
        assert row["num_clients"] == 2
        assert row["bytes_up"] * 100 < 2 * float32
