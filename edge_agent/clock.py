"""Time for the agent: one small injectable object for wall time, monotonic time and sleep.

Every part of the agent reads the time and sleeps through a ``Clock`` it is handed, so tests
drive deferrals, heartbeats, retries and resend timeouts with a fake one instead of waiting.
``SystemClock`` is the real thing. ``wait_for`` is ``asyncio.wait_for`` on a given clock.

Waits that only bound real I/O at shutdown (the goodbye status, the shutdown grace period)
and the test-facing ``Agent.wait_until`` stay on the event loop's own time: a frozen fake clock
must never be able to hang a shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Clock", "SystemClock", "as_clock", "wait_for", "wall_ms"]

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch (message timestamps, deferrals, outbox times)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (intervals measured in the training thread);
        must be safe to call from any thread."""
        ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class SystemClock:
    """The real clock; ``wall_time`` may be replaced (a device with a skewed clock)."""

    wall_time: Callable[[], float] = time.time

    def wall(self) -> float:
        return self.wall_time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def as_clock(clock: Clock | Callable[[], float] | None) -> Clock:
    """A ``Clock`` from what an ``Agent`` was given: a clock, a bare wall-time function (the
    older form of the argument), or nothing (the real clock)."""
    if clock is None:
        return SystemClock()
    if isinstance(clock, Clock):
        return clock
    return SystemClock(clock)


def wall_ms(clock: Clock) -> int:
    return int(clock.wall() * 1000)


async def wait_for(clock: Clock, awaitable: Awaitable[T], seconds: float | None) -> T:
    """Await ``awaitable``, or cancel it and raise ``TimeoutError`` once ``seconds`` have
    passed on ``clock`` (None: no limit)."""
    if seconds is None:
        return await awaitable
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(max(0.0, seconds)))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():
        raise TimeoutError
    return work.result()
