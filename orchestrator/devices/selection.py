"""Who trains next: a selection policy (pure) and the table of outstanding tasks.

The policy sees one device's heartbeat plus how busy the federation is and answers
:class:`Selected` or :class:`Deferred`; it does no I/O and keeps no clock of its own. The
service turns a selection into a signed ``Task`` and a deferral into a ``Defer``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from schemas.messages import AgentState, Status, Thermal

if TYPE_CHECKING:
    from orchestrator.config import Config

__all__ = [
    "THERMAL_ORDER",
    "BasicSelection",
    "Decision",
    "Deferred",
    "Outstanding",
    "OutstandingTasks",
    "Selected",
    "SelectionPolicy",
    "selection_from_config",
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
    """Who may train now, answered per heartbeat.

    Eligible: the device reports idle (or deferred) and has no outstanding task; it is enrolled
    and in good standing (``device_ok``); it has privacy budget left (``budget_left``); its
    battery is at least ``min_battery_pct`` or it is charging; its temperature is at most
    ``max_thermal``; it is on an unmetered network (with ``require_unmetered``); it has at
    least ``min_free_mem_mb`` free; it trained fewer than ``max_tasks_per_window`` times in
    the last ``window_s``; and fewer than ``concurrency`` tasks are outstanding.

    Fairness: the last ``fair_reserve`` share of the concurrency goes only to *preferred*
    devices — those that took part no more than the average device in the window, or whose
    reported label histogram (``Status.label_counts``, metadata only) leans on labels the
    federation's recent tasks under-represent (see :meth:`label_novelty`).

    Anything else is deferred for about ``retry_after_s`` (±20 % jitter, so a fleet told
    "later" does not return at once); a device at its participation cap is deferred until
    its oldest participation leaves the window. A device that was deferred is not answered
    again before its retry time: its heartbeats in between are not asks.
    """

    concurrency: int
    retry_after_s: float
    min_battery_pct: float = 20.0
    max_thermal: Thermal = Thermal.FAIR
    busy_retry_s: float = 2.0
    """A device that says it is idle while its task is outstanding has most likely just sent
    the update: it is asked back soon, not after the full retry time."""
    rng: random.Random = field(default_factory=random.Random)
    require_unmetered: bool = False
    min_free_mem_mb: float | None = None
    max_tasks_per_window: int | None = None
    window_s: float = 3600.0
    fair_reserve: float = 0.0
    novelty_threshold: float = 0.5
    budget_left: Callable[[str], bool] | None = None
    """Whether the device may still spend privacy budget (e.g. ``DeviceLedger.budget_left``)."""
    device_ok: Callable[[str], str | None] | None = None
    """None when the device is enrolled and in good standing, else the reason it is not."""
    _retry_at: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _tasked: dict[str, deque[int]] = field(default_factory=dict, init=False, repr=False)
    _labels: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.concurrency <= 0 or self.retry_after_s <= 0 or self.window_s <= 0:
            raise ValueError("concurrency, retry_after_s and window_s must be > 0")
        if not 0 <= self.fair_reserve < 1:
            raise ValueError("fair_reserve must be in [0, 1)")
        if self.max_tasks_per_window is not None and self.max_tasks_per_window <= 0:
            raise ValueError("max_tasks_per_window must be > 0")

    def decide(
        self, device_id: str, status: Status, *, outstanding: int, busy: bool, now_ms: int
    ) -> Decision:
        if status.state not in _ASKING:
            return None
        if now_ms < self._retry_at.get(device_id, 0):
            return None
        self._expire(device_id, now_ms)
        reason = self._why_not(device_id, status, outstanding=outstanding, busy=busy,
                               now_ms=now_ms)
        if reason is None:
            self._retry_at.pop(device_id, None)
            self._record(device_id, status, now_ms)
            return Selected()
        base_ms = self.retry_after_s * 1000
        if reason == "busy":
            base_ms = min(base_ms, self.busy_retry_s * 1000)
        delay = int(base_ms * self.rng.uniform(0.8, 1.2))
        if reason == "participation_cap":
            # come back when the oldest participation leaves the window, not before
            free_at = self._tasked[device_id][0] + int(self.window_s * 1000)
            delay = max(delay, free_at - now_ms + 1)
        # answer again a little before the device's own retry, so its next ask is heard
        self._retry_at[device_id] = now_ms + int(delay * 0.9)
        return Deferred(delay, reason)

    def forget(self, device_id: str) -> None:
        self._retry_at.pop(device_id, None)

    def unfit(self, status: Status) -> str | None:
        """What in the device's own condition rules out work now (battery, heat, a metered
        link, memory), or None. Also used before handing out an evaluation task."""
        battery = status.battery_pct
        if battery is not None and battery < self.min_battery_pct and not status.charging:
            return "battery"
        if THERMAL_ORDER.index(status.thermal) > THERMAL_ORDER.index(self.max_thermal):
            return "thermal"
        if self.require_unmetered and status.metered:
            return "metered"
        free = status.free_mem_mb
        if self.min_free_mem_mb is not None and free is not None and free < self.min_free_mem_mb:
            return "memory"
        return None

    def participation(self, device_id: str, now_ms: int) -> int:
        """Tasks given to the device within the window ending at ``now_ms``."""
        self._expire(device_id, now_ms)
        return len(self._tasked.get(device_id, ()))

    def label_novelty(self, label_counts: Mapping[str, int]) -> float:
        """How much a device's label mix leans on labels that recent tasks under-represent:
        ``Σ_c h_c · max(0, u − s_c) / u`` over its normalised histogram ``h``, with ``s`` the
        share of each label in what was tasked so far and ``u`` the uniform share. 0: nothing
        new; 1: all its labels are absent so far. No histogram: 0 (nothing to judge by)."""
        total = sum(v for v in label_counts.values() if v > 0)
        if total <= 0:
            return 0.0
        labels = set(self._labels) | {k for k, v in label_counts.items() if v > 0}
        uniform = 1.0 / len(labels)
        seen = sum(self._labels.values())
        novelty = 0.0
        for label, count in label_counts.items():
            if count <= 0:
                continue
            share = self._labels.get(label, 0.0) / seen if seen > 0 else 0.0
            novelty += count / total * max(0.0, uniform - share) / uniform
        return novelty

    def preferred(self, device_id: str, status: Status, now_ms: int) -> bool:
        """Under-represented: no more participations than the average device in the window,
        or a label mix with novelty at least ``novelty_threshold``."""
        for device in self._tasked:
            self._expire(device, now_ms)
        counts = [len(times) for times in self._tasked.values()]
        if device_id not in self._tasked:
            counts.append(0)
        mine = self.participation(device_id, now_ms)
        if mine <= sum(counts) / len(counts):
            return True
        return self.label_novelty(status.label_counts) >= self.novelty_threshold

    # -- internals ----------------------------------------------------------------------------

    def _expire(self, device_id: str, now_ms: int) -> None:
        times = self._tasked.get(device_id)
        if times is None:
            return
        horizon = now_ms - int(self.window_s * 1000)
        while times and times[0] <= horizon:
            times.popleft()

    def _record(self, device_id: str, status: Status, now_ms: int) -> None:
        self._tasked.setdefault(device_id, deque()).append(now_ms)
        total = sum(v for v in status.label_counts.values() if v > 0)
        if total > 0:
            # each task adds one unit spread over the device's labels: a big data set does
            # not by itself make its labels look well covered
            for label, count in status.label_counts.items():
                if count > 0:
                    self._labels[label] = self._labels.get(label, 0.0) + count / total

    def _why_not(self, device_id: str, status: Status, *, outstanding: int, busy: bool,
                 now_ms: int) -> str | None:
        if busy:
            return "busy"
        if self.device_ok is not None:
            problem = self.device_ok(device_id)
            if problem is not None:
                return problem
        if self.budget_left is not None and not self.budget_left(device_id):
            return "privacy_budget"
        unfit = self.unfit(status)
        if unfit is not None:
            return unfit
        cap = self.max_tasks_per_window
        if cap is not None and len(self._tasked.get(device_id, ())) >= cap:
            return "participation_cap"
        if outstanding >= self.concurrency:
            return "concurrency"
        open_slots = self.concurrency - math.ceil(self.concurrency * self.fair_reserve)
        if outstanding >= open_slots and not self.preferred(device_id, status, now_ms):
            return "fairness"
        return None


def selection_from_config(
    config: Config,
    *,
    rng: random.Random | None = None,
    budget_left: Callable[[str], bool] | None = None,
    device_ok: Callable[[str], str | None] | None = None,
) -> BasicSelection:
    """The policy the ``[selection]`` and ``[training]`` sections describe."""
    sel, t = config.selection, config.training
    return BasicSelection(
        concurrency=sel.concurrency, retry_after_s=sel.retry_after_s,
        min_battery_pct=t.min_battery_pct, max_thermal=Thermal(t.max_thermal),
        rng=rng or random.Random(), require_unmetered=sel.require_unmetered,
        min_free_mem_mb=sel.min_free_mem_mb, max_tasks_per_window=sel.max_tasks_per_window,
        window_s=sel.window_s, fair_reserve=sel.fair_reserve,
        novelty_threshold=sel.novelty_threshold, budget_left=budget_left, device_ok=device_ok,
    )


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
