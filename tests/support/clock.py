"""A fake :class:`orchestrator.clock.Clock`: time moves only when a test says so.

    clock = FakeClock()
    async with Orchestrator(config, clock=clock) as orch:
        ...
        await clock.advance(61)        # every loop sleeping until then wakes, in order
        await clock.advance(61, wait_for=("registry",))  # ... each registry poll run to its end

Wall time starts at the real time (devices stamp their messages with it, and a timestamp far
in the future is refused) and moves with the monotonic time.

A woken task gets a few loop iterations before time moves on, which is enough only for work
that never leaves the event loop: a loop that reads the store (an aiosqlite thread) or waits on
the broker may still be at it when time has passed its next deadline, and it then sleeps from
the later time, skipping the wake-ups in between. A test that needs a loop to have run at a
given time names its task in ``wait_for``: time then waits, in real time, for that task to be
asleep again before it moves, however slow the machine.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Collection

from tests.support.waiting import until


class FakeClock:
    def __init__(self, wall_ms: int | None = None, monotonic: float = 1000.0) -> None:
        self._wall0 = wall_ms if wall_ms is not None else time.time_ns() // 1_000_000
        self._mono0 = monotonic
        self._now = monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._asleep: dict[asyncio.Future[None], str] = {}  # the sleeping tasks' names
        self._order = itertools.count()
        self.slept: list[float] = []
        """Every duration asked of :meth:`sleep`, in order."""

    def wall_ms(self) -> int:
        return self._wall0 + round((self._now - self._mono0) * 1000)

    def monotonic(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        """Tasks waiting in :meth:`sleep` now."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def asleep(self, task: str) -> bool:
        """Whether the task named ``task`` is waiting in :meth:`sleep` now (not yet woken)."""
        return any(name == task and not f.done() for f, name in self._asleep.items())

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        current = asyncio.current_task()
        self._asleep[future] = current.get_name() if current is not None else ""
        try:
            await future
        finally:
            del self._asleep[future]

    async def advance(self, seconds: float, *, wait_for: Collection[str] = (),
                      within: float = 20.0) -> None:
        """Move time forward by ``seconds``, waking each sleeper due on the way at its own
        time, and let the woken tasks run until they wait again.

        ``wait_for``: names of tasks that loop on :meth:`sleep`; time moves (at the start and
        after each wake-up) only once each of them is asleep again, so each wakes at its own
        time and runs to its next sleep before time moves on (``TimeoutError`` if one is not
        asleep within ``within`` real seconds)."""
        target = self._now + seconds
        await self._until_asleep(wait_for, within)
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            if not future.done():
                future.set_result(None)
                await _settle()
                await self._until_asleep(wait_for, within)
        self._now = target
        await _settle()

    async def _until_asleep(self, tasks: Collection[str], within: float) -> None:
        if tasks:
            await until(lambda: all(self.asleep(t) for t in tasks), within=within, poll=0.001)


async def _settle(rounds: int = 20) -> None:
    """A few loop iterations: enough for woken tasks to run up to their next await."""
    for _ in range(rounds):
        await asyncio.sleep(0)
