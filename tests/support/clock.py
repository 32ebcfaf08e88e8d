"""A fake :class:`orchestrator.clock.Clock`: time moves only when a test says so.

    clock = FakeClock()
    async with Orchestrator(config, clock=clock) as orch:
        ...
        await clock.advance(61)        # every loop sleeping until then wakes, in order

Wall time starts at the real time (devices stamp their messages with it, and a timestamp far
in the future is refused) and moves with the monotonic time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class FakeClock:
    def __init__(self, wall_ms: int | None = None, monotonic: float = 1000.0) -> None:
        self._wall0 = wall_ms if wall_ms is not None else time.time_ns() // 1_000_000
        self._mono0 = monotonic
        self._now = monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
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

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper due on the way at its own
        time, and let the woken tasks run until they wait again."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            if not future.done():
                future.set_result(None)
                await _settle()
        self._now = target
        await _settle()


async def _settle(rounds: int = 20) -> None:
    """A few loop iterations: enough for woken tasks to run up to their next await."""
    for _ in range(rounds):
        await asyncio.sleep(0)
