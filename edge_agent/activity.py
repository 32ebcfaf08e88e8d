"""What the device is doing: a pure, typed state machine (no I/O, no clock of its own).

An ``Activity`` is a frozen value; every event the agent meets (an ``Enrolled``, a control
order, a ``Defer``, a model, a pause, a training run) is a method returning the next value.
``report(now_ms)`` is what a heartbeat says, by priority:

1. ``stopped`` — revoked, isolated, or the federation stopped (by order or by the model);
2. ``training`` — a task is running;
3. ``paused`` — the last task's conditions failed (battery, heat) and have not recovered;
4. ``deferred`` — the orchestrator said "come back after T" and T has not come;
5. ``idle`` — with the enrollment status as the reason until the enrollment is active.

The orders and the deferral survive a restart (``to_record`` / ``restore``); enrollment is
kept in its own record, pauses and training are not kept at all. State files written before
this module stored the orders as a ``flags`` map and the deferral as ``defer_until_ms``:
``restore`` reads those too, and the next save replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from schemas import AgentState, ControlAction, EnrollStatus, Reason, Thermal

from .errors import StateError
from .records import Enrollment

__all__ = ["ACTIVITY_KEY", "LEGACY_KEYS", "Activity", "Pause", "restore"]

ACTIVITY_KEY = "activity"
LEGACY_KEYS = ("flags", "defer_until_ms")
"""Where state files of earlier versions kept the orders and the deferral."""

REVOKED = "revoked"
ISOLATED = "isolated"
FEDERATION_STOPPED = Reason.FEDERATION_STOPPED.value


@dataclass(frozen=True, slots=True)
class Pause:
    """Why training is paused, and the task conditions that must hold again to end it."""

    why: str
    min_battery_pct: float
    max_thermal: Thermal


@dataclass(frozen=True, slots=True)
class Activity:
    enrollment: Enrollment | None = None
    revoked: str | None = None
    """The orchestrator's reason, once revoked."""
    isolated: str | None = None
    federation_stopped: bool = False
    """By a ``Control(stop)``, until a ``Control(resume)``."""
    model_stopped: bool = False
    """The model held says the federation stopped."""
    deferred_until_ms: int = 0
    paused: Pause | None = None
    training: str = ""
    """The id of the task being trained, or empty."""

    # -- what it means -----------------------------------------------------------------------

    @property
    def stop_reason(self) -> str | None:
        """Why no task may run (``revoked``, ``isolated``, ``federation_stopped``), or None."""
        if self.revoked:
            return REVOKED
        if self.isolated:
            return ISOLATED
        if self.federation_stopped or self.model_stopped:
            return FEDERATION_STOPPED
        return None

    @property
    def enrolled(self) -> bool:
        """The orchestrator knows our key (active, or held for approval)."""
        e = self.enrollment
        return e is not None and e.status in (EnrollStatus.ACTIVE, EnrollStatus.AWAITING_APPROVAL)

    @property
    def may_send_updates(self) -> bool:
        e = self.enrollment
        return e is not None and e.status is EnrollStatus.ACTIVE

    @property
    def rejected(self) -> bool:
        e = self.enrollment
        return e is not None and e.status is EnrollStatus.REJECTED

    def deferred_at(self, now_ms: int) -> bool:
        return now_ms < self.deferred_until_ms

    def report(self, now_ms: int) -> tuple[AgentState, str]:
        """``(state, reason)`` as the next heartbeat says it."""
        stopped = self.stop_reason
        if stopped is not None:
            return AgentState.STOPPED, stopped
        if self.training:
            return AgentState.TRAINING, ""
        if self.paused is not None:
            return AgentState.PAUSED, self.paused.why
        if self.deferred_at(now_ms):
            return AgentState.DEFERRED, "deferred"
        if self.enrollment is not None and self.enrollment.status is not EnrollStatus.ACTIVE:
            return AgentState.IDLE, self.enrollment.status.value
        return AgentState.IDLE, ""

    # -- transitions -------------------------------------------------------------------------

    def on_enrolled(self, enrollment: Enrollment) -> Activity:
        return replace(self, enrollment=enrollment)

    def on_order(self, action: ControlAction, reason: str = "") -> Activity | None:
        """The activity after a control order, or None for an order that is not about it
        (``reconfigure``, and orders this agent does not know)."""
        if action is ControlAction.REVOKE:
            return replace(self, revoked=reason or REVOKED)
        if action is ControlAction.ISOLATE:
            return replace(self, isolated=reason or ISOLATED)
        if action is ControlAction.REINSTATE:
            return replace(self, isolated=None)
        if action is ControlAction.STOP:
            return replace(self, federation_stopped=True)
        if action is ControlAction.RESUME:
            # lifts what the stop set: the flag and the deferral it answered asks with (the
            # model's own ``stopped`` goes when the model is republished without it)
            return replace(self, federation_stopped=False, deferred_until_ms=0)
        return None

    def on_defer(self, now_ms: int, retry_after_ms: int) -> Activity:
        return replace(self, deferred_until_ms=now_ms + max(0, retry_after_ms))

    def on_model(self, stopped: bool) -> Activity:
        if self.model_stopped and not stopped:
            # the stopped model republished without the flag: the federation resumed. The
            # retained model reaches a device that missed Control(resume) (offline, or sent
            # before the orchestrator's link was up), so it lifts the stop as that would.
            return replace(self, model_stopped=False, federation_stopped=False,
                           deferred_until_ms=0)
        return replace(self, model_stopped=stopped)

    def on_pause(self, pause: Pause) -> Activity:
        return replace(self, paused=pause)

    def on_conditions_met(self) -> Activity:
        return replace(self, paused=None)

    def on_training_started(self, task_id: str) -> Activity:
        return replace(self, training=task_id, paused=None)

    def on_training_ended(self) -> Activity:
        return replace(self, training="")

    # -- what survives a restart ---------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {"revoked": self.revoked, "isolated": self.isolated,
                "federation_stopped": self.federation_stopped,
                "deferred_until_ms": self.deferred_until_ms}

    def durable_part(self) -> tuple[str | None, str | None, bool, int]:
        """What ``to_record`` keeps (a change here is a change to save)."""
        return self.revoked, self.isolated, self.federation_stopped, self.deferred_until_ms


def restore(record: Any, *, legacy_flags: Any = None, legacy_defer_until_ms: Any = None,
            enrollment: Enrollment | None = None, model_stopped: bool = False) -> Activity:
    """The activity a restart begins with: from ``record`` (``to_record``'s output) when there
    is one, else from the ``flags`` / ``defer_until_ms`` values of an older state file."""
    try:
        if record is not None:
            orders = _from_record(record)
        else:
            orders = _from_legacy(legacy_flags or {}, legacy_defer_until_ms or 0)
    except (TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"stored activity is malformed ({exc})", reason="malformed") from None
    return replace(orders, enrollment=enrollment, model_stopped=model_stopped)


def _from_record(record: dict[str, Any]) -> Activity:
    return Activity(revoked=_reason(record.get("revoked")),
                    isolated=_reason(record.get("isolated")),
                    federation_stopped=bool(record.get("federation_stopped", False)),
                    deferred_until_ms=int(record.get("deferred_until_ms", 0)))


def _from_legacy(flags: dict[str, Any], defer_until_ms: Any) -> Activity:
    # the old flags map held a reason string (revoked, isolated) or True (federation_stopped)
    return Activity(revoked=_reason(flags.get("revoked")),
                    isolated=_reason(flags.get("isolated")),
                    federation_stopped=bool(flags.get("federation_stopped")),
                    deferred_until_ms=int(defer_until_ms))


def _reason(value: Any) -> str | None:
    if value is None or value is False or value == "":
        return None
    return value if isinstance(value, str) else str(value)
