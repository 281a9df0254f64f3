"""Warnings a client process gives once, not every round."""

from __future__ import annotations

from logging import WARNING

from flwr.common.logger import log

_GIVEN: set[str] = set()


def warn_once(topic: str, text: str) -> bool:
    """Log ``text`` as a warning the first time this process meets ``topic``; True if logged."""
    if topic in _GIVEN:
        return False
    _GIVEN.add(topic)
    log(WARNING, "%s", text)
    return True
