"""The outbox: signed update envelopes waiting for the orchestrator's ack, on disk.

An entry is committed before anything is sent and deleted only when a signed ack names its
seq, so delivery is at-least-once across link cuts and restarts. ``due`` decides which
entries to (re)send: never sent, sent on an earlier connection (the ack may have been lost
with it), or unacked for longer than the resend timeout, which doubles per attempt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schemas import Params

from .state import LocalState, OutboxEntry, OutboxRow


@dataclass(frozen=True, slots=True)
class ResendPolicy:
    """How long to wait for an ack before sending an entry again."""

    ack_timeout_ms: int = 10_000
    max_timeout_ms: int = 120_000

    def timeout_ms(self, attempts: int) -> int:
        return min(self.max_timeout_ms, self.ack_timeout_ms << max(0, min(attempts - 1, 16)))


class Outbox:
    """Outbox operations over the agent's state (which owns the connection)."""

    def __init__(self, state: LocalState, policy: ResendPolicy | None = None) -> None:
        self._state = state
        self.policy = policy or ResendPolicy()

    def __len__(self) -> int:
        return self._state.outbox_len

    @property
    def nbytes(self) -> int:
        return self._state.outbox_bytes

    async def put(
        self, seq: int, envelope: bytes, *, created_ms: int, residual: Params | None = None
    ) -> None:
        """Durably add an entry (committed when this returns), with the residual that the
        encoding of this update left behind, in the same transaction."""
        await self._state.outbox_put(seq, envelope, created_ms=created_ms, residual=residual)

    async def pending(self, limit: int | None = None) -> list[OutboxEntry]:
        """All entries, oldest first."""
        return await self._state.outbox_entries(limit)

    async def due(
        self, now_ms: int, *, connected_since_ms: int, limit: int, max_bytes: int
    ) -> tuple[list[OutboxEntry], int | None]:
        """Entries to send now (oldest first, at most ``limit`` and ``max_bytes`` in total,
        but always at least one) and when the next not-yet-due entry becomes due."""
        chosen: list[int] = []
        size = 0
        next_due: int | None = None
        for row in await self._state.outbox_rows():
            at = self._due_at(row, connected_since_ms)
            if at > now_ms:
                next_due = at if next_due is None else min(next_due, at)
                continue
            if len(chosen) >= limit or (chosen and size + row.size > max_bytes):
                next_due = now_ms
                break
            chosen.append(row.seq)
            size += row.size
        return await self._state.outbox_get(chosen), next_due

    def _due_at(self, entry: OutboxRow, connected_since_ms: int) -> int:
        if entry.last_sent_ms is None or entry.last_sent_ms < connected_since_ms:
            return 0
        return entry.last_sent_ms + self.policy.timeout_ms(entry.attempts)

    async def mark_sent(self, seqs: Iterable[int], now_ms: int) -> None:
        await self._state.outbox_mark_sent(seqs, now_ms)

    async def ack(self, seqs: Iterable[int]) -> int:
        """Remove the acknowledged entries; returns how many were still there."""
        return await self._state.outbox_delete(seqs)
