"""The update ledger and the aggregation buffer (internal: part of :class:`~.store.Store`)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

import aiosqlite

from orchestrator.aggregation.codec import encode_params

from . import _rows
from ._base import StoreBase
from ._chain import AuditValues
from ._sql import (
    ACCEPTED,
    UPSERT_WINDOW,
    fetchall,
    filtered_select,
    in_clause,
    marks,
    one_of,
    scalar,
    take_from_buffer,
)
from .errors import DuplicateUpdateError
from .records import UPDATE_STATUSES, BufferedEntry, IncomingUpdate, LedgerEntry, UpdateStatus


class UpdateMethods(StoreBase):
    """The update ledger (every update received) and the aggregation buffer."""

    async def ingest(
        self,
        updates: Sequence[IncomingUpdate],
        replay_windows: Mapping[str, bytes] | None = None,
        *,
        actor: str = "ingest",
    ) -> list[int]:
        """Durably record a batch of received updates, in one transaction; returns ledger ids
        in the order given. Only after this returns may the batch be acknowledged.

        Accepted updates go to the ledger and the buffer; rejected and quarantined ones to the
        ledger only, plus an audit row each. Per-device counters and the given replay-window
        states are written in the same transaction. An accepted (sender, seq) that is already
        in the ledger raises :class:`DuplicateUpdateError` and nothing of the batch is kept.
        """
        if not updates and not replay_windows:
            return []
        now = self._clock()
        # CPU work (JSON, zstd) before taking the lock, in a worker thread
        rows, blobs = await asyncio.to_thread(prepare_ingest, updates, now)
        counts = _status_counts(updates)
        windows = [(s, bytes(b), now) for s, b in (replay_windows or {}).items()]
        async with self._tx() as conn:
            ids = await insert_updates(conn, updates, rows, blobs)
            audits = _refusal_audits(updates, ids, now, actor)
            await self._append_audits(conn, audits, now)
            await conn.executemany(
                "UPDATE devices SET accepted_count = accepted_count + ?, "
                "rejected_count = rejected_count + ?, quarantine_count = quarantine_count + ? "
                "WHERE device_id = ?",
                [(c["buffered"], c["rejected"], c["quarantined"], s) for s, c in counts.items()],
            )
            if windows:
                await conn.executemany(UPSERT_WINDOW, windows)
        return ids

    async def buffered(self, limit: int | None = None) -> list[BufferedEntry]:
        """Buffered updates with their decoded deltas, oldest first."""
        sql = (
            "SELECT u.id, u.sender, u.seq, u.base_version, u.num_samples, u.received_ms, u.norm, "
            "u.meta, b.delta FROM buffer AS b JOIN updates AS u ON u.id = b.update_id "
            "ORDER BY b.update_id"
        )
        args: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (limit,)
        async with self._read() as conn:
            rows = await fetchall(conn, sql, args)
        return await asyncio.to_thread(_decode_buffered, rows)

    async def buffered_count(self) -> int:
        async with self._read() as conn:
            return int(await scalar(conn, "SELECT COUNT(*) FROM buffer"))

    async def mark_updates(
        self,
        ids: Iterable[int],
        status: Literal["quarantined", "rejected"],
        reason: str,
        *,
        actor: str = "aggregator",
    ) -> None:
        """Take buffered updates out of the buffer as quarantined or rejected.

        Every id must be buffered (else :class:`InvalidStateError`, nothing changed).
        Quarantine also bumps the sender's ``quarantine_count`` and writes an audit row.
        """
        one_of("status", status, ("quarantined", "rejected"))
        id_list = list(dict.fromkeys(ids))
        if not id_list:
            return
        now = self._clock()
        async with self._tx() as conn:
            await take_from_buffer(conn, id_list, status, reason)
            if status == "quarantined":
                senders = await fetchall(
                    conn,
                    f"SELECT id, sender, seq FROM updates WHERE id IN ({marks(len(id_list))})",
                    id_list,
                )
                await conn.executemany(
                    "UPDATE devices SET quarantine_count = quarantine_count + 1 "
                    "WHERE device_id = ?",
                    [(sender,) for _, sender, _ in senders],
                )
                await self._append_audits(conn, [
                    (now, "quarantined", actor, sender, reason,
                     _rows.dumps({"update_id": uid, "seq": seq}))
                    for uid, sender, seq in senders
                ], now)

    async def ledger(
        self,
        *,
        sender: str | None = None,
        status: UpdateStatus | Collection[UpdateStatus] | None = None,
        reason: str | None = None,
        since_ms: int | None = None,
        applied_version: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[LedgerEntry]:
        """Ledger rows matching every given filter, in arrival order (or newest first)."""
        where, args = _ledger_filters(sender, status, reason, since_ms)
        if applied_version is not None:
            where.append("applied_version = ?")
            args.append(applied_version)
        sql, args = filtered_select(_rows.LEDGER_COLUMNS, "updates", where, args,
                                    newest_first=newest_first, limit=limit)
        async with self._read() as conn:
            rows = await fetchall(conn, sql, args)
        return [_rows.ledger(r) for r in rows]

    async def ledger_counts(
        self, *, sender: str | None = None, since_ms: int | None = None
    ) -> dict[tuple[UpdateStatus, str | None], int]:
        """How many updates per (status, reason)."""
        where, args = _ledger_filters(sender, None, None, since_ms)
        sql = "SELECT status, reason, COUNT(*) FROM updates"
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self._read() as conn:
            rows = await fetchall(conn, sql + " GROUP BY status, reason", args)
        return {(status, reason): n for status, reason, n in rows}


def prepare_ingest(
    updates: Sequence[IncomingUpdate], now: int
) -> tuple[list[tuple[Any, ...]], list[tuple[int, bytes]]]:
    """Ledger rows (without id) and encoded buffer blobs (by batch index); runs in a thread."""
    rows: list[tuple[Any, ...]] = []
    blobs: list[tuple[int, bytes]] = []
    for i, u in enumerate(updates):
        received = u.received_ms if u.received_ms is not None else now
        norm = None if u.norm is None else float(u.norm)
        rows.append((u.sender, u.seq, u.base_version, u.num_samples, u.status, u.reason,
                     received, norm, _rows.dumps(u.meta)))
        if u.status == "buffered":
            assert u.delta is not None  # IncomingUpdate guarantees it
            delta = u.delta
            blobs.append((i, delta if isinstance(delta, bytes) else encode_params(delta)))
    return rows, blobs


async def insert_updates(
    conn: aiosqlite.Connection, updates: Sequence[IncomingUpdate], rows: list[tuple[Any, ...]],
    blobs: list[tuple[int, bytes]],
) -> list[int]:
    """The ledger rows and the accepted ones' buffer blobs (from :func:`prepare_ingest`), in
    the caller's transaction; returns the ledger ids."""
    ids = await _insert_ledger(conn, updates, rows)
    await conn.executemany("INSERT INTO buffer (update_id, delta) VALUES (?, ?)",
                           [(ids[i], blob) for i, blob in blobs])
    return ids


async def _insert_ledger(
    conn: aiosqlite.Connection, updates: Sequence[IncomingUpdate], rows: list[tuple[Any, ...]]
) -> list[int]:
    """Insert the batch's ledger rows; returns their ids. An accepted (sender, seq) already in
    the ledger (or twice in the batch) raises :class:`DuplicateUpdateError` naming it."""
    first = int(await scalar(conn, "SELECT COALESCE(MAX(id), 0) + 1 FROM updates"))
    # explicit ids: we hold the write lock, so they are ours and the buffer rows can
    # reference them without a round trip per row
    ids = list(range(first, first + len(updates)))
    try:
        await conn.executemany(
            f"INSERT INTO updates ({_rows.LEDGER_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, NULL, ?, ?)",
            [(i, *r) for i, r in zip(ids, rows, strict=True)],
        )
    except sqlite3.IntegrityError as exc:
        if "updates.sender, updates.seq" not in str(exc):
            raise
        raise await _duplicate(conn, updates, first) from exc
    return ids


def _refusal_audits(
    updates: Sequence[IncomingUpdate], ids: Sequence[int], now: int, actor: str
) -> list[AuditValues]:
    """An audit row for each rejected or quarantined update of the batch."""
    audits: list[AuditValues] = []
    for i, u in enumerate(updates):
        if u.status != "buffered":
            detail = {"update_id": ids[i], "seq": u.seq, "base_version": u.base_version}
            audits.append((u.received_ms if u.received_ms is not None else now,
                           u.status, actor, u.sender, u.reason, _rows.dumps(detail)))
    return audits


def _status_counts(updates: Iterable[IncomingUpdate]) -> dict[str, Counter[str]]:
    """How many of each sender's updates have each status (for the per-device counters)."""
    counts: dict[str, Counter[str]] = {}
    for u in updates:
        if u.sender is not None:
            counts.setdefault(u.sender, Counter())[u.status] += 1
    return counts


def _decode_buffered(rows: list[tuple[Any, ...]]) -> list[BufferedEntry]:
    out: list[BufferedEntry] = []
    for uid, sender, seq, base, n, received, norm, meta, blob in rows:
        out.append(BufferedEntry(
            update_id=uid, sender=sender, seq=seq, base_version=base, num_samples=n,
            received_ms=received, norm=norm, meta=_rows.loads(meta, f"update {uid} meta"),
            delta=_rows.params_from_blob(blob, None, f"buffered update {uid}"),
        ))
    return out


def _ledger_filters(
    sender: str | None,
    status: str | Collection[str] | None,
    reason: str | None,
    since_ms: int | None,
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if sender is not None:
        where.append("sender = ?")
        args.append(sender)
    if status is not None:
        for s in [status] if isinstance(status, str) else status:
            one_of("status", s, UPDATE_STATUSES)
        clause, vals = in_clause("status", status)
        where.append(clause)
        args += vals
    if reason is not None:
        where.append("reason = ?")
        args.append(reason)
    if since_ms is not None:
        where.append("received_ms >= ?")
        args.append(since_ms)
    return where, args


async def _duplicate(
    conn: aiosqlite.Connection, updates: Sequence[IncomingUpdate], first_id: int
) -> DuplicateUpdateError:
    """Name the (sender, seq) that broke the accepted-once index (inside the failed batch)."""
    seen: set[tuple[str | None, int | None]] = set()
    for u in updates:
        if u.status == "rejected":
            continue
        key = (u.sender, u.seq)
        if key in seen:
            return DuplicateUpdateError(u.sender, u.seq)
        seen.add(key)
        hit = await scalar(
            conn, f"SELECT 1 FROM updates WHERE id < ? AND sender = ? AND seq = ? "
            f"AND status IN {ACCEPTED}", (first_id, u.sender, u.seq),
        )
        if hit is not None:
            return DuplicateUpdateError(u.sender, u.seq)
    return DuplicateUpdateError(None, None)  # pragma: no cover - the index fired for a reason
