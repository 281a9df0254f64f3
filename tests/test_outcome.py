"""A run in which no round completed is a failed run (exit status 1, the reason in one line)."""

from __future__ import annotations

import pytest

from fedloom.server.outcome import NoRoundCompleted, check_completed


def test_a_run_without_a_completed_round_fails_with_its_reason():
    with pytest.raises(NoRoundCompleted, match=r"^no round completed: too few clients remain: round 1$"):
        check_completed(0, 3, "too few clients remain: round 1")


def test_a_run_with_a_completed_round_or_nothing_planned_passes():
    check_completed(1, 3, "too few clients remain: round 2")  # ended early, but it trained
    check_completed(0, 0, "")  # a resume of a finished run plans nothing


def test_an_unexplained_failure_still_says_so():
    with pytest.raises(NoRoundCompleted, match="every round failed"):
        check_completed(0, 2, "")
