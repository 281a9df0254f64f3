"""A canonical order for a round's replies, so that aggregation repeats exactly.

Replies reach the server in the order clients finish, which changes from run to
run. Floating-point sums depend on their order (``(a + b) + c != a + (b + c)`` in
the last bits), and training amplifies last-bit differences within a few rounds
(``benchmarks/results/design_notes.md``).
Ordering replies by a digest of their content makes the aggregate a function of
what the clients sent, not of when it arrived.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message


def _key(message: Message) -> tuple[int, str]:
    if message.has_error():
        error = message.error
        return 1, f"{error.code}:{error.reason}"
    return 0, message.content.object_id  # SHA-256 of the serialized records


def canonical_order(replies: Iterable[Message]) -> list[Message]:
    """``replies`` sorted by content digest (errors last): independent of arrival order."""
    return sorted(replies, key=_key)
