"""The ``housekeeping`` task: what is due by the clock rather than by a message.

Every ``interval_s`` (0.25 s): tasks past their deadline leave the outstanding table (async
mode does not wait for a straggler; its late update is still ingested if not too stale); a
round that reached its deadline empty starts again, and one that reached it with updates wakes
the aggregator; the wall-clock stopping rule is checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping

from orchestrator.clock import Clock
from orchestrator.convergence.stopper import Stopper
from orchestrator.devices.selection import OutstandingTasks
from orchestrator.ingest.buffer_cache import Buffer
from orchestrator.versions.cadence import Cadence

__all__ = ["Housekeeping"]

INTERVAL_S = 0.25


class Housekeeping:
    def __init__(self, *, outstanding: OutstandingTasks, cadence: Cadence, buffer: Buffer,
                 stopper: Stopper, aggregate_due: asyncio.Event,
                 counters: MutableMapping[str, int], clock: Clock,
                 interval_s: float = INTERVAL_S) -> None:
        self._outstanding = outstanding
        self._cadence = cadence
        self._buffer = buffer
        self._stopper = stopper
        self._aggregate_due = aggregate_due
        self._counters = counters
        self._clock = clock
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            await self.tick()

    async def tick(self) -> None:
        now = self._clock.wall_ms()
        late = self._outstanding.expire(now)
        if late:
            self._counters["stragglers"] += len(late)
        if self._cadence.tick(now):
            self._counters["rounds.restarted"] += 1
        if self._cadence.ready(self._buffer.count, now):  # a deadline made a version due
            self._aggregate_due.set()
        await self._stopper.on_clock()
