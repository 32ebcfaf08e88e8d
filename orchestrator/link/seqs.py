"""The orchestrator's own message seq counter, durable by blocks.

Devices keep one replay window for everything the orchestrator sends them, so a restarted
orchestrator must never reuse a seq. Persisting every seq would cost a write per message;
instead the counter durably reserves a block ahead (``limit``) and hands out seqs below it
from memory. After a crash the next run starts at the stored limit: a few seqs are skipped,
none is reused.
"""

from __future__ import annotations

import asyncio

from orchestrator.store.state_keys import ServerState, StateKey

__all__ = ["SeqCounter"]


class SeqCounter:
    """Keeps its limit in ``state`` under :attr:`StateKey.SEQ_LIMIT`."""

    def __init__(self, state: ServerState, *, block: int = 10_000) -> None:
        if block <= 0:
            raise ValueError("block must be positive")
        self._state = state
        self._block = block
        self._next: int | None = None
        self._limit = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Resume from the stored limit (every seq below it may have been used)."""
        raw = await self._state.get_server_state(StateKey.SEQ_LIMIT)
        self._next = self._limit = int.from_bytes(raw, "big") if raw else 0

    async def reserve(self, n: int) -> list[int]:
        """``n`` fresh seqs, in increasing order."""
        if n < 0:
            raise ValueError("n must be >= 0")
        async with self._lock:
            if self._next is None:
                raise RuntimeError("SeqCounter.start() was not awaited")
            if self._next + n > self._limit:
                limit = self._next + n + self._block
                # durable before any seq below it is used
                await self._state.put_server_state({StateKey.SEQ_LIMIT: limit.to_bytes(8, "big")})
                self._limit = limit
            first = self._next
            self._next += n
            return list(range(first, first + n))

    async def next(self) -> int:
        return (await self.reserve(1))[0]
