"""The flusher: sends the outbox in ``UpdateBatch``es whenever the session is connected.

Entries are chosen by ``Outbox.due`` (never sent, sent on an earlier connection, or unacked
past the resend timeout), packed into one QoS 1 publish of at most ``batch_entries`` entries
and ``batch_bytes`` bytes, and marked sent. Nothing is deleted here: only an ack does that.
The resend timeouts run on the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from schemas import UpdateBatch, pack_batch

from .clock import Clock, SystemClock, wait_for, wall_ms
from .errors import NotConnectedError
from .outbox import Outbox
from .session import PUBLISH_RETRY_S, Session
from .shared import AgentStats, Pulse

__all__ = ["Flusher"]


class Flusher:
    def __init__(
        self,
        outbox: Outbox,
        session: Session,
        topic: str,
        *,
        batch_entries: int,
        batch_bytes: int,
        ready: Callable[[], bool],
        clock: Clock | None = None,
        stats: AgentStats | None = None,
        changed: Pulse | None = None,
        wake: asyncio.Event | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``ready()`` says whether sending is allowed at all (the device is enrolled);
        ``stats`` counts the batches and entries sent, ``changed`` fires after each; setting
        ``wake`` makes the flusher look again at once."""
        self._outbox = outbox
        self._session = session
        self._topic = topic
        self._batch_entries = batch_entries
        self._batch_bytes = batch_bytes
        self._ready = ready
        self._clock = clock or SystemClock()
        self._stats = stats or AgentStats()
        self._changed = changed or Pulse()
        self._log = logger or logging.getLogger(__name__)
        self._wake = wake or asyncio.Event()
        self.batches = 0
        self.entries = 0

    def wake(self) -> None:
        """Look again now (a new entry, a new connection, a changed enrollment)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._session.wait_connected()
            self._wake.clear()
            next_due: int | None = None
            if self._ready():
                sent, next_due = await self._send_due()
                if sent:
                    continue
            wait = None if next_due is None else max(0.0, (next_due - self._now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                await wait_for(self._clock, self._wake.wait(), wait)

    def _now_ms(self) -> int:
        return wall_ms(self._clock)

    async def _send_due(self) -> tuple[bool, int | None]:
        """Send one batch if anything is due; returns (sent, when the next entry is due)."""
        now = self._now_ms()
        entries, next_due = await self._outbox.due(
            now, connected_since_ms=self._session.connected_since_ms,
            limit=self._batch_entries, max_bytes=self._batch_bytes)
        if not entries:
            return False, next_due
        seqs = [e.seq for e in entries]
        try:
            await self._session.publish(
                self._topic, pack_batch(UpdateBatch([e.envelope for e in entries])), qos=1)
        except NotConnectedError:
            await self._clock.sleep(PUBLISH_RETRY_S)
            return True, None
        await self._outbox.mark_sent(seqs, now)
        self.batches += 1
        self.entries += len(entries)
        self._stats.batches_sent += 1
        self._stats.entries_sent += len(entries)
        self._log.debug("sent batch of %d (seqs %d..%d)", len(seqs), seqs[0], seqs[-1])
        self._changed.fire()
        return True, None
