"""Who trains next: a selection policy (pure) and the table of outstanding tasks.

The policy sees one device's heartbeat plus how busy the federation is and answers
:class:`Selected` or :class:`Deferred`; it does no I/O and keeps no clock of its own. The
service turns a selection into a signed ``Task`` and a deferral into a ``Defer``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from schemas.messages import AgentState, Status, Thermal

__all__ = [
    "THERMAL_ORDER",
    "BasicSelection",
    "Decision",
    "Deferred",
    "Outstanding",
    "OutstandingTasks",
    "Selected",
    "SelectionPolicy",
]

THERMAL_ORDER = (Thermal.NOMINAL, Thermal.FAIR, Thermal.SERIOUS, Thermal.CRITICAL)
_ASKING = frozenset({AgentState.IDLE, AgentState.DEFERRED})


@dataclass(frozen=True, slots=True)
class Selected:
    """Give this device a training task."""


@dataclass(frozen=True, slots=True)
class Deferred:
    retry_after_ms: int
    reason: str


Decision = Selected | Deferred | None
"""``None``: the heartbeat is not an ask (the device is busy, paused or offline): no answer."""


class SelectionPolicy(Protocol):
    def decide(
        self, device_id: str, status: Status, *, outstanding: int, busy: bool, now_ms: int
    ) -> Decision: ...


@dataclass
class BasicSelection:
    """Eligible: the device reports idle (or deferred), has no outstanding task, its battery is
    at least ``min_battery_pct`` or it is charging, its temperature at most ``max_thermal``;
    and fewer than ``concurrency`` tasks are outstanding. Anything else is deferred for
    ``retry_after_s`` (with ±20 % jitter, so a fleet told "later" does not return at once).

    A device that was deferred is not answered again before its retry time: its heartbeats
    in between are not asks.
    """

    concurrency: int
    retry_after_s: float
    min_battery_pct: float = 20.0
    max_thermal: Thermal = Thermal.FAIR
    busy_retry_s: float = 2.0
    """A device that says it is idle while its task is outstanding has most likely just sent
    the update: it is asked back soon, not after the full retry time."""
    rng: random.Random = field(default_factory=random.Random)
    _retry_at: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def decide(
        self, device_id: str, status: Status, *, outstanding: int, busy: bool, now_ms: int
    ) -> Decision:
        if status.state not in _ASKING:
            return None
        if now_ms < self._retry_at.get(device_id, 0):
            return None
        reason = self._why_not(status, outstanding=outstanding, busy=busy)
        if reason is None:
            self._retry_at.pop(device_id, None)
            return Selected()
        base = self.retry_after_s
        if reason == "busy":
            base = min(base, self.busy_retry_s)
        delay = int(base * 1000 * self.rng.uniform(0.8, 1.2))
        # answer again a little before the device's own retry, so its next ask is heard
        self._retry_at[device_id] = now_ms + int(delay * 0.9)
        return Deferred(delay, reason)

    def forget(self, device_id: str) -> None:
        self._retry_at.pop(device_id, None)

    def _why_not(self, status: Status, *, outstanding: int, busy: bool) -> str | None:
        if busy:
            return "busy"
        battery = status.battery_pct
        if battery is not None and battery < self.min_battery_pct and not status.charging:
            return "battery"
        if THERMAL_ORDER.index(status.thermal) > THERMAL_ORDER.index(self.max_thermal):
            return "thermal"
        if outstanding >= self.concurrency:
            return "concurrency"
        return None


@dataclass(frozen=True, slots=True)
class Outstanding:
    device_id: str
    task_id: str
    model_version: int
    deadline_ms: int


class OutstandingTasks:
    """Tasks handed out and not yet answered by an update. A straggler past its deadline is
    dropped from the table (async mode does not wait for it; its late update is still
    ingested if not too stale)."""

    def __init__(self) -> None:
        self._by_device: dict[str, Outstanding] = {}

    def __len__(self) -> int:
        return len(self._by_device)

    def busy(self, device_id: str) -> bool:
        return device_id in self._by_device

    def get(self, device_id: str) -> Outstanding | None:
        return self._by_device.get(device_id)

    def add(self, task: Outstanding) -> None:
        self._by_device[task.device_id] = task

    def complete(self, device_id: str) -> Outstanding | None:
        return self._by_device.pop(device_id, None)

    def expire(self, now_ms: int) -> list[Outstanding]:
        late = [t for t in self._by_device.values() if t.deadline_ms <= now_ms]
        for t in late:
            del self._by_device[t.device_id]
        return late

    def clear(self) -> None:
        self._by_device.clear()

    def devices(self) -> list[str]:
        return list(self._by_device)
