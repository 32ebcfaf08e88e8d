"""The device's activity state machine: pure transitions, what a heartbeat reports, and what
survives a restart — including state files written before the machine existed."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge_agent.activity import ACTIVITY_KEY, Activity, Pause, restore
from edge_agent.agent import Agent
from edge_agent.data import LocalData
from edge_agent.errors import StateError
from edge_agent.records import Enrollment
from edge_agent.shared import Pulse
from edge_agent.state import LocalState
from edge_agent.tracker import ActivityTracker
from orchestrator.broker import pick_free_port
from schemas import AgentState, Bundle, ControlAction, EnrollStatus, Thermal
from tests.support.agent_clock import FakeClock

NOW = 1_000_000
ACTIVE = Enrollment(EnrollStatus.ACTIVE, 30.0)
LOW = Pause("battery_low", 20.0, Thermal.SERIOUS)


def test_a_new_device_is_idle_and_may_not_send_updates() -> None:
    fresh = Activity()
    assert fresh.report(NOW) == (AgentState.IDLE, "")
    assert fresh.stop_reason is None
    assert not fresh.enrolled and not fresh.may_send_updates and not fresh.rejected


@pytest.mark.parametrize(("status", "enrolled", "may_send", "reason"), [
    (EnrollStatus.ACTIVE, True, True, ""),
    (EnrollStatus.AWAITING_APPROVAL, True, False, "awaiting_approval"),
    (EnrollStatus.REJECTED, False, False, "rejected"),
])
def test_enrollment_outcomes(status: EnrollStatus, enrolled: bool, may_send: bool,
                             reason: str) -> None:
    after = Activity().on_enrolled(Enrollment(status, 12.0, "why"))
    assert after.enrolled is enrolled and after.may_send_updates is may_send
    assert after.rejected is (status is EnrollStatus.REJECTED)
    assert after.report(NOW) == (AgentState.IDLE, reason)
    assert after.enrollment == Enrollment(status, 12.0, "why")


def test_orders_stop_isolate_revoke_and_lift() -> None:
    base = Activity(enrollment=ACTIVE)
    stopped = base.on_order(ControlAction.STOP)
    assert stopped is not None and stopped.report(NOW) == (AgentState.STOPPED,
                                                          "federation_stopped")
    resumed = stopped.on_order(ControlAction.RESUME)
    assert resumed == base

    isolated = base.on_order(ControlAction.ISOLATE, "screening")
    assert isolated is not None and isolated.isolated == "screening"
    assert isolated.report(NOW) == (AgentState.STOPPED, "isolated")
    assert isolated.on_order(ControlAction.REINSTATE) == base
    assert base.on_order(ControlAction.ISOLATE) == dataclasses.replace(base, isolated="isolated")

    revoked = base.on_order(ControlAction.REVOKE, "lost device")
    assert revoked is not None and revoked.revoked == "lost device"
    assert revoked.stop_reason == "revoked"
    # a revoked device stays revoked: no order lifts it
    assert revoked.on_order(ControlAction.RESUME) == revoked
    assert revoked.on_order(ControlAction.REINSTATE) == revoked


@pytest.mark.parametrize("action", [ControlAction.RECONFIGURE, ControlAction.ROTATE_KEY])
def test_orders_that_are_not_about_the_activity(action: ControlAction) -> None:
    assert Activity().on_order(action, "x") is None


def test_stop_reasons_in_priority_order() -> None:
    everything = Activity(enrollment=ACTIVE, revoked="r", isolated="i", federation_stopped=True,
                          model_stopped=True)
    assert everything.stop_reason == "revoked"
    assert dataclasses.replace(everything, revoked=None).stop_reason == "isolated"
    assert dataclasses.replace(everything, revoked=None, isolated=None,
                               federation_stopped=False).stop_reason == "federation_stopped"


def test_a_stopped_model_stops_the_device_until_a_running_one_arrives() -> None:
    held = Activity(enrollment=ACTIVE).on_model(stopped=True)
    assert held.report(NOW) == (AgentState.STOPPED, "federation_stopped")
    # resume lifts the order, not the model's own flag
    resumed = held.on_order(ControlAction.RESUME)
    assert resumed is not None and resumed.stop_reason == "federation_stopped"
    assert held.on_model(stopped=False).report(NOW) == (AgentState.IDLE, "")


def test_the_model_republished_running_lifts_a_stop_whose_resume_was_missed() -> None:
    stopped = Activity(enrollment=ACTIVE).on_model(stopped=True)
    stopped = stopped.on_order(ControlAction.STOP) or stopped
    stopped = stopped.on_defer(NOW, 3_600_000)
    assert stopped.federation_stopped
    running = stopped.on_model(stopped=False)  # no Control(resume) came
    assert running.report(NOW) == (AgentState.IDLE, "")
    assert not running.federation_stopped and running.deferred_until_ms == 0
    # a model that was never stopped does not lift a stop order
    ordered = Activity(enrollment=ACTIVE).on_order(ControlAction.STOP)
    assert ordered is not None and ordered.on_model(stopped=False).federation_stopped


def test_report_priority_stopped_training_paused_deferred_idle() -> None:
    a = Activity(enrollment=ACTIVE).on_defer(NOW, 5_000).on_pause(LOW)
    a = a.on_training_started("t1")
    assert a.report(NOW) == (AgentState.TRAINING, "")
    assert a.paused is None  # training clears a pause
    a = a.on_pause(LOW)
    assert a.report(NOW) == (AgentState.TRAINING, "")
    a = a.on_training_ended()
    assert a.report(NOW) == (AgentState.PAUSED, "battery_low")
    a = a.on_conditions_met()
    assert a.report(NOW) == (AgentState.DEFERRED, "deferred")
    assert a.report(NOW + 5_000) == (AgentState.IDLE, "")
    stopped = a.on_training_started("t2").on_order(ControlAction.STOP)
    assert stopped is not None and stopped.report(NOW)[0] is AgentState.STOPPED


def test_a_deferral_ends_at_its_retry_time() -> None:
    deferred = Activity(enrollment=ACTIVE).on_defer(NOW, 800)
    assert deferred.deferred_until_ms == NOW + 800
    assert deferred.report(NOW + 799) == (AgentState.DEFERRED, "deferred")
    assert deferred.report(NOW + 800) == (AgentState.IDLE, "")
    assert Activity().on_defer(NOW, -50).deferred_until_ms == NOW  # never into the past
    # a later Defer replaces the earlier one, even a shorter one
    assert deferred.on_defer(NOW + 100, 0).report(NOW + 100) == (AgentState.IDLE, "")


def test_an_activity_is_a_value() -> None:
    a = Activity()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.training = "t"
    assert a.on_training_started("t") is not a and a.training == ""


# -- what survives a restart --------------------------------------------------------------------


def test_record_round_trip_keeps_orders_and_deferral_only() -> None:
    a = Activity(enrollment=ACTIVE, revoked=None, isolated="screening", federation_stopped=True,
                 model_stopped=True, deferred_until_ms=NOW, paused=LOW, training="t1")
    back = restore(a.to_record(), enrollment=ACTIVE, model_stopped=True)
    assert back == dataclasses.replace(a, paused=None, training="")


def test_restore_reads_the_flags_of_older_state_files() -> None:
    old = restore(None, legacy_flags={"revoked": "lost", "isolated": "why",
                                      "federation_stopped": True},
                  legacy_defer_until_ms=NOW)
    assert (old.revoked, old.isolated, old.federation_stopped) == ("lost", "why", True)
    assert old.deferred_until_ms == NOW
    assert restore(None) == Activity()
    # the new record wins over leftovers
    new = restore(Activity().to_record(), legacy_flags={"isolated": "old"})
    assert new.isolated is None


@pytest.mark.parametrize("record", [[1, 2], {"deferred_until_ms": "soon"}, "flags"])
def test_a_malformed_record_is_a_state_error(record: object) -> None:
    with pytest.raises(StateError, match="activity is malformed"):
        restore(record)


def _open(path: Path) -> LocalState:
    return LocalState(path, device_id="dev-m", fed="fedm")


async def _load(state: LocalState, clock: FakeClock) -> ActivityTracker:
    return await ActivityTracker.load(state, model_stopped=False, clock=clock,
                                      status_due=asyncio.Event(), changed=Pulse())


async def _write_old_state(path: Path, *, defer_until_ms: int) -> None:
    """A state file as the agent wrote it before the activity record existed."""
    async with _open(path) as state:
        await state.set_enrollment(ACTIVE)
        await state.put("flags", {"isolated": "quarantine", "federation_stopped": True})
        await state.put("defer_until_ms", defer_until_ms)


async def test_an_older_state_file_is_converted_on_open(tmp_path: Path,
                                                        fake_clock: FakeClock) -> None:
    path = tmp_path / "agent.db"
    until = fake_clock.wall_ms() + 60_000
    await _write_old_state(path, defer_until_ms=until)
    async with _open(path) as state:
        tracker = await _load(state, fake_clock)
        expected = Activity(enrollment=ACTIVE, isolated="quarantine", federation_stopped=True,
                            deferred_until_ms=until)
        assert tracker.current == expected
        assert await state.get("flags") is None and await state.get("defer_until_ms") is None
        assert await state.get(ACTIVITY_KEY) == expected.to_record()
        # later changes are saved in the new record only
        await tracker.commit(lambda a: a.on_order(ControlAction.REINSTATE) or a)
    async with _open(path) as state:
        again = await _load(state, fake_clock)
        assert again.current == dataclasses.replace(expected, isolated=None)
        assert await state.get("flags") is None


async def test_an_agent_starts_from_an_older_state_file(
    tmp_path: Path, shard: LocalData, fake_clock: FakeClock,
) -> None:
    path = tmp_path / "agent.db"
    until = fake_clock.wall_ms() + 60_000
    await _write_old_state(path, defer_until_ms=until)
    # no broker listens there: the agent only reconnects (on the fake clock) meanwhile
    bundle = Bundle(device_id="dev-m", fed="fedm", broker_host="127.0.0.1",
                    broker_port=pick_free_port(), mqtt_username="dev-m", mqtt_password="pw",
                    orchestrator_key=bytes(SigningKey.generate().verify_key).hex(),
                    enroll_secret="11" * 32)
    async with Agent(bundle, shard, path, clock=fake_clock,
                     backoff_rng=random.Random(1)) as agent:
        assert agent.state == (AgentState.STOPPED, "isolated")
        assert agent.defer_until_ms == until
        assert agent.enrollment == ACTIVE
        assert await agent.local_state.get("flags") is None


async def test_a_change_made_while_a_commit_is_being_saved_is_kept(
    tmp_path: Path, fake_clock: FakeClock,
) -> None:
    # the orchestrator's deferral arrives just as a training run ends: the deferral's save
    # yields, and the end of training must not be undone when it lands (it once was, and the
    # device reported itself training, so never asked for work again)
    async with _open(tmp_path / "agent.db") as state:
        tracker = await _load(state, fake_clock)
        tracker.set(tracker.current.on_training_started("t-1"))
        now = fake_clock.wall_ms()
        saving = asyncio.ensure_future(tracker.commit(lambda a: a.on_defer(now, 5_000)))
        await asyncio.sleep(0)  # the commit is now waiting for its save (a thread hop)
        assert not saving.done()
        tracker.set(tracker.current.on_training_ended())
        after = await saving
        assert after.training == "" and tracker.current.training == ""
        assert tracker.current.deferred_until_ms == now + 5_000
        assert tracker.report()[0] is AgentState.DEFERRED
