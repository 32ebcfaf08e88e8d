"""The orchestrator's durable store: one SQLite database in WAL mode, owned by one
:class:`Store` (an async context manager around one aiosqlite connection).

Durability: ``synchronous=FULL`` by default. The orchestrator acknowledges an update only after
the transaction holding it commits, and an acknowledged update must never be lost. In WAL mode,
``NORMAL`` survives a crash of the process (SIGKILL included: committed frames are in the WAL
file, in the OS page cache) but may lose the last transactions on power loss or a kernel crash,
which would silently break exactly-once for updates already acked. ``FULL`` fsyncs the WAL at
every commit; ingest commits once per batch, which amortises the cost. ``NORMAL`` is offered for
benchmarks and throwaway simulations.

Layout: new databases use 16 KiB pages (a third of the CPU per buffered 100 KB update compared
with 4 KiB); deletes use ``secure_delete = FAST`` (freed pages are not zeroed).

Concurrency: every write holds one asyncio lock, so transactions never interleave on the
writing connection; plain reads use a second, read-only connection (file databases), so they
need not wait for a write in progress. The SQLite work itself runs in aiosqlite's threads,
never on the event loop, and so do the (de)compression of parameters (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import aiosqlite

from ._base import Clock, wall_clock_ms
from ._devices import DeviceMethods
from ._journal import JournalMethods
from ._privacy import PrivacyMethods
from ._secagg import SecAggMethods
from ._sql import MIN_SQLITE, migrate, one_of, scalar, secure_file
from ._updates import UpdateMethods
from ._versions import VersionMethods
from .errors import SchemaVersionError, StoreError
from .migrations import MIGRATIONS, Migration, check_migrations

__all__ = ["Clock", "Store", "wall_clock_ms"]

PAGE_SIZE = 16384


class Store(DeviceMethods, UpdateMethods, VersionMethods, JournalMethods, PrivacyMethods,
            SecAggMethods):
    """The orchestrator's database. Use ``async with Store.open(path) as store:``.

    Its methods are grouped by table in the modules it inherits from: the device registry and
    replay windows (:mod:`._devices`), the update ledger and aggregation buffer
    (:mod:`._updates`), model versions and server state (:mod:`._versions`), the audit log and
    the integrity check (:mod:`._journal`), the differential-privacy ledger (:mod:`._privacy`),
    secure buckets (:mod:`._secagg`).
    """

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock = wall_clock_ms,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout_ms: int = 5000,
        migrations: Sequence[Migration] = MIGRATIONS,
        federation_id: str = "",
    ) -> AsyncIterator[Store]:
        """Open (creating and migrating as needed) the database at ``path``.

        ``federation_id`` binds the audit chain's genesis when this store writes the first
        chained row (pass the config's ``federation.id``; see :mod:`.audit_chain`).

        ``":memory:"`` gives a private in-memory database for fast tests. Raises
        :class:`SchemaVersionError` for a database newer than this code and
        :class:`StoreError` for anything else that prevents opening.
        """
        one_of("synchronous", synchronous, ("FULL", "NORMAL"))
        check_migrations(migrations)
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old; the store needs "
                             f"{'.'.join(map(str, MIN_SQLITE))} or newer")
        target = os.fspath(path)
        memory = target == ":memory:"
        try:
            if not memory:
                await asyncio.to_thread(secure_file, target)
            conn = await aiosqlite.connect(target, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {target!r}: {exc}") from exc
        store: Store | None = None
        reader: aiosqlite.Connection | None = None
        try:
            try:
                version = await _prepare_writer(conn, target, memory, synchronous,
                                                busy_timeout_ms, migrations)
                if not memory:
                    reader = await _open_reader(target, busy_timeout_ms)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open store {target!r}: {exc}") from exc
            store = cls(conn, target, clock, version, reader, federation_id)
            yield store
        finally:
            if store is not None:
                store._conn = None
            for each in (reader, conn):
                if each is not None:
                    await _close_quietly(each)


async def _prepare_writer(
    conn: aiosqlite.Connection, target: str, memory: bool,
    synchronous: Literal["FULL", "NORMAL"], busy_timeout_ms: int,
    migrations: Sequence[Migration],
) -> int:
    """Set the writing connection's pragmas and migrate; returns the schema version."""
    # before anything writes, refuse a newer schema
    found = int(await scalar(conn, "PRAGMA user_version"))
    if found > len(migrations):
        raise SchemaVersionError(found, len(migrations))
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms):d}")
    await conn.execute("PRAGMA foreign_keys = ON")
    # for a new database only (a no-op afterwards): buffered updates are ~100 KB
    # blobs, written and deleted at ingest rate, and per-page work dominates
    await conn.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")
    # Debian builds SQLite with secure_delete on: every applied update's blob
    # would be zeroed page by page, doubling the write cost (see docs/security.md)
    await conn.execute("PRAGMA secure_delete = FAST")
    mode = await scalar(conn, "PRAGMA journal_mode = WAL")
    if not memory and str(mode).lower() != "wal":
        raise StoreError(f"cannot put {target!r} in WAL mode (got {mode!r})")
    await conn.execute(f"PRAGMA synchronous = {synchronous}")
    return await migrate(conn, migrations)


async def _open_reader(target: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    """The read-only second connection of a file database (closed again if setting it up
    fails)."""
    reader = await aiosqlite.connect(target, isolation_level=None)
    try:
        await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms):d}")
        await reader.execute("PRAGMA query_only = ON")
    except BaseException:
        await _close_quietly(reader)
        raise
    return reader


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.close()
