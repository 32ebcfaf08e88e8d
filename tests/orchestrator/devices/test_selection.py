"""The basic selection policy and the outstanding-task table (pure, frozen clock)."""

from __future__ import annotations

import random

from orchestrator.devices.selection import (
    BasicSelection,
    Deferred,
    Outstanding,
    OutstandingTasks,
    Selected,
)
from schemas import AgentState, Status, Thermal


def _policy(**kw: object) -> BasicSelection:
    return BasicSelection(concurrency=2, retry_after_s=10.0, rng=random.Random(1), **kw)  # type: ignore[arg-type]


def test_an_eligible_idle_device_is_selected() -> None:
    policy = _policy()
    assert policy.decide("a", Status(battery_pct=50.0), outstanding=0, busy=False,
                         now_ms=0) == Selected()
    assert policy.decide("b", Status(state=AgentState.DEFERRED), outstanding=1, busy=False,
                         now_ms=0) == Selected()


def test_reasons_to_defer() -> None:
    policy = _policy(min_battery_pct=30.0, max_thermal=Thermal.FAIR)
    cases = {
        "busy": (Status(), 0, True),
        "battery": (Status(battery_pct=10.0), 0, False),
        "thermal": (Status(thermal=Thermal.SERIOUS), 0, False),
        "concurrency": (Status(), 2, False),
    }
    for i, (reason, (status, outstanding, busy)) in enumerate(cases.items()):
        decision = policy.decide(f"d{i}", status, outstanding=outstanding, busy=busy, now_ms=0)
        assert isinstance(decision, Deferred) and decision.reason == reason
        low, high = (1600, 2400) if reason == "busy" else (8000, 12000)
        assert low <= decision.retry_after_ms <= high
    charging = Status(battery_pct=10.0, charging=True)
    assert policy.decide("c", charging, outstanding=0, busy=False, now_ms=0) == Selected()


def test_no_answer_to_non_asks_or_before_the_retry_time() -> None:
    policy = _policy()
    for state in (AgentState.TRAINING, AgentState.PAUSED, AgentState.OFFLINE):
        assert policy.decide("a", Status(state=state), outstanding=0, busy=False,
                             now_ms=0) is None
    first = policy.decide("a", Status(), outstanding=5, busy=False, now_ms=0)
    assert isinstance(first, Deferred)
    assert policy.decide("a", Status(), outstanding=0, busy=False, now_ms=1000) is None
    later = first.retry_after_ms
    assert policy.decide("a", Status(), outstanding=0, busy=False, now_ms=later) == Selected()


def test_outstanding_tasks_expire_at_their_deadline() -> None:
    table = OutstandingTasks()
    table.add(Outstanding("a", "t1", 0, deadline_ms=100))
    table.add(Outstanding("b", "t2", 0, deadline_ms=200))
    assert len(table) == 2 and table.busy("a")
    assert [t.device_id for t in table.expire(150)] == ["a"]
    assert not table.busy("a") and table.busy("b")
    assert table.complete("b") is not None and len(table) == 0
