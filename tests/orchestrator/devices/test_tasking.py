"""The tasking decision, without I/O: a heartbeat and a fleet view give a training task, an
evaluation task, a deferral (with its reason) or nothing."""

from __future__ import annotations

import dataclasses
import random

import pytest

from orchestrator.devices.selection import BasicSelection
from orchestrator.devices.tasking import (
    DORMANT_RETRY_MS,
    NO_MODEL_RETRY_MS,
    Evaluate,
    FleetView,
    Train,
    decide,
)
from schemas.messages import AgentState, Defer, Status

VIEW = FleetView(stopped=False, published=3, budget_left=True, evaluate=False, outstanding=0,
                 busy=False, version=3)


def _selection(**kw: object) -> BasicSelection:
    return BasicSelection(concurrency=2, retry_after_s=10.0, rng=random.Random(0), **kw)  # type: ignore[arg-type]


def test_an_idle_device_trains_on_the_view_version() -> None:
    assert decide("a", Status(), dataclasses.replace(VIEW, version=2), _selection(), 0) \
        == Train(2)


@pytest.mark.parametrize("state", [AgentState.TRAINING, AgentState.PAUSED, AgentState.OFFLINE,
                                   AgentState.STOPPED])
def test_a_heartbeat_that_is_not_an_ask_gets_no_answer(state: AgentState) -> None:
    stopped = dataclasses.replace(VIEW, stopped=True)  # not even the stop is repeated
    assert decide("a", Status(state=state), stopped, _selection(), 0) is None


def test_the_federation_state_comes_before_selection() -> None:
    selection = _selection()
    stopped = decide("a", Status(), dataclasses.replace(VIEW, stopped=True), selection, 0)
    assert stopped == Defer(DORMANT_RETRY_MS, "federation_stopped")
    unpublished = decide("a", Status(), dataclasses.replace(VIEW, published=None), selection, 0)
    assert unpublished == Defer(NO_MODEL_RETRY_MS, "no_model")
    spent = decide("a", Status(), dataclasses.replace(VIEW, budget_left=False), selection, 0)
    assert spent == Defer(DORMANT_RETRY_MS, "budget_exhausted")
    # none of these reached the policy: it recorded no participation
    assert selection.participation("a", 0) == 0


def test_evaluation_wins_over_training_when_the_version_wants_it() -> None:
    assert decide("a", Status(), dataclasses.replace(VIEW, evaluate=True), _selection(), 0) \
        == Evaluate(3)


def test_the_policy_defers_with_its_reason_and_then_stays_silent_until_the_retry() -> None:
    selection = _selection()
    full = dataclasses.replace(VIEW, outstanding=2)
    first = decide("a", Status(), full, selection, 1_000)
    assert isinstance(first, Defer) and first.reason == "concurrency"
    # asked again before the retry time: not answered (the device was told when to return)
    assert decide("a", Status(), full, selection, 1_000 + first.retry_after_ms // 2) is None
    later = 1_000 + first.retry_after_ms
    assert decide("a", Status(), VIEW, selection, later) == Train(3)


def test_a_weak_device_is_deferred_for_its_own_condition() -> None:
    answer = decide("a", Status(battery_pct=5.0), VIEW, _selection(min_battery_pct=20.0), 0)
    assert isinstance(answer, Defer) and answer.reason == "battery"
