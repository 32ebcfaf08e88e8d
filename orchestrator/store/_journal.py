"""The audit log and the integrity check (internal: part of :class:`~.store.Store`)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Collection
from typing import Any

import aiosqlite

from . import _rows
from ._base import StoreBase
from ._sql import (
    ACCEPTED,
    audit_row,
    fetchall,
    filtered_select,
    in_clause,
    scalar,
)
from .errors import StoreCorruptionError
from .records import AuditEvent, AuditRecord


class JournalMethods(StoreBase):
    """The audit log and the integrity check."""

    async def append_audit(self, event: AuditEvent) -> int:
        now = self._clock()
        async with self._tx() as conn:
            (row_id,) = await self._append_audits(conn, [audit_row(event, now)], now)
        return row_id

    async def list_audit(
        self,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        event: str | Collection[str] | None = None,
        device: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[AuditRecord]:
        """Audit entries matching every given filter (``since`` inclusive, ``until``
        exclusive); newest first by default, so ``limit`` keeps the most recent."""
        where: list[str] = []
        args: list[Any] = []
        if since_ms is not None:
            where.append("ts_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("ts_ms < ?")
            args.append(until_ms)
        if event is not None:
            clause, vals = in_clause("event", event)
            where.append(clause)
            args += vals
        if device is not None:
            where.append("device = ?")
            args.append(device)
        if actor is not None:
            where.append("actor = ?")
            args.append(actor)
        sql, args = filtered_select(_rows.AUDIT_COLUMNS, "audit", where, args,
                                    newest_first=newest_first, limit=limit)
        async with self._read() as conn:
            rows = await fetchall(conn, sql, args)
        return [_rows.audit(r) for r in rows]

    async def integrity_check(self, *, verify_params: bool = True) -> list[str]:
        """Every problem found (empty = healthy): SQLite's own checks, then the store's
        invariants (buffer rows are exactly the buffered updates, no (sender, seq) accepted
        twice, applied updates carry a weight and match their version's lineage, versions
        numbered 0..N); with ``verify_params``, every version's params against its SHA-256."""
        async with self._tx(write=False) as conn:
            try:
                problems = await _invariant_problems(conn)
                if verify_params:
                    problems += await _params_problems(conn)
            except sqlite3.DatabaseError as exc:  # too damaged to query: that is the finding
                problems = [f"sqlite: {exc}"]
        return problems


async def _invariant_problems(conn: aiosqlite.Connection) -> list[str]:
    problems: list[str] = []
    for (line,) in await fetchall(conn, "PRAGMA integrity_check"):
        if line != "ok":
            problems.append(f"sqlite: {line}")
    for table, rowid, parent, _ in await fetchall(conn, "PRAGMA foreign_key_check"):
        problems.append(f"foreign key: {table} row {rowid} references missing {parent}")
    for uid, status in await fetchall(
        conn, "SELECT b.update_id, u.status FROM buffer AS b "
        "LEFT JOIN updates AS u ON u.id = b.update_id WHERE u.status IS NOT 'buffered'",
    ):
        problems.append(f"buffer holds update {uid} whose status is {status!r}")
    for (uid,) in await fetchall(
        conn, "SELECT id FROM updates WHERE status = 'buffered' "
        "AND id NOT IN (SELECT update_id FROM buffer)",
    ):
        problems.append(f"update {uid} is buffered but has no delta in the buffer")
    for sender, seq, n in await fetchall(
        conn, f"SELECT sender, seq, COUNT(*) FROM updates WHERE status IN {ACCEPTED} "
        "GROUP BY sender, seq HAVING COUNT(*) > 1",
    ):
        problems.append(f"update sender={sender!r} seq={seq} accepted {n} times")
    for (uid,) in await fetchall(
        conn, "SELECT id FROM updates WHERE status = 'applied' AND weight IS NULL"
    ):
        problems.append(f"applied update {uid} has no weight")

    versions = await fetchall(conn, "SELECT version, lineage FROM versions ORDER BY version")
    for expected, (v, _) in enumerate(versions):
        if v != expected:
            problems.append(f"versions not contiguous: expected {expected}, found {v}")
            break
    applied: dict[int, set[int]] = {}
    for uid, v in await fetchall(
        conn, "SELECT id, applied_version FROM updates WHERE status = 'applied'"
    ):
        applied.setdefault(v, set()).add(uid)
    for v, lineage in versions:
        try:
            listed = set(_rows.loads(lineage, f"version {v} lineage").get("updates", []))
        except StoreCorruptionError as exc:
            problems.append(str(exc))
            continue
        if listed != applied.get(v, set()):
            problems.append(f"version {v}: lineage updates differ from the ledger")
    for (v,) in await fetchall(
        conn, "SELECT version FROM versions WHERE version NOT IN "
        "(SELECT version FROM version_params)",
    ):
        problems.append(f"version {v} has no params")
    return problems


async def _params_problems(conn: aiosqlite.Connection) -> list[str]:
    # one blob at a time (models can be large), hashed off the event loop
    problems: list[str] = []
    for v, digest in await fetchall(conn, "SELECT version, params_sha256 FROM versions"):
        blob = await scalar(conn, "SELECT params FROM version_params WHERE version = ?", (v,))
        if blob is not None and await asyncio.to_thread(_sha256_hex, blob) != digest:
            problems.append(f"version {v}: params do not match their SHA-256")
    return problems


def _sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
