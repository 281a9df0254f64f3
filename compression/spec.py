"""Codec registry and ``--compression`` spec parsing.

A spec is ``none`` or one or two stages joined by ``+``: an optional *transform*
(``topk:F``, ``randk:F`` or ``lowrank:R``) that turns the flat update into fewer
float values, then an optional *quantizer* (``fp16`` or ``qsgd:BITS``) that turns
those values into bytes. Without a quantizer the values travel as float32. So
``topk:0.01+qsgd:8`` is valid; ``qsgd:8+topk:0.01`` (quantizer first),
``topk:0.1+randk:0.5`` (two transforms) and ``fp16+qsgd:8`` are not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import quantize as qz
from .flat import Layout
from .lowrank import lowrank_count, lowrank_decode, lowrank_encode
from .sparse import randk_indices, scatter, topk_encode, topk_read

Param = float | int | None


@dataclass(frozen=True)
class CodecContext:
    """What encode/decode may use besides the vector: nothing from Flower."""

    layout: Layout
    seed: int = 0  # shared by the server for the round (randk's mask)
    rng: np.random.Generator | None = None  # the encoder's private randomness (qsgd, lowrank)

    @property
    def n(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.layout))

    def generator(self) -> np.random.Generator:
        if self.rng is None:
            raise ValueError("this codec needs a random generator to encode")
        return self.rng


Expand = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Codec:
    """One registered codec and the facts the config checks rely on."""

    name: str
    kind: Literal["transform", "quantizer"]
    #: Composes with ``--he``. fedloom's encrypted aggregation (privacy/he.py) packs
    #: each client's full pre-weighted weights as fixed-point integers in ciphertext
    #: blocks that the server can only add. randk does: under ``--he`` its shared
    #: per-round mask selects whole ciphertext blocks (strategies/encrypted.py), and
    #: the blocks not sent keep their last global value. Per-client supports (topk),
    #: factors (lowrank) and quantizers can not be added encrypted.
    he_compatible: bool
    #: Biased codec: the client keeps what it did not send and adds it next time.
    error_feedback: bool
    parse_param: Callable[[str], Param] | None
    usage: str
    #: transform: (vec, p, ctx) -> (side bytes, values); quantizer: (values, p, ctx) -> bytes
    encode: Callable[..., object]
    #: transform: (buf, p, ctx) -> (expand, num values, bytes used);
    #: quantizer: (buf, count, p) -> values
    decode: Callable[..., object]


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Add ``codec`` to the registry; a taken name is an error."""
    if codec.name in _CODECS or codec.name == "none":
        raise ValueError(f"codec {codec.name!r} is already registered")
    _CODECS[codec.name] = codec
    return codec


def codec_usages() -> str:
    return ", ".join(["none", *(_CODECS[n].usage for n in sorted(_CODECS))])


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(f"fraction {text} is not in (0, 1]")
    return value


def _bits(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 16:
        raise ValueError(f"bits {text} is not in 2..16")
    return value


def _rank(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"rank {text} is not >= 1")
    return value


def _topk_decode(buf: bytes, p: float, ctx: CodecContext) -> tuple[Expand, int, int]:
    idx, used = topk_read(buf, ctx.n, p)
    return (lambda values: scatter(idx, values, ctx.n)), idx.size, used


def _randk_encode(vec: np.ndarray, p: float, ctx: CodecContext) -> tuple[bytes, np.ndarray]:
    return b"", vec[randk_indices(vec.size, p, ctx.seed)].astype(np.float32)


def _randk_decode(buf: bytes, p: float, ctx: CodecContext) -> tuple[Expand, int, int]:
    idx = randk_indices(ctx.n, p, ctx.seed)
    return (lambda values: scatter(idx, values, ctx.n)), idx.size, 0


def _lowrank_encode(vec: np.ndarray, r: int, ctx: CodecContext) -> tuple[bytes, np.ndarray]:
    return b"", lowrank_encode(vec, ctx.layout, r, ctx.generator())


def _lowrank_decode(buf: bytes, r: int, ctx: CodecContext) -> tuple[Expand, int, int]:
    return (lambda values: lowrank_decode(values, ctx.layout, r)), lowrank_count(ctx.layout, r), 0


register_codec(Codec(
    "topk", "transform", he_compatible=False, error_feedback=True, parse_param=_fraction,
    usage="topk:FRACTION", encode=lambda v, p, ctx: topk_encode(v, p), decode=_topk_decode,
))
register_codec(Codec(
    "randk", "transform", he_compatible=True, error_feedback=True, parse_param=_fraction,
    usage="randk:FRACTION", encode=_randk_encode, decode=_randk_decode,
))
register_codec(Codec(
    "lowrank", "transform", he_compatible=False, error_feedback=True, parse_param=_rank,
    usage="lowrank:RANK", encode=_lowrank_encode, decode=_lowrank_decode,
))
register_codec(Codec(
    "fp16", "quantizer", he_compatible=False, error_feedback=False, parse_param=None,
    usage="fp16", encode=lambda v, p, ctx: qz.fp16_encode(v),
    decode=lambda buf, count, p: qz.fp16_decode(buf, count),
))
register_codec(Codec(
    "qsgd", "quantizer", he_compatible=False, error_feedback=False, parse_param=_bits,
    usage="qsgd:BITS", encode=lambda v, p, ctx: qz.qsgd_encode(v, p, ctx.generator()),
    decode=lambda buf, count, p: qz.qsgd_decode(buf, count, p),
))


@dataclass(frozen=True)
class Stage:
    codec: Codec
    param: Param = None

    def __str__(self) -> str:
        if self.param is None:
            return self.codec.name
        # repr keeps every digit of a fraction; :g would cut it and write 1e+06 for a rank.
        return f"{self.codec.name}:{self.param if isinstance(self.param, int) else repr(self.param)}"


@dataclass(frozen=True)
class Chain:
    """A parsed spec: optional transform, then optional quantizer."""

    transform: Stage | None = None
    quantizer: Stage | None = None

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickle as the spec text (codecs hold functions, which do not pickle)."""
        return parse_spec, (str(self),)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(s for s in (self.transform, self.quantizer) if s is not None)

    @property
    def is_none(self) -> bool:
        return not self.stages

    @property
    def error_feedback(self) -> bool:
        return any(s.codec.error_feedback for s in self.stages)

    @property
    def he_compatible(self) -> bool:
        return all(s.codec.he_compatible for s in self.stages)

    def __str__(self) -> str:
        return "+".join(str(s) for s in self.stages) or "none"


def _stage(text: str, spec: str) -> Stage:
    name, sep, arg = text.partition(":")
    codec = _CODECS.get(name.strip().lower())
    if codec is None:
        raise ValueError(
            f"unknown codec {name!r} in compression spec {spec!r}; valid: {codec_usages()}"
        )
    if codec.parse_param is None:
        if sep:
            raise ValueError(f"codec {codec.name} takes no parameter (got {text!r} in {spec!r})")
        return Stage(codec)
    if not sep or not arg.strip():
        raise ValueError(f"codec {codec.name} needs a parameter: {codec.usage} (in {spec!r})")
    try:
        return Stage(codec, codec.parse_param(arg.strip()))
    except ValueError as exc:
        raise ValueError(
            f"invalid {text!r} in compression spec {spec!r}: {exc}; use {codec.usage}"
        ) from None


def parse_spec(spec: str) -> Chain:
    """Parse ``spec``; ``ValueError`` names the valid codecs and chain shapes."""
    text = spec.strip()
    if text.lower() in ("", "none"):
        return Chain()
    parts = [_stage(p, spec) for p in text.split("+")]
    shape = "one of TRANSFORM, QUANTIZER or TRANSFORM+QUANTIZER (e.g. topk:0.01+qsgd:8)"
    kinds = [p.codec.kind for p in parts]
    if kinds not in (["transform"], ["quantizer"], ["transform", "quantizer"]):
        raise ValueError(
            f"invalid compression chain {spec!r}: use {shape}, where TRANSFORM is "
            f"topk:FRACTION, randk:FRACTION or lowrank:RANK and QUANTIZER is fp16 or qsgd:BITS"
        )
    return Chain(*parts) if kinds[0] == "transform" else Chain(quantizer=parts[0])


def parse_down_spec(spec: str) -> Chain:
    """Download specs quantize the full model: only ``none``, ``fp16`` or ``qsgd:BITS``."""
    chain = parse_spec(spec)
    if chain.transform is not None:
        raise ValueError(
            f"invalid download compression {spec!r}: the server sends full weights, so "
            "only none, fp16 or qsgd:BITS apply"
        )
    return chain


def check_he(spec: str | Chain, he: bool) -> Chain:
    """Parse ``spec``; with ``he`` reject codecs whose encodings can not be summed encrypted."""
    chain = spec if isinstance(spec, Chain) else parse_spec(spec)
    if he and not chain.he_compatible:
        bad = ", ".join(s.codec.name for s in chain.stages if not s.codec.he_compatible)
        good = ", ".join(["none", *(c.usage for c in _CODECS.values() if c.he_compatible)])
        raise ValueError(
            f"compression {spec!r} does not work with --he ({bad}: encrypted uploads are packed "
            "fixed-point integers that the server can only add, so the one way to send less is a "
            f"subset of ciphertexts shared by all clients); codecs that work with --he: {good}"
        )
    return chain
