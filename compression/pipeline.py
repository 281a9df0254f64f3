"""Encode / decode a flat float32 update through a :class:`~compression.spec.Chain`.

Payload = [transform side info (e.g. top-k indices)] + [quantized values]. Each
block's size follows from the chain, the vector layout and the side info, so the
decoder rejects any payload whose length is not exact.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from . import quantize as qz
from .spec import Chain, CodecContext, Expand


def encode(chain: Chain, vec: np.ndarray, ctx: CodecContext) -> bytes:
    """The payload bytes for flat float32 ``vec``."""
    side, values = b"", np.asarray(vec, dtype=np.float32)
    if chain.transform is not None:
        # Codec.encode's result depends on its kind (compression/spec.py): here a transform's.
        side, values = cast(
            tuple[bytes, np.ndarray], chain.transform.codec.encode(values, chain.transform.param, ctx)
        )
    if chain.quantizer is None:
        return side + qz.float32_encode(values)
    return side + cast(bytes, chain.quantizer.codec.encode(values, chain.quantizer.param, ctx))


def decode(chain: Chain, payload: bytes, ctx: CodecContext) -> np.ndarray:
    """The flat float32 vector of length ``ctx.n`` that ``payload`` encodes."""
    count, used = ctx.n, 0

    def identity(values: np.ndarray) -> np.ndarray:
        return values

    expand: Expand = identity
    if chain.transform is not None:
        # Codec.decode's result depends on its kind (compression/spec.py): here a transform's.
        expand, count, used = cast(
            tuple[Expand, int, int], chain.transform.codec.decode(payload, chain.transform.param, ctx)
        )
    body = payload[used:]
    if chain.quantizer is None:
        values = qz.float32_decode(body, count)
    else:
        values = cast(np.ndarray, chain.quantizer.codec.decode(body, count, chain.quantizer.param))
    return expand(values)


def encode_with_feedback(
    chain: Chain, update: np.ndarray, residual: np.ndarray | None, ctx: CodecContext
) -> tuple[bytes, np.ndarray | None]:
    """Encode ``update`` (+ the carried ``residual`` for biased chains).

    Returns the payload and the new residual: what the server will *not* see,
    ``update + residual - decode(payload)``, so sent + residual sums to the true
    updates over rounds. Unbiased chains keep no residual (``None``).
    """
    if not chain.error_feedback:
        return encode(chain, update, ctx), None
    acc = update if residual is None else update + residual
    payload = encode(chain, acc, ctx)
    return payload, (acc - decode(chain, payload, ctx)).astype(np.float32)
