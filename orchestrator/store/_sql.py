"""SQL helpers shared by the store's modules (internal)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

import aiosqlite

from . import _rows
from .errors import InvalidStateError, SchemaVersionError, StoreError, StoreIntegrityError
from .migrations import Migration
from .records import AuditEvent

MIN_SQLITE = (3, 37, 0)  # STRICT tables
ACCEPTED = "('buffered', 'applied', 'quarantined')"
UPSERT_WINDOW = (
    "INSERT INTO replay_windows (sender, state, updated_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (sender) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms"
)
UPSERT_STATE = (
    "INSERT INTO server_state (key, value, updated_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms"
)


def wrap(exc: BaseException) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreIntegrityError(str(exc))
    return StoreError(f"{type(exc).__name__}: {exc}")


def secure_file(path: str) -> None:
    """Create the database file owner-only before SQLite does (it holds enrollment secrets);
    SQLite gives the -wal and -shm files the same mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def one_of(name: str, value: str, allowed: Collection[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, not {value!r}")


def marks(n: int) -> str:
    return ", ".join("?" * n)


def filtered_select(
    columns: str, table: str, where: Sequence[str], args: list[Any], *,
    newest_first: bool, limit: int | None,
) -> tuple[str, list[Any]]:
    """``SELECT columns FROM table [WHERE a AND b] ORDER BY id [DESC] [LIMIT ?]``."""
    sql = f"SELECT {columns} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        args = [*args, limit]
    return sql, args


def in_clause(column: str, values: str | Collection[str]) -> tuple[str, list[Any]]:
    vals = [values] if isinstance(values, str) else list(values)
    return f"{column} IN ({marks(len(vals))})", vals


def audit_row(event: AuditEvent, now_ms: int) -> tuple[int, str, str, str | None, str | None, str]:
    """An event as audit column values (the chain adds the id and the hash: ``_chain``)."""
    ts = event.ts_ms if event.ts_ms is not None else now_ms
    return (ts, event.event, event.actor, event.device, event.reason, _rows.dumps(event.detail))


async def fetchall(
    conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    rows: Iterable[Any] = await conn.execute_fetchall(sql, params)
    return list(rows)  # plain tuples: the connection has no row factory


async def fetchone(
    conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> tuple[Any, ...] | None:
    rows = await fetchall(conn, sql, params)
    return rows[0] if rows else None


async def scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    row = await fetchone(conn, sql, params)
    return None if row is None else row[0]


async def rollback_quietly(conn: aiosqlite.Connection) -> None:
    # Also reached when cancelled mid-transaction: queued after whatever is still running.
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.execute("ROLLBACK")


async def migrate(conn: aiosqlite.Connection, migrations: Sequence[Migration]) -> int:
    target = len(migrations)
    current = int(await scalar(conn, "PRAGMA user_version"))
    if current > target:
        raise SchemaVersionError(current, target)
    if current == target:
        return current
    try:
        await conn.execute("BEGIN IMMEDIATE")
        # re-read under the write lock: another process may have migrated meanwhile
        current = int(await scalar(conn, "PRAGMA user_version"))
        if current > target:
            raise SchemaVersionError(current, target)
        for step in migrations[current:]:
            for statement in step.statements:
                await conn.execute(statement)
        await conn.execute(f"PRAGMA user_version = {target:d}")
        await conn.execute("COMMIT")
    except BaseException:
        await rollback_quietly(conn)
        raise
    return target


async def take_from_buffer(
    conn: aiosqlite.Connection,
    ids: list[int],
    status: Literal["quarantined", "rejected"],
    reason: str | Mapping[int, str],
) -> None:
    """Move buffered updates to ``status`` (all or nothing: the caller's transaction)."""
    rows = [(status, reason if isinstance(reason, str) else reason[uid], uid) for uid in ids]
    cur = await conn.executemany(
        "UPDATE updates SET status = ?, reason = ? WHERE id = ? AND status = 'buffered'", rows
    )
    if cur.rowcount != len(ids):
        raise await not_buffered(conn, ids)
    await conn.executemany("DELETE FROM buffer WHERE update_id = ?", [(uid,) for uid in ids])


async def not_buffered(conn: aiosqlite.Connection, ids: Iterable[int]) -> InvalidStateError:
    # Called after some of the ids were already updated in this (doomed) transaction, so the
    # culprits are those without a buffer row: their buffer rows are deleted only afterwards.
    wanted = list(ids)
    present = {uid for (uid,) in await fetchall(
        conn, f"SELECT update_id FROM buffer WHERE update_id IN ({marks(len(wanted))})", wanted)}
    return InvalidStateError("updates are not buffered", [i for i in wanted if i not in present])
