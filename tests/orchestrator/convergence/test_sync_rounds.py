"""Synchronous rounds: quorum, concurrency, the deadline and an empty round's restart."""

from __future__ import annotations

import pytest

from orchestrator.convergence.sync_rounds import SyncRounds


def test_sync_rounds() -> None:
    rounds = SyncRounds(quorum=2, concurrency=3, deadline_s=1.0)
    rounds.open(4, now_ms=0)
    for d in "abc":
        assert rounds.may_task(d)
        rounds.assign(d)
    assert not rounds.may_task("d") and not rounds.may_task("a")
    rounds.on_accepted(3)  # another version's update does not count
    rounds.on_accepted(4)
    assert not rounds.due(500) and rounds.due(1000)  # deadline with one update
    rounds.on_accepted(4)
    assert rounds.due(10)
    empty = SyncRounds(quorum=1, concurrency=1, deadline_s=1.0)
    empty.open(0, 0)
    assert not empty.restart_if_empty(999) and empty.restart_if_empty(1000)
    assert empty.current is not None and empty.current.deadline_ms == 2000
    with pytest.raises(ValueError):
        SyncRounds(quorum=3, concurrency=2, deadline_s=1.0)
