"""The connection owner every part of :class:`~.store.Store` builds on (internal)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence

import aiosqlite

from ._chain import AuditValues, insert_audits
from ._sql import rollback_quietly, wrap
from .errors import StoreClosedError

Clock = Callable[[], int]
"""Milliseconds since the epoch."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class StoreBase:
    """One writing aiosqlite connection and its lock, so transactions never interleave on it;
    plain reads go to a second, read-only connection with its own lock when there is one
    (a file database: in WAL mode a reader sees the last commit without waiting for a writer
    that is storing a large group of updates)."""

    def __init__(
        self, conn: aiosqlite.Connection, path: str, clock: Clock, schema_version: int,
        reader: aiosqlite.Connection | None = None, federation_id: str = "",
    ) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self._reader = reader
        self._path = path
        self._clock = clock
        self._schema_version = schema_version
        self._federation_id = federation_id
        self._lock = asyncio.Lock()
        self._read_lock = asyncio.Lock() if reader is not None else self._lock

    @property
    def path(self) -> str:
        return self._path

    @property
    def schema_version(self) -> int:
        return self._schema_version

    async def _append_audits(
        self, conn: aiosqlite.Connection, rows: Sequence[AuditValues], now_ms: int,
    ) -> list[int]:
        """Chain audit rows onto the log inside the caller's write transaction."""
        return await insert_audits(conn, rows, federation_id=self._federation_id, now_ms=now_ms)

    def _live(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreClosedError("the store is closed")
        return self._conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Exclusive use of a connection for reads outside a transaction (each statement
        sees the latest commit)."""
        async with self._read_lock:
            conn = self._live()
            if self._reader is not None:
                conn = self._reader
            try:
                yield conn
            except (sqlite3.Error, OSError) as exc:
                raise wrap(exc) from exc

    @contextlib.asynccontextmanager
    async def _tx(self, *, write: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction: committed on success, rolled back on any exception.

        Cancellation: aiosqlite queues each statement before the await that can be cancelled,
        so a cancelled BEGIN still runs and the ROLLBACK queued behind it undoes it; a
        cancelled COMMIT still commits (the caller cannot know, as with any lost reply).
        """
        async with self._lock:
            conn = self._live()
            try:
                try:
                    await conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    yield conn
                    await conn.execute("COMMIT")
                except BaseException:
                    await rollback_quietly(conn)
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise wrap(exc) from exc
