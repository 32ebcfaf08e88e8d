"""The outbox: signed update envelopes waiting for the orchestrator's ack, on disk.

An entry is committed before anything is sent and deleted only when a signed ack names its
seq, so delivery is at-least-once across link cuts and restarts. ``due`` decides which
entries to (re)send: never sent, sent on an earlier connection (the ack may have been lost
with it), or unacked for longer than the resend timeout, which doubles per attempt.

The outbox table lives in the agent's state file; ``LocalState`` owns the connection and its
lock, this module owns the table's statements and its running totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiosqlite
from nacl.signing import SigningKey

from schemas import Params, resign

from .records import OutboxEntry, OutboxRow
from .state import LocalState, write_residual, write_value

__all__ = ["Outbox", "OutboxEntry", "OutboxRow", "ResendPolicy"]

_ENTRY = "seq, envelope, created_ms, attempts, last_sent_ms"


@dataclass(frozen=True, slots=True)
class ResendPolicy:
    """How long to wait for an ack before sending an entry again."""

    ack_timeout_ms: int = 10_000
    max_timeout_ms: int = 120_000

    def timeout_ms(self, attempts: int) -> int:
        return min(self.max_timeout_ms, self.ack_timeout_ms << max(0, min(attempts - 1, 16)))


class Outbox:
    """The outbox table of an open ``LocalState``; build it with ``await Outbox.open(state)``."""

    def __init__(self, state: LocalState, policy: ResendPolicy | None, *, count: int,
                 nbytes: int) -> None:
        self._state = state
        self.policy = policy or ResendPolicy()
        self._len = count
        self._bytes = nbytes

    @classmethod
    async def open(cls, state: LocalState, policy: ResendPolicy | None = None) -> Outbox:
        async with state.reading() as db, db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM outbox"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return cls(state, policy, count=int(row[0]), nbytes=int(row[1]))

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        return self._bytes

    async def put(
        self, seq: int, envelope: bytes, *, created_ms: int, residual: Params | None = None,
        signed_with: SigningKey | None = None, values: Mapping[str, Any] | None = None,
    ) -> None:
        """Durably add an entry (committed when this returns), with the residual that the
        encoding of this update left behind, and ``values`` (small durable values, as
        ``LocalState.put_many`` keeps them), in the same transaction. ``signed_with``: the
        key that signed ``envelope``; if the device key rotated meanwhile, the entry is
        re-signed with the current one first."""
        async with self._state.transaction() as tx:
            current = self._state.signing_key
            if signed_with is not None and signed_with is not current:
                envelope = resign(envelope, current)
            await tx.execute(
                "INSERT INTO outbox (seq, envelope, created_ms) VALUES (?, ?, ?)",
                (seq, envelope, created_ms),
            )
            if residual is not None:
                await write_residual(tx, residual)
            for key, value in (values or {}).items():
                await write_value(tx, key, value)
        self._len += 1
        self._bytes += len(envelope)

    async def pending(self, limit: int | None = None) -> list[OutboxEntry]:
        """All entries, oldest first (by seq)."""
        sql = f"SELECT {_ENTRY} FROM outbox ORDER BY seq"
        args: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (limit,)
        async with self._state.reading() as db, db.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [_entry(r) for r in rows]

    async def due(
        self, now_ms: int, *, connected_since_ms: int, limit: int, max_bytes: int
    ) -> tuple[list[OutboxEntry], int | None]:
        """Entries to send now (oldest first, at most ``limit`` and ``max_bytes`` in total,
        but always at least one) and when the next not-yet-due entry becomes due."""
        chosen: list[int] = []
        size = 0
        next_due: int | None = None
        for row in await self.rows():
            at = self._due_at(row, connected_since_ms)
            if at > now_ms:
                next_due = at if next_due is None else min(next_due, at)
                continue
            if len(chosen) >= limit or (chosen and size + row.size > max_bytes):
                next_due = now_ms
                break
            chosen.append(row.seq)
            size += row.size
        return await self._get(chosen), next_due

    def _due_at(self, entry: OutboxRow, connected_since_ms: int) -> int:
        if entry.last_sent_ms is None or entry.last_sent_ms < connected_since_ms:
            return 0
        return entry.last_sent_ms + self.policy.timeout_ms(entry.attempts)

    async def mark_sent(self, seqs: Iterable[int], now_ms: int) -> None:
        rows = [(now_ms, s) for s in seqs]
        async with self._state.transaction() as tx:
            await tx.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_sent_ms = ? WHERE seq = ?", rows
            )

    async def ack(self, seqs: Iterable[int]) -> int:
        """Remove the acknowledged entries; returns how many were still there."""
        wanted = sorted(set(seqs))
        if not wanted:
            return 0
        removed = freed = 0
        async with self._state.transaction() as tx:
            for seq in wanted:
                async with tx.execute(
                    "DELETE FROM outbox WHERE seq = ? RETURNING LENGTH(envelope)", (seq,)
                ) as cur:
                    row = await cur.fetchone()
                if row is not None:
                    removed += 1
                    freed += int(row[0])
        self._len -= removed
        self._bytes -= freed
        return removed

    @staticmethod
    async def resign_all(tx: aiosqlite.Connection, key: SigningKey) -> int:
        """Re-sign every entry with ``key`` inside the caller's transaction (the device key
        is rotating) and make each due at once; returns how many. Seqs stay: an entry the
        orchestrator already accepted is answered ``duplicate``, never counted twice."""
        async with tx.execute("SELECT seq, envelope FROM outbox") as cur:
            rows = list(await cur.fetchall())
        await tx.executemany(
            "UPDATE outbox SET envelope = ?, last_sent_ms = NULL WHERE seq = ?",
            [(resign(bytes(r[1]), key), int(r[0])) for r in rows])
        return len(rows)

    async def destroy(self) -> int:
        """Drop every entry unsent (the device was revoked: its updates are worthless and
        could leak); returns how many there were."""
        async with self._state.transaction() as tx:
            await tx.execute("DELETE FROM outbox")
        dropped, self._len, self._bytes = self._len, 0, 0
        return dropped

    async def rows(self) -> list[OutboxRow]:
        """Every entry's bookkeeping (attempts, when last sent), oldest first."""
        async with self._state.reading() as db, db.execute(
            "SELECT seq, LENGTH(envelope), created_ms, attempts, last_sent_ms FROM outbox "
            "ORDER BY seq"
        ) as cur:
            rows = await cur.fetchall()
        return [OutboxRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]),
                          None if r[4] is None else int(r[4])) for r in rows]

    async def _get(self, seqs: Iterable[int]) -> list[OutboxEntry]:
        """The named entries that still exist, in seq order."""
        out: list[OutboxEntry] = []
        async with self._state.reading() as db:
            for seq in sorted(set(seqs)):
                async with db.execute(f"SELECT {_ENTRY} FROM outbox WHERE seq = ?", (seq,)) as cur:
                    r = await cur.fetchone()
                if r is not None:
                    out.append(_entry(r))
        return out


def _entry(r: Any) -> OutboxEntry:
    return OutboxEntry(int(r[0]), bytes(r[1]), int(r[2]), int(r[3]),
                       None if r[4] is None else int(r[4]))
