"""``FakeClock``: an ``edge_agent.clock.Clock`` whose time moves only when a test says so.

    clock = FakeClock()
    async with Agent(..., clock=clock) as agent:
        sleeper = await clock.sleeper(lambda s: s.duration == 30.0)  # the heartbeat waits
        await clock.advance(sleeper.remaining)                       # and now it is due

``sleeper`` waits (in real time, bounded) until some part of the agent sleeps on the clock,
so a test advances time only once the agent is waiting for it — nothing time-driven can then
happen early, and nothing needs a real sleep to be observed. ``tick_s`` makes every
``monotonic()`` read move monotonic time on by that much (a stand-in for work that takes
time, e.g. training steps, so "how far did it get" is counted in reads, not in CPU speed);
wall time and sleepers are not moved by ticks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Sleeper:
    deadline: float
    order: int
    duration: float = field(compare=False)
    future: asyncio.Future[None] = field(compare=False, repr=False)
    clock: FakeClock = field(compare=False, repr=False)

    @property
    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock.now)

    @property
    def live(self) -> bool:
        return not self.future.done()


class FakeClock:
    def __init__(self, start: float | None = None, *, tick_s: float = 0.0) -> None:
        self._epoch = time.time() if start is None else start
        self.now = 0.0
        """Seconds since the clock was made (what sleepers are measured against)."""
        self._tick_s = tick_s
        self._ticks = 0.0
        self._lock = threading.Lock()
        self._heap: list[Sleeper] = []
        self._order = itertools.count()
        self._registered = asyncio.Event()
        self.durations: list[float] = []
        """Every sleep asked for, in order."""

    # -- the Clock protocol ------------------------------------------------------------------

    def wall(self) -> float:
        return self._epoch + self.now

    def monotonic(self) -> float:
        with self._lock:
            self._ticks += self._tick_s
            return self.now + self._ticks

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        sleeper = Sleeper(self.now + seconds, next(self._order), seconds, future, self)
        heapq.heappush(self._heap, sleeper)
        self.durations.append(seconds)
        self._registered.set()
        self._registered = asyncio.Event()
        await future

    # -- driving it --------------------------------------------------------------------------

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def sleepers(self) -> list[Sleeper]:
        """The sleeps still waiting, soonest first."""
        return sorted(s for s in self._heap if s.live)

    async def sleeper(self, predicate: Callable[[Sleeper], bool] = lambda s: True,
                      within: float = 10.0) -> Sleeper:
        """The soonest live sleeper that satisfies ``predicate``, once there is one (waiting
        at most ``within`` seconds of real time)."""
        async with asyncio.timeout(within):
            while True:
                for s in self.sleepers():
                    if predicate(s):
                        return s
                await self._registered.wait()

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking every sleeper due on the way in deadline order
        (each at its own deadline), and let the woken tasks run."""
        target = self.now + seconds
        while self._heap and self._heap[0].deadline <= target:
            sleeper = heapq.heappop(self._heap)
            if not sleeper.live:
                continue
            self.now = max(self.now, sleeper.deadline)
            sleeper.future.set_result(None)
            await _settle()
        self.now = max(self.now, target)
        await _settle()


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)
