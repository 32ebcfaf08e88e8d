"""When a version is due, and what tasking sees of the pace, in either mode (no I/O)."""

from __future__ import annotations

import pytest

from orchestrator.convergence.sync_rounds import SyncRounds
from orchestrator.versions.cadence import AsyncCadence, Slot, SyncCadence


def test_async_makes_a_version_once_k_are_buffered() -> None:
    cadence = AsyncCadence(k=3)
    assert [cadence.ready(n, 0) for n in (0, 2, 3, 10)] == [False, False, True, True]
    assert cadence.load_limit() == 3
    assert AsyncCadence(k=3, max_per_version=8).load_limit() == 8
    assert cadence.slot("d", outstanding=4, busy=True, published=7) == Slot(4, True, 7)
    assert cadence.tick(10**9) is False
    with pytest.raises(ValueError):
        AsyncCadence(k=0)
    with pytest.raises(ValueError):
        AsyncCadence(k=3, max_per_version=2)


def test_a_round_closes_at_quorum_or_at_its_deadline_with_something() -> None:
    cadence = SyncCadence(SyncRounds(quorum=2, concurrency=3, deadline_s=30.0))
    cadence.start(version=4, now_ms=0, buffered_bases=[4, 3])  # one counts: the other is stale
    assert not cadence.ready(0, 29_999)
    assert cadence.ready(0, 30_000)  # the deadline, with one update in
    cadence.on_accepted(4)
    assert cadence.ready(0, 1)  # quorum
    cadence.on_version(5, 40_000)  # the next round, on the new version
    assert not cadence.ready(0, 69_999) and not cadence.tick(69_999)
    assert cadence.tick(70_000)  # empty at its deadline: it starts again
    assert not cadence.ready(0, 70_001)


def test_a_round_tasks_each_device_once_up_to_its_concurrency() -> None:
    cadence = SyncCadence(SyncRounds(quorum=1, concurrency=2, deadline_s=30.0))
    cadence.start(version=1, now_ms=0, buffered_bases=[])
    assert cadence.slot("a", outstanding=9, busy=False, published=5) == Slot(0, False, 1)
    cadence.on_tasked("a")
    assert cadence.slot("a", outstanding=9, busy=False, published=5).busy  # already in it
    cadence.on_tasked("b")
    assert cadence.slot("c", outstanding=9, busy=False, published=5) == Slot(2, True, 1)
