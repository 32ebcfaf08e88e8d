"""Exponential backoff with full jitter, with the sleep and the randomness injected."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from .errors import ConfigError

Sleep = Callable[[float], Awaitable[None]]


class Backoff:
    """Delay before attempt ``n`` (0-based): uniform in ``[0, min(cap, base · 2ⁿ)]``.

    Full jitter spreads a fleet that lost its broker at the same moment over the whole
    window instead of letting it reconnect in synchronized waves.
    """

    def __init__(
        self,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        *,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ConfigError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before ``attempt``."""
        # 2**64 already exceeds any sane cap; clamping keeps the float finite.
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 64))

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay

    async def wait(self) -> float:
        """Sleep for the next delay; returns it."""
        delay = self.next_delay()
        await self._sleep(delay)
        return delay

    async def hold(self, seconds: float) -> float:
        """Sleep a long, fixed-order wait: uniform in ``[seconds/2, seconds]`` (jittered, so
        a fleet refused at once does not come back at once); returns it."""
        delay = self._rng.uniform(seconds / 2, seconds)
        await self._sleep(delay)
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts again from ``base_s``."""
        self.attempt = 0
