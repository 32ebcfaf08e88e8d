"""``ActivityTracker``: the one holder of the device's current ``Activity``.

Parts change the activity only through it: ``set`` for what does not survive a restart
(pauses, training, the model's stopped flag), ``commit`` for what does (orders, deferral,
enrollment), saved before the change is visible. ``commit`` takes the transition, not its
result: the save yields, and a value computed before it would undo whatever another part
changed meanwhile (a training run ending while a deferral was being saved left the device
reporting itself as training for good). After every change it fires the shared
``changed`` pulse, and sets ``status_due`` when the state a heartbeat would report is not the
one last reported, so the heartbeat publishes at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from schemas import AgentState

from .activity import ACTIVITY_KEY, LEGACY_KEYS, Activity, restore
from .clock import Clock, wall_ms
from .shared import Pulse
from .state import LocalState

__all__ = ["ActivityTracker", "Transition"]

Transition = Callable[[Activity], Activity]
"""An event's effect on the activity (one of :class:`Activity`'s transition methods)."""

_log = logging.getLogger(__name__)


class ActivityTracker:
    def __init__(self, state: LocalState, activity: Activity, *, clock: Clock,
                 status_due: asyncio.Event, changed: Pulse) -> None:
        self._state = state
        self._activity = activity
        self._clock = clock
        self._status_due = status_due
        self._changed = changed
        self._own = Pulse()
        self._saving = asyncio.Lock()
        self.reported: tuple[AgentState, str] | None = None
        """What the last published status said (the heartbeat records it)."""

    @classmethod
    async def load(cls, state: LocalState, *, model_stopped: bool, clock: Clock,
                   status_due: asyncio.Event, changed: Pulse) -> ActivityTracker:
        """The activity saved in ``state``; a state file of an earlier version (orders in
        ``flags``, deferral in ``defer_until_ms``) is converted on the way."""
        record = await state.get(ACTIVITY_KEY)
        legacy = [await state.get(key) for key in LEGACY_KEYS]
        activity = restore(record, legacy_flags=legacy[0], legacy_defer_until_ms=legacy[1],
                           enrollment=await state.enrollment(), model_stopped=model_stopped)
        if record is None and any(value is not None for value in legacy):
            await _save(state, activity)
            _log.info("%s: orders and deferral moved to the %r record", state.path, ACTIVITY_KEY)
        return cls(state, activity, clock=clock, status_due=status_due, changed=changed)

    @property
    def current(self) -> Activity:
        """Read from the training thread too (one attribute read of a frozen value)."""
        return self._activity

    def may_send_updates(self) -> bool:
        return self._activity.may_send_updates

    def report(self) -> tuple[AgentState, str]:
        return self._activity.report(wall_ms(self._clock))

    def set(self, activity: Activity) -> None:
        """A change that is not saved (pause, training, the model's stopped flag)."""
        old = self._activity
        assert activity.durable_part() == old.durable_part(), "saved changes go through commit"
        assert activity.enrollment == old.enrollment, "saved changes go through commit"
        self._activity = activity
        self.touch()

    async def commit(self, change: Transition) -> Activity:
        """A change that survives a restart: saved first, then applied to the activity as it
        is by then (commits run one at a time, so only ``set`` changes can come between, and
        those touch no saved field). Returns the new activity."""
        async with self._saving:
            old = self._activity
            planned = change(old)
            if planned.enrollment != old.enrollment and planned.enrollment is not None:
                await self._state.set_enrollment(planned.enrollment)
            if planned.durable_part() != old.durable_part():
                await _save(self._state, planned)
            activity = change(self._activity)
            assert activity.durable_part() == planned.durable_part()
            self._activity = activity
        self.touch()
        return activity

    def touch(self) -> None:
        """Something changed: a status is due if the reported state moved."""
        if self.report() != self.reported:
            self._status_due.set()
        self._own.fire()
        self._changed.fire()

    async def wait_for(self, predicate: Callable[[Activity], bool]) -> Activity:
        """Wait until the activity satisfies ``predicate`` (bound it with ``clock.wait_for``)."""
        while not predicate(self._activity):
            await self._own.wait()
        return self._activity


async def _save(state: LocalState, activity: Activity) -> None:
    # the legacy keys go in the same transaction, so an older record can never win later
    await state.put_many({ACTIVITY_KEY: activity.to_record(),
                          **dict.fromkeys(LEGACY_KEYS)})
