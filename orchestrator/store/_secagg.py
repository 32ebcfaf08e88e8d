"""Secure buckets' durable state (internal: part of :class:`~.store.Store`).

A bucket's state machine is one row, rewritten as its stages advance; each masked input is its
own row, written once with the state that accepted it. :meth:`SecAggMethods.close_bucket`
ends a bucket in one transaction: its row marked done or abandoned, its inputs deleted, and
(done) its sum entered into the update ledger and the aggregation buffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ._base import StoreBase
from ._sql import audit_row, fetchall
from ._updates import insert_updates, prepare_ingest
from .records import AuditEvent, IncomingUpdate

__all__ = ["SavedBucket", "SecAggMethods"]

SavedBucket = tuple[bytes, dict[str, bytes]]
"""A bucket's state blob and its masked inputs (member → ring bytes)."""

_UPSERT = ("INSERT INTO secagg_buckets (bucket_id, phase, state, created_ms, updated_ms) "
           "VALUES (?, ?, ?, ?, ?) ON CONFLICT(bucket_id) DO UPDATE SET phase = excluded.phase, "
           "state = excluded.state, updated_ms = excluded.updated_ms")


class SecAggMethods(StoreBase):
    async def save_bucket(self, bucket_id: str, phase: str, state: bytes, *, created_ms: int,
                          inputs: Mapping[str, bytes] | None = None) -> None:
        """Write the bucket's state, and any new masked inputs, in one transaction."""
        now = self._clock()
        async with self._tx() as conn:
            await conn.execute(_UPSERT, (bucket_id, phase, state, created_ms, now))
            if inputs:
                await conn.executemany(
                    "INSERT OR IGNORE INTO secagg_inputs (bucket_id, member, ring) "
                    "VALUES (?, ?, ?)", [(bucket_id, m, r) for m, r in inputs.items()])

    async def open_buckets(self) -> list[SavedBucket]:
        """The state and inputs of every bucket not yet done or abandoned, oldest first."""
        async with self._read() as conn:
            rows = await fetchall(conn, "SELECT bucket_id, state FROM secagg_buckets WHERE "
                                  "phase NOT IN ('done', 'abandoned') ORDER BY created_ms")
            inputs = await fetchall(conn, "SELECT i.bucket_id, i.member, i.ring FROM "
                                    "secagg_inputs i JOIN secagg_buckets b USING (bucket_id) "
                                    "WHERE b.phase NOT IN ('done', 'abandoned')")
        by_bucket: dict[str, dict[str, bytes]] = {}
        for bucket_id, member, ring in inputs:
            by_bucket.setdefault(bucket_id, {})[member] = bytes(ring)
        return [(bytes(state), by_bucket.get(bucket_id, {})) for bucket_id, state in rows]

    async def ended_buckets(self, since_ms: int) -> list[bytes]:
        """The state of every bucket that ended (done or abandoned) since ``since_ms``."""
        async with self._read() as conn:
            rows = await fetchall(conn, "SELECT state FROM secagg_buckets WHERE phase IN "
                                  "('done', 'abandoned') AND updated_ms >= ? ORDER BY "
                                  "updated_ms", (since_ms,))
        return [bytes(state) for (state,) in rows]

    async def bucket_phases(self) -> dict[str, int]:
        """How many buckets are in each phase (for the fleet view and metrics)."""
        async with self._read() as conn:
            rows = await fetchall(conn, "SELECT phase, COUNT(*) FROM secagg_buckets "
                                  "GROUP BY phase")
        return {str(p): int(n) for p, n in rows}

    async def close_bucket(self, bucket_id: str, phase: str, state: bytes, *,
                           update: IncomingUpdate | None, audit: AuditEvent) -> int | None:
        """End a bucket: its final state, its inputs gone, its sum (``update``) in the ledger
        and buffer, and one audit row, all or nothing. Returns the ledger id of the sum."""
        now = self._clock()
        updates = [update] if update is not None else []
        rows, blobs = await asyncio.to_thread(prepare_ingest, updates, now)
        async with self._tx() as conn:
            await conn.execute("UPDATE secagg_buckets SET phase = ?, state = ?, updated_ms = ? "
                               "WHERE bucket_id = ?", (phase, state, now, bucket_id))
            await conn.execute("DELETE FROM secagg_inputs WHERE bucket_id = ?", (bucket_id,))
            ids = await insert_updates(conn, updates, rows, blobs)
            await self._append_audits(conn, [audit_row(audit, now)], now)
        return ids[0] if ids else None

