"""The update ledger, the aggregation buffer and version commits: atomicity on real files."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from orchestrator.store import (
    DuplicateUpdateError,
    IncomingUpdate,
    InvalidStateError,
    Store,
    StoreError,
)


class FakeClock:
    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _delta(value: float, n: int = 6) -> dict[str, np.ndarray]:
    return {"w": np.full((2, n // 2), value, np.float32), "b": np.array([value], np.float32)}


async def _seed(store: Store, *devices: str) -> None:
    arch = await store.put_architecture(b"arch")
    await store.commit_version(params=_delta(0.0), kind="initial", parent=None, arch_hash=arch)
    for dev in devices:
        await store.add_device(dev, secret=b"s", status="active")


async def test_ingest_records_everything_in_one_batch() -> None:
    clock = FakeClock(5_000)
    async with Store.open(":memory:", clock=clock) as store:
        await _seed(store, "a", "b")
        nan_delta = {"w": np.array([[np.nan, -0.0, 1e-45]], np.float32),
                     "b": np.array([3.0], np.float32)}
        batch = [
            IncomingUpdate.accepted("a", 1, 0, 10, _delta(1.0), norm=2.5,
                                    meta={"steps": 4, "loss": np.float32(0.25)}),
            IncomingUpdate.rejected("bad_signature"),  # claims nothing trustworthy
            IncomingUpdate.accepted("b", 7, 0, 20, nan_delta, received_ms=4_000),
            IncomingUpdate.quarantined("b", 8, "norm_outlier", base_version=0, num_samples=5),
            IncomingUpdate.accepted("a", 2, 0, 30, _delta(2.0)),
            IncomingUpdate.rejected("replay", sender="a", seq=1),
        ]
        ids = await store.ingest(batch, {"a": b"win-a", "b": b"win-b"})
        assert ids == sorted(ids) and len(set(ids)) == 6

        buffered = await store.buffered()
        assert [b.update_id for b in buffered] == [ids[0], ids[2], ids[4]]
        first = buffered[0]
        assert (first.sender, first.seq, first.base_version, first.num_samples, first.norm) == (
            "a", 1, 0, 10, 2.5)
        assert first.meta == {"steps": 4, "loss": 0.25}
        assert first.received_ms == 5_000 and buffered[1].received_ms == 4_000
        assert buffered[1].delta["w"].tobytes() == nan_delta["w"].tobytes()  # bit-exact
        assert await store.buffered(limit=1) == buffered[:1]
        assert await store.buffered_count() == 3

        a, b = await store.get_device("a"), await store.get_device("b")
        assert a is not None and b is not None
        assert (a.accepted_count, a.rejected_count, a.quarantine_count) == (2, 1, 0)
        assert (b.accepted_count, b.rejected_count, b.quarantine_count) == (1, 0, 1)
        assert await store.load_replay_windows() == {"a": b"win-a", "b": b"win-b"}

        audit = await store.list_audit(newest_first=False)
        assert [(r.event, r.device, r.reason) for r in audit] == [
            ("rejected", None, "bad_signature"),
            ("quarantined", "b", "norm_outlier"),
            ("rejected", "a", "replay"),
        ]
        assert audit[1].detail == {"update_id": ids[3], "seq": 8, "base_version": 0}
        assert await store.ledger_counts() == {
            ("buffered", None): 3, ("rejected", "bad_signature"): 1,
            ("rejected", "replay"): 1, ("quarantined", "norm_outlier"): 1,
        }


async def test_second_acceptance_of_a_sender_seq_is_refused_whole_batch(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        await _seed(store, "a", "b")
        await store.ingest([IncomingUpdate.accepted("a", 1, 0, 10, _delta(1.0))], {"a": b"w1"})
        # rejected copies of the same (sender, seq) are fine, any number of times
        await store.ingest([IncomingUpdate.rejected("duplicate", sender="a", seq=1)] * 2)
        with pytest.raises(DuplicateUpdateError) as info:
            await store.ingest(
                [IncomingUpdate.accepted("b", 1, 0, 10, _delta(3.0)),
                 IncomingUpdate.quarantined("a", 1, "norm_outlier")],
                {"a": b"w2", "b": b"w2"},
            )
        assert (info.value.sender, info.value.seq) == ("a", 1)
        with pytest.raises(DuplicateUpdateError) as info:  # twice within one batch
            await store.ingest([IncomingUpdate.accepted("b", 5, 0, 1, _delta(1.0))] * 2)
        assert (info.value.sender, info.value.seq) == ("b", 5)
    async with Store.open(path) as store:
        # nothing of the refused batches: no ledger rows, windows or counters
        assert [(e.sender, e.seq, e.status) for e in await store.ledger()] == [
            ("a", 1, "buffered"), ("a", 1, "rejected"), ("a", 1, "rejected")]
        assert await store.load_replay_windows() == {"a": b"w1"}
        b = await store.get_device("b")
        assert b is not None and b.accepted_count == 0
        assert await store.integrity_check() == []


async def test_commit_version_consumes_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        await _seed(store, "a")
        ids = await store.ingest(
            [IncomingUpdate.accepted("a", s, 0, 10 * s, _delta(float(s))) for s in (1, 2, 3)])
        info = await store.commit_version(
            params=_delta(5.0), kind="aggregate", parent=0,
            applied={ids[0]: 10.0, ids[2]: 17.3}, dropped={ids[1]: "stale"},
            server_state={"optimizer": b"m1"}, lineage={"reducer": "mean"},
        )
        assert info.version == 1 and info.lineage == {"reducer": "mean",
                                                      "updates": [ids[0], ids[2]]}
    async with Store.open(path) as store:
        assert await store.buffered() == []
        rows = {e.id: e for e in await store.ledger()}
        assert (rows[ids[0]].status, rows[ids[0]].weight, rows[ids[0]].applied_version) == (
            "applied", 10.0, 1)
        assert rows[ids[2]].weight == pytest.approx(17.3)
        assert (rows[ids[1]].status, rows[ids[1]].reason, rows[ids[1]].applied_version) == (
            "rejected", "stale", None)
        assert [e.id for e in await store.ledger(applied_version=1)] == [ids[0], ids[2]]
        assert await store.get_server_state("optimizer") == b"m1"
        assert await store.integrity_check() == []


async def test_commit_with_a_non_buffered_update_changes_nothing() -> None:
    async with Store.open(":memory:") as store:
        await _seed(store, "a")
        ids = await store.ingest(
            [IncomingUpdate.accepted("a", s, 0, 1, _delta(1.0)) for s in (1, 2)]
            + [IncomingUpdate.rejected("bad_signature", sender="a", seq=3)])
        await store.commit_version(params=_delta(1.0), kind="aggregate", parent=0,
                                   applied={ids[0]: 1.0})
        for applied, dropped in (({ids[1]: 1.0, ids[0]: 1.0}, {}),  # already applied
                                 ({ids[1]: 1.0}, {ids[2]: "stale"}),  # a rejected row
                                 ({ids[1]: 1.0, 999: 1.0}, {})):  # no such update
            with pytest.raises(InvalidStateError) as info:
                await store.commit_version(params=_delta(2.0), kind="aggregate", parent=1,
                                           applied=applied, dropped=dropped,
                                           server_state={"optimizer": b"x"})
            assert ids[1] not in info.value.ids and info.value.ids
        assert [v.version for v in await store.list_versions()] == [0, 1]
        assert [b.update_id for b in await store.buffered()] == [ids[1]]
        assert await store.get_server_state("optimizer") is None
        assert await store.integrity_check() == []


async def test_failure_inside_commit_leaves_no_trace(tmp_path: Path) -> None:
    """A real SQLite error in the last statement of the transaction: after reopening, neither
    the version, nor the ledger change, nor the buffer deletion is visible."""
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        await _seed(store, "a")
        ids = await store.ingest(
            [IncomingUpdate.accepted("a", s, 0, 1, _delta(float(s))) for s in (1, 2)])
    with sqlite3.connect(path, isolation_level=None) as raw:
        raw.execute("CREATE TRIGGER fail_state BEFORE INSERT ON server_state "
                    "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    async with Store.open(path) as store:
        with pytest.raises(StoreError, match="disk on fire"):
            await store.commit_version(params=_delta(9.0), kind="aggregate", parent=0,
                                       applied={ids[0]: 1.0}, dropped={ids[1]: "stale"},
                                       server_state={"optimizer": b"m"})
        # the same connection carries on normally after the rollback
        assert (await store.latest_version()) is not None
    async with Store.open(path) as store:
        latest = await store.latest_version()
        assert latest is not None and latest.version == 0
        assert [b.update_id for b in await store.buffered()] == ids
        assert {e.status for e in await store.ledger()} == {"buffered"}
        assert await store.integrity_check() == []


async def test_mark_updates_quarantines_buffered_only() -> None:
    clock = FakeClock(9_000)
    async with Store.open(":memory:", clock=clock) as store:
        await _seed(store, "a", "b")
        ids = await store.ingest([
            IncomingUpdate.accepted("a", 1, 0, 1, _delta(1.0)),
            IncomingUpdate.accepted("b", 1, 0, 1, _delta(1.0)),
            IncomingUpdate.accepted("b", 2, 0, 1, _delta(1.0)),
        ])
        await store.mark_updates([ids[1], ids[2]], "quarantined", "norm_outlier")
        assert [b.update_id for b in await store.buffered()] == [ids[0]]
        b = await store.get_device("b")
        assert b is not None and b.quarantine_count == 2
        audit = await store.list_audit(event="quarantined", newest_first=False)
        assert [(r.device, r.detail["update_id"], r.ts_ms) for r in audit] == [
            ("b", ids[1], 9_000), ("b", ids[2], 9_000)]
        with pytest.raises(InvalidStateError) as info:
            await store.mark_updates([ids[0], ids[1]], "rejected", "stale")
        assert info.value.ids == (ids[1],)
        assert [b.update_id for b in await store.buffered()] == [ids[0]]  # all or nothing
        await store.mark_updates([ids[0]], "rejected", "stale")
        assert await store.buffered() == []
        assert await store.integrity_check() == []


async def test_ledger_queries() -> None:
    clock = FakeClock(100)
    async with Store.open(":memory:", clock=clock) as store:
        await _seed(store, "a", "b")
        await store.ingest([IncomingUpdate.accepted("a", 1, 0, 1, _delta(1.0)),
                            IncomingUpdate.rejected("replay", sender="b", seq=0)])
        clock.now = 200
        await store.ingest([IncomingUpdate.accepted("b", 1, 0, 1, _delta(1.0)),
                            IncomingUpdate.rejected("bad_signature", sender="a")])

        def key(rows: list) -> list[tuple]:  # type: ignore[type-arg]
            return [(r.sender, r.status) for r in rows]

        assert key(await store.ledger(sender="a")) == [("a", "buffered"), ("a", "rejected")]
        assert key(await store.ledger(status="rejected")) == [("b", "rejected"),
                                                              ("a", "rejected")]
        assert key(await store.ledger(reason="replay")) == [("b", "rejected")]
        assert key(await store.ledger(since_ms=200)) == [("b", "buffered"), ("a", "rejected")]
        assert key(await store.ledger(limit=1, newest_first=True)) == [("a", "rejected")]
        assert key(await store.ledger(status=["buffered", "applied"])) == [
            ("a", "buffered"), ("b", "buffered")]
        assert await store.ledger_counts(sender="a") == {("buffered", None): 1,
                                                         ("rejected", "bad_signature"): 1}
        assert await store.ledger_counts(since_ms=300) == {}
        with pytest.raises(ValueError):
            await store.ledger(status="lost")  # type: ignore[arg-type]


async def test_ingest_in_large_batches(tmp_path: Path) -> None:
    """Hundreds of updates per transaction, on a real file with synchronous=FULL (speed is
    measured by `fedmq bench ingest`, not asserted here)."""
    async with Store.open(tmp_path / "orch.db") as store:
        await _seed(store, *(f"dev-{i}" for i in range(50)))
        delta = {"w": np.ones(1024, np.float32)}
        n_batches, size = 5, 200
        for b in range(n_batches):
            await store.ingest(
                [IncomingUpdate.accepted(f"dev-{i % 50}", b * size + i, 0, 10, delta,
                                         meta={"steps": 5}) for i in range(size)],
                {f"dev-{i}": b"window" for i in range(50)},
            )
        assert await store.buffered_count() == n_batches * size
        assert await store.integrity_check() == []


async def test_cancelled_ingest_is_all_or_nothing_and_the_store_carries_on() -> None:
    """Cancel ingests at points spread over their duration: each batch is either fully in or
    fully out, and the shared connection is never left inside a transaction."""
    async with Store.open(":memory:") as store:
        await _seed(store, "a")

        def batch(n: int) -> list[IncomingUpdate]:
            return [IncomingUpdate.accepted("a", n * 10 + i, 0, 1, _delta(1.0))
                    for i in range(3)]

        start = time.perf_counter()
        await store.ingest(batch(0))
        duration = time.perf_counter() - start
        for n in range(1, 41):
            task = asyncio.create_task(store.ingest(batch(n), {"a": str(n).encode()}))
            await asyncio.sleep(duration * n / 20)  # from early on to well past the end
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            seqs = {e.seq for e in await store.ledger()}
            wanted = {n * 10 + i for i in range(3)}
            assert wanted <= seqs or not wanted & seqs
        await store.ingest(batch(99))  # still usable: no transaction left open
        assert await store.integrity_check() == []
