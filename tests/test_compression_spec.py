"""Spec parsing, HE compatibility and the run-config / CLI checks."""

from __future__ import annotations

import pytest

from fedloom import run_sim
from fedloom.compression.spec import check_he, parse_down_spec, parse_spec
from fedloom.config import parse_run_config


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [("none", "none"), ("", "none"), ("FP16", "fp16"), ("qsgd:8", "qsgd:8"),
     ("topk:0.01+qsgd:8", "topk:0.01+qsgd:8"), ("randk:0.1+fp16", "randk:0.1+fp16"),
     ("lowrank:4", "lowrank:4"),
     # every digit kept, and no 1e+06 that would not parse again (the server re-parses it)
     ("topk:0.123456789", "topk:0.123456789"), ("lowrank:1000000", "lowrank:1000000")],
)
def test_valid_specs_parse_to_their_canonical_form(spec, canonical):
    assert str(parse_spec(spec)) == canonical
    assert str(parse_spec(canonical)) == canonical


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "unknown codec 'bogus'"),
        ("qsgd:8+topk:0.01", "TRANSFORM+QUANTIZER"),
        ("topk:0.1+randk:0.1", "TRANSFORM+QUANTIZER"),
        ("fp16+qsgd:8", "TRANSFORM+QUANTIZER"),
        ("none+fp16", "unknown codec 'none'"),
        ("topk", "needs a parameter: topk:FRACTION"),
        ("topk:0", "not in (0, 1]"),
        ("qsgd:1", "not in 2..16"),
        ("lowrank:x", "use lowrank:RANK"),
        ("fp16:2", "takes no parameter"),
    ],
)
def test_bad_specs_fail_clearly(spec, message):
    with pytest.raises(ValueError, match="valid|use|parameter|not in") as err:
        parse_spec(spec)
    assert message in str(err.value)


def test_unknown_codec_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        parse_spec("zip")
    for usage in ("none", "fp16", "qsgd:BITS", "topk:FRACTION", "randk:FRACTION", "lowrank:RANK"):
        assert usage in str(err.value)


def test_he_rejects_per_client_codecs_and_names_the_ones_that_work():
    assert str(check_he("none", he=True)) == "none"
    assert str(check_he("topk:0.01", he=False)) == "topk:0.01"
    with pytest.raises(ValueError) as err:
        check_he("topk:0.01+qsgd:8", he=True)
    text = str(err.value)
    assert "topk, qsgd" in text and text.endswith("codecs that work with --he: none, randk:FRACTION")
    with pytest.raises(ValueError, match=r"\(fp16: encrypted uploads"):
        check_he("randk:0.1+fp16", he=True)
    assert str(check_he("randk:0.25", he=True)) == "randk:0.25"  # a shared subset of ciphertexts


def test_download_specs_only_quantize():
    assert str(parse_down_spec("qsgd:8")) == "qsgd:8"
    with pytest.raises(ValueError, match="only none, fp16 or qsgd:BITS"):
        parse_down_spec("topk:0.1")


def test_run_config_resolves_specs_when_loaded():
    cfg = parse_run_config({"compression": "TOPK:0.010+qsgd:8", "compression-down": "fp16"})
    assert str(cfg.compression) == "topk:0.01+qsgd:8" and str(cfg.compression_down) == "fp16"
    assert parse_run_config({}).compression.is_none
    with pytest.raises(ValueError, match="unknown codec"):
        parse_run_config({"compression": "gzip"})


@pytest.mark.parametrize(
    "argv",
    [
        ["--compression", "bogus"],
        ["--compression", "qsgd:8+topk:0.1"],
        ["--compression-down", "topk:0.1"],
    ],
)
def test_cli_rejects_bad_specs_with_status_2(argv, capsys):
    assert run_sim.main(argv) == 2
    assert "run_sim.py: error:" in capsys.readouterr().err
