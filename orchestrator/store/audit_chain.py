"""Verify a store file's audit hash chain (read-only: the file is never written or migrated).

    report = await verify_audit("data/orchestrator.db", "fed-1")
    report.ok, report.checked, report.head, report.problem, report.row_id

See :mod:`._chain` for what is hashed. The walk runs in one read transaction (a snapshot, so a
live orchestrator appending meanwhile does not matter), a page of rows at a time, the hashing of
each page in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

import aiosqlite

from ._chain import ChainReport, ChainWalker
from ._sql import fetchall, fetchone, rollback_quietly, scalar
from .errors import SchemaVersionError, StoreError
from .migrations import SCHEMA_VERSION

__all__ = ["CHAIN_SCHEMA", "ChainReport", "verify_audit"]

CHAIN_SCHEMA = 3
"""The first schema version with the chain."""
_PAGE = 2000
_ROW = "SELECT id, ts_ms, event, actor, device, reason, detail, hash FROM audit"


async def verify_audit(
    path: str | os.PathLike[str], federation_id: str, *, expect_head: str | None = None,
) -> ChainReport:
    """Walk the chain of the store at ``path`` for ``federation_id``; with ``expect_head``
    (a head recorded earlier), also require that hash to be in the chain. Raises
    :class:`StoreError` for a missing or unreadable file or a schema without the chain."""
    target = Path(path)
    if not await asyncio.to_thread(target.is_file):
        exists = await asyncio.to_thread(target.exists)
        raise StoreError(f"{target} is not a file" if exists else f"no store at {target}")
    uri = f"file:{quote(str(await asyncio.to_thread(target.resolve)))}?mode=ro"
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open store {str(target)!r}: {exc}") from exc
    try:
        return await _verify(conn, target, federation_id, expect_head)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read store {str(target)!r}: {exc}") from exc
    finally:
        await conn.close()


async def _verify(conn: aiosqlite.Connection, target: Path, federation_id: str,
                  expect_head: str | None) -> ChainReport:
    version = int(await scalar(conn, "PRAGMA user_version"))
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(version, SCHEMA_VERSION)
    if version < CHAIN_SCHEMA:
        raise StoreError(f"{target}: schema v{version} has no audit chain yet (the "
                         "orchestrator adds it the next time it opens the store)")
    await conn.execute("BEGIN")
    try:
        anchor = await fetchone(conn, "SELECT federation_id, first_id FROM audit_anchor")
        if anchor is None:
            return await _unanchored(conn, expect_head)
        if anchor[0] != federation_id:
            return ChainReport(0, 0, None, None, f"the chain is anchored to federation "
                               f"{anchor[0]!r}, not {federation_id!r}")
        walker = ChainWalker(federation_id, int(anchor[1]), expect_head)
        after = 0
        while page := await fetchall(conn, f"{_ROW} WHERE id > ? ORDER BY id LIMIT ?",
                                     (after, _PAGE)):
            if not await asyncio.to_thread(walker.feed, page):
                break
            after = int(page[-1][0])
        return walker.report()
    finally:
        await rollback_quietly(conn)


async def _unanchored(conn: aiosqlite.Connection, expect_head: str | None) -> ChainReport:
    """No anchor: fine while no row is chained (nothing appended since the upgrade)."""
    chained = await scalar(conn, "SELECT MIN(id) FROM audit WHERE hash IS NOT NULL")
    rows = int(await scalar(conn, "SELECT COUNT(*) FROM audit"))
    if chained is not None:
        return ChainReport(0, rows, None, None, "carries a hash but the chain's anchor is "
                           "missing (deleted?)", int(chained))
    if expect_head is not None:
        return ChainReport(0, rows, None, None, f"the recorded head {expect_head} is not in "
                           "the chain (no row is chained)")
    return ChainReport(0, rows, None, None)
