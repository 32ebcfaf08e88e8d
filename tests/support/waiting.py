"""Waiting for what a test expects to happen: a condition, with a generous bound.

Waits are for positive evidence only. That something did *not* happen is checked after a
round trip proving the service handled the message before it (see ``SimDevice.barrier``),
never after a fixed sleep, which passes vacuously on a slow machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(predicate: Callable[[], bool], within: float = 20.0, poll: float = 0.01
                ) -> None:
    """Return once ``predicate()`` holds; ``TimeoutError`` after ``within`` seconds."""
    async with asyncio.timeout(within):
        # polled: the conditions are counters and views of the service, with no event
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(poll)
