"""--ray-address: validated at load, and an address without a Ray cluster is one line, fast."""

from __future__ import annotations

import socket
import time

import pytest

from fedloom import run_sim
from fedloom.config import parse_run_config


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket closes


@pytest.mark.parametrize("address", ["", "auto", "10.0.0.5:6379", "head.example:6380", "[::1]:6379"])
def test_valid_ray_addresses(address):
    assert parse_run_config({"ray-address": address}).ray_address == address


@pytest.mark.parametrize("address", ["head", "head:", ":6379", "head:port", "head:70000"])
def test_invalid_ray_addresses_name_the_valid_forms(address):
    with pytest.raises(ValueError, match="invalid ray-address=.*valid: empty .*, auto, or HOST:PORT"):
        parse_run_config({"ray-address": address})


def test_an_unreachable_cluster_is_one_line_and_exit_2_within_seconds(capsys):
    start = time.monotonic()
    port = closed_port()
    assert run_sim.main(["--ray-address", f"127.0.0.1:{port}", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - start < 30
    assert len(err.strip().splitlines()) == 1
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in err


def test_auto_without_a_cluster_says_how_to_start_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert run_sim.main(["--ray-address", "auto", "--rounds", "1"]) == 2
    assert "no running Ray cluster found" in capsys.readouterr().err
