"""Time as the service's loops see it: injected, so tests drive deadlines with a fake clock.

Every loop that waits or compares times is handed a :class:`Clock` instead of calling
``time.time``, ``time.monotonic`` or ``asyncio.sleep`` itself. Wall time (milliseconds since
the epoch) stamps messages, deadlines and audit rows; monotonic time paces loops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    def wall_ms(self) -> int:
        """Milliseconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
