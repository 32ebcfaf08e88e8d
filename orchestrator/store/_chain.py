"""The audit log's hash chain (internal).

Every audit row written since schema v3 carries ``hash``: SHA-256 (hex) over a canonical
encoding (a compact ASCII JSON array) of a version tag, the previous chained row's hash and the
row's columns as stored (id, ts_ms, event, actor, device, reason, detail). The first chained row
chains to :func:`genesis` of the federation recorded in ``audit_anchor``, which also records the
first chained id: rows from before the chain existed (an upgraded database) keep a NULL hash and
are reported as unchained, never silently trusted.

Audit rows are never updated after insert (the flood watch coalesces refusals in memory and
writes one new row per interval), so every column is hashed and nothing may re-chain a row.
Appends read the previous hash inside the caller's write transaction (``BEGIN IMMEDIATE``), so
several processes appending to one file (the service and the CLI) always extend the same head.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from ._sql import fetchone

__all__ = ["ChainReport", "ChainWalker", "genesis", "insert_audits", "link"]

TAG = "fedmq-audit-v1"
INSERT_CHAINED = (
    "INSERT INTO audit (id, ts_ms, event, actor, device, reason, detail, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")

AuditValues = tuple[int, str, str, "str | None", "str | None", str]
"""(ts_ms, event, actor, device, reason, detail JSON text) — a row before its id and hash."""


def _sha256(parts: Sequence[Any]) -> str:
    payload = json.dumps(list(parts), ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def genesis(federation_id: str) -> str:
    """What the first chained row chains to: bound to the federation, so a chain cannot be
    passed off as another federation's."""
    return _sha256([TAG, "genesis", federation_id])


def link(prev: str, row: Sequence[Any]) -> str:
    """A row's hash: ``row`` is (id, ts_ms, event, actor, device, reason, detail)."""
    return _sha256([TAG, prev, *row])


async def insert_audits(
    conn: aiosqlite.Connection, rows: Sequence[AuditValues], *, federation_id: str, now_ms: int,
) -> list[int]:
    """Append ``rows`` to the chain in the caller's write transaction; returns their ids.

    The first append to a database without an anchor writes it (this store's federation, the
    next id as the first chained row)."""
    if not rows:
        return []
    last = await fetchone(conn, "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
    last_id = 0 if last is None else int(last[0])
    prev: str | None = None if last is None else last[1]
    if prev is None:  # nothing chained yet (or a broken last row: verify reports it)
        anchor = await fetchone(conn, "SELECT federation_id FROM audit_anchor WHERE id = 1")
        if anchor is None:
            await conn.execute(
                "INSERT INTO audit_anchor (id, federation_id, first_id, created_ms) "
                "VALUES (1, ?, ?, ?)", (federation_id, last_id + 1, now_ms))
            prev = genesis(federation_id)
        else:
            prev = genesis(str(anchor[0]))
    chained: list[tuple[Any, ...]] = []
    for row_id, values in enumerate(rows, start=last_id + 1):
        prev = link(prev, (row_id, *values))
        chained.append((row_id, *values, prev))
    await conn.executemany(INSERT_CHAINED, chained)
    return [c[0] for c in chained]


@dataclass(frozen=True)
class ChainReport:
    """What ``verify`` found: ``problem`` is None for an intact chain, else the first broken
    link (``row_id`` None when it is not one row's fault, e.g. the anchor)."""

    checked: int
    unchained: int
    head: str | None
    head_id: int | None
    problem: str | None = None
    row_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class ChainWalker:
    """Walks rows (id, ts_ms, event, actor, device, reason, detail, hash) in id order, page by
    page, stopping at the first broken link (pure CPU: run pages in a thread)."""

    def __init__(self, federation_id: str, first_id: int, expect_head: str | None = None) -> None:
        self.first_id = first_id
        self.expect_head = expect_head
        self.head_seen = False
        self.prev = genesis(federation_id)
        self.expect = first_id
        self.checked = 0
        self.unchained = 0
        self.head_id: int | None = None
        self.problem: tuple[int, str] | None = None

    def feed(self, rows: Sequence[Sequence[Any]]) -> bool:
        """False once a broken link is found (``problem`` says where and what)."""
        for row in rows:
            self.problem = self._check(row)
            if self.problem is not None:
                return False
        return True

    def _check(self, row: Sequence[Any]) -> tuple[int, str] | None:
        row_id, stored = int(row[0]), row[7]
        if row_id < self.first_id:
            if stored is not None:
                return row_id, (f"carries a hash but precedes the chain's first row "
                                f"{self.first_id} (the anchor was moved)")
            self.unchained += 1
            return None
        if row_id != self.expect:
            gap = (f"row {self.expect}" if row_id == self.expect + 1
                   else f"rows {self.expect}..{row_id - 1}")
            return row_id, f"follows row {self.expect - 1} but {gap} missing (deleted?)"
        if stored is None:
            return row_id, "has no hash (written outside the store, or its hash was removed)"
        if not isinstance(stored, str) or not _HEX64.fullmatch(stored):
            return row_id, f"hash is malformed ({len(str(stored))} characters, not 64 hex)"
        if link(self.prev, row[:7]) != stored:
            return row_id, ("contents do not match its hash (edited, reordered, or chained "
                            "to a different predecessor)")
        self.prev, self.expect, self.head_id = stored, row_id + 1, row_id
        self.head_seen = self.head_seen or stored == self.expect_head
        self.checked += 1
        return None

    def report(self) -> ChainReport:
        head = self.prev if self.head_id is not None else None
        if self.problem is None and self.expect_head is not None and not self.head_seen:
            return ChainReport(self.checked, self.unchained, head, self.head_id,
                               f"the recorded head {self.expect_head} is not in the chain "
                               "(history rewritten or truncated since it was recorded)")
        if self.problem is None:
            return ChainReport(self.checked, self.unchained, head, self.head_id)
        return ChainReport(self.checked, self.unchained, head, self.head_id,
                           self.problem[1], self.problem[0])
