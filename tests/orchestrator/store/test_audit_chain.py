"""The audit hash chain on real SQLite files: every append path verifies, and edits, deletions,
reorders and truncated hashes made with a plain sqlite3 connection are reported at the first
broken row."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditEvent,
    IncomingUpdate,
    Store,
    StoreError,
    verify_audit,
)
from orchestrator.store._chain import genesis, link

FED = "fed-a"


def _params() -> dict[str, np.ndarray]:
    return {"w": np.ones((2, 2), dtype=np.float32)}


def _raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


async def _mixed(path: Path, federation_id: str = FED) -> None:
    """Every way the store appends audit rows: a plain append, device changes, an ingest with
    refusals, a quarantine, and the flood watch's coalesced refusal rows (9 rows)."""
    async with Store.open(path, clock=lambda: 1_000, federation_id=federation_id) as store:
        await store.add_device("dev-a", secret=b"s", status="active",
                               audit=AuditEvent("enrolled", "cli", device="dev-a"))
        await store.set_status("dev-a", "isolated",
                               audit=AuditEvent("isolated", "screen", device="dev-a"))
        await store.set_status("dev-a", "active",
                               audit=AuditEvent("reinstated", "cli", device="dev-a"))
        await store.ingest([
            IncomingUpdate.rejected("bad_signature", sender="dev-a", seq=1),
            IncomingUpdate.rejected("malformed"),
        ])
        arch = await store.put_architecture(b"softmax")
        await store.commit_version(params=_params(), kind="initial", parent=None, arch_hash=arch)
        (uid,) = await store.ingest([IncomingUpdate.accepted("dev-a", 2, 0, 10, _params())])
        await store.mark_updates([uid], "quarantined", "outlier")
        for n in range(3):  # what FloodWatch.write_refusals writes: one new row per interval
            await store.append_audit(AuditEvent(
                "refused", "rate_limiter", device="dev-a", reason="rate_limited",
                detail={"lane": "updates", "count": 10 * n, "bytes": 5, "first_ms": 1,
                        "last_ms": 2}))


async def test_every_append_path_verifies(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    await _mixed(db)
    report = await verify_audit(db, FED)
    assert report.ok, report
    assert (report.checked, report.unchained, report.head_id) == (9, 0, 9)
    with _raw(db) as raw:
        head = raw.execute("SELECT hash FROM audit WHERE id = 9").fetchone()[0]
    assert report.head == head
    assert (await verify_audit(db, FED, expect_head=head)).ok


async def test_two_stores_on_one_file_extend_the_same_chain(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    async with Store.open(db, federation_id=FED) as service, \
            Store.open(db, federation_id=FED) as cli:
        for i in range(6):
            await (service if i % 2 else cli).append_audit(AuditEvent(f"e{i}", "x"))
    report = await verify_audit(db, FED)
    assert report.ok and report.checked == 6


def _edit(column: str, value: object) -> str:
    return f"UPDATE audit SET {column} = {value!r} WHERE id = 4"


@pytest.mark.parametrize("sql", [
    _edit("detail", '{"forged":1}'),
    _edit("reason", "nothing to see"),
    _edit("actor", "someone-else"),
    _edit("ts_ms", 999),
    "UPDATE audit SET hash = substr(hash, 1, 32) WHERE id = 4",
    "UPDATE audit SET hash = NULL WHERE id = 4",
])
async def test_an_edited_row_is_the_first_broken_one(tmp_path: Path, sql: str) -> None:
    db = tmp_path / "o.db"
    await _mixed(db)
    with _raw(db) as raw:
        raw.execute(sql)
    report = await verify_audit(db, FED)
    assert not report.ok
    assert report.row_id == 4 and report.checked == 3, report


async def test_a_deleted_row_is_reported_at_its_successor(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    await _mixed(db)
    with _raw(db) as raw:
        raw.execute("DELETE FROM audit WHERE id = 5")
    report = await verify_audit(db, FED)
    assert report.row_id == 6 and report.problem is not None and "row 5" in report.problem


async def test_reordered_rows_are_reported(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    await _mixed(db)
    with _raw(db) as raw:  # swap rows 3 and 4, hashes and all
        raw.execute("UPDATE audit SET id = -3 WHERE id = 3")
        raw.execute("UPDATE audit SET id = 3 WHERE id = 4")
        raw.execute("UPDATE audit SET id = 4 WHERE id = -3")
    report = await verify_audit(db, FED)
    assert report.row_id == 3


async def test_a_rewritten_tail_is_caught_only_by_a_recorded_head(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    await _mixed(db)
    recorded = (await verify_audit(db, FED)).head
    with _raw(db) as raw:
        raw.execute("DELETE FROM audit WHERE id >= 7")
    assert (await verify_audit(db, FED)).ok  # truncation alone: nothing in the file says so
    report = await verify_audit(db, FED, expect_head=recorded)
    assert not report.ok and report.problem is not None and "recorded head" in report.problem


async def test_another_federation_or_a_missing_anchor_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    await _mixed(db)
    report = await verify_audit(db, "fed-b")
    assert not report.ok and report.problem is not None and "'fed-a'" in report.problem
    with _raw(db) as raw:
        raw.execute("DELETE FROM audit_anchor")
    assert (await verify_audit(db, FED)).row_id == 1


async def test_hashes_are_the_documented_encoding(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    async with Store.open(db, clock=lambda: 7, federation_id=FED) as store:
        await store.append_audit(AuditEvent("enrolled", "cli", device="d", detail={"k": 1}))
    with _raw(db) as raw:
        row = raw.execute("SELECT id, ts_ms, event, actor, device, reason, detail, hash "
                          "FROM audit").fetchone()
    assert row[7] == link(genesis(FED), row[:7])


async def test_a_missing_or_foreign_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        await verify_audit(tmp_path / "nope.db", FED)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot"):
        await verify_audit(junk, FED)


async def test_an_old_store_is_upgraded_and_chains_from_its_next_row(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    async with Store.open(db, migrations=MIGRATIONS[:2]):
        pass
    with _raw(db) as raw:  # what a v2 build wrote: no hash column
        raw.executemany("INSERT INTO audit (ts_ms, event, actor) VALUES (?, ?, 'cli')",
                        [(i, f"old{i}") for i in range(3)])
    with pytest.raises(StoreError, match="schema v2"):
        await verify_audit(db, FED)
    async with Store.open(db, federation_id=FED) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert (await verify_audit(db, FED)).unchained == 3  # upgraded, nothing chained yet
        await store.append_audit(AuditEvent("new", "cli"))
        await store.append_audit(AuditEvent("newer", "cli"))
        assert len(await store.list_audit()) == 5
    report = await verify_audit(db, FED)
    assert report.ok and (report.checked, report.unchained, report.head_id) == (2, 3, 5)
    with _raw(db) as raw:
        assert raw.execute("SELECT first_id FROM audit_anchor").fetchone()[0] == 4
        raw.execute("UPDATE audit_anchor SET first_id = 5")  # pretend row 4 is pre-chain
    assert (await verify_audit(db, FED)).row_id == 4


# -- properties -------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_event = st.builds(
    AuditEvent, event=_text.filter(bool), actor=_text, device=st.none() | _text,
    reason=st.none() | _text,
    detail=st.dictionaries(_text, st.integers(-(2**40), 2**40) | _text, max_size=3),
    ts_ms=st.none() | st.integers(0, 2**50),
)
# an op: one append, or an ingest batch of refusals (several rows in one transaction)
_op = st.one_of(_event, st.lists(_text.filter(bool), min_size=1, max_size=3))


async def _apply(db: Path, ops: list[AuditEvent | list[str]]) -> None:
    async with Store.open(db, federation_id=FED) as store:
        for op in ops:
            if isinstance(op, AuditEvent):
                await store.append_audit(op)
            else:
                await store.ingest([IncomingUpdate.rejected(r) for r in op])


def _flip(value: object, at: int) -> object | None:
    """``value`` with one bit of one byte flipped (an int's low byte, a string's ``at``-th
    UTF-8 byte); None when that makes invalid UTF-8 (not storable as TEXT)."""
    if isinstance(value, int):
        return value ^ (1 << (at % 8))
    raw = bytearray(str(value).encode())
    raw[at % len(raw)] ^= 1 << (at % 7)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


_COLUMNS = ("ts_ms", "event", "actor", "device", "reason", "detail", "hash")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, min_size=1, max_size=8), pick=st.integers(0, 10**6),
       column=st.sampled_from(_COLUMNS), at=st.integers(0, 10**6))
def test_random_histories_verify_and_any_byte_change_is_caught(
    tmp_path_factory: pytest.TempPathFactory, ops: list[AuditEvent | list[str]], pick: int,
    column: str, at: int,
) -> None:
    db = tmp_path_factory.mktemp("chain") / "o.db"
    asyncio.run(_apply(db, ops))
    report = asyncio.run(verify_audit(db, FED))
    assert report.ok, report
    with _raw(db) as raw:
        ids = [r[0] for r in raw.execute(f"SELECT id FROM audit WHERE {column} IS NOT NULL "
                                         f"AND {column} <> ''")]
        if not ids:
            return
        row_id = ids[pick % len(ids)]
        (value,) = raw.execute(f"SELECT {column} FROM audit WHERE id = ?", (row_id,)).fetchone()
        changed = _flip(value, at)
        assume(changed is not None)
        raw.execute(f"UPDATE audit SET {column} = ? WHERE id = ?", (changed, row_id))
    report = asyncio.run(verify_audit(db, FED))
    assert not report.ok and report.row_id == row_id, (report, column, value, changed)
