"""The store's lifecycle, migrations, registry, versions, audit and health checks, on real
SQLite files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest

from orchestrator.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditEvent,
    DeviceExistsError,
    IncomingUpdate,
    InvalidStateError,
    Migration,
    NotFoundError,
    SchemaVersionError,
    Store,
    StoreClosedError,
    StoreCorruptionError,
    StoreError,
)


class FakeClock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, as an operator's sqlite3 shell would have (no FK checks)."""
    return sqlite3.connect(path, isolation_level=None)


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32)}


async def test_open_creates_owner_only_wal_database(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        await store.add_device("dev-1", secret=b"s3cret")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(f"{path}-wal").st_mode) == 0o600  # and it exists
    with _raw(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_new_database_has_large_pages_and_fast_deletes(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        conn = store._conn
        assert conn is not None
        async with conn.execute("PRAGMA secure_delete") as cur:
            assert (await cur.fetchone()) == (2,)  # FAST
    with _raw(path) as raw:
        assert raw.execute("PRAGMA page_size").fetchone()[0] == 16384
    old = tmp_path / "old.db"  # an existing database keeps its page size
    with _raw(old) as raw:
        raw.execute("CREATE TABLE t (x)")
    async with Store.open(old):
        pass
    with _raw(old) as raw:
        assert raw.execute("PRAGMA page_size").fetchone()[0] == 4096


async def test_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "orch.db") as store:
        await store.add_device("dev-1", secret=b"k")
        writing = asyncio.Event()
        release = asyncio.Event()

        async def long_write() -> None:
            async with store._tx() as conn:
                await conn.execute("UPDATE devices SET device_class = 'x'")
                writing.set()
                await release.wait()

        writer = asyncio.create_task(long_write())
        await writing.wait()
        # the writer holds the write lock: a read still answers, from the last commit
        dev = await asyncio.wait_for(store.get_device("dev-1"), 5)
        assert dev is not None and dev.device_class is None
        release.set()
        await writer
        dev = await store.get_device("dev-1")
        assert dev is not None and dev.device_class == "x"


async def test_existing_file_is_made_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    async with Store.open(path):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        await store.add_device("dev-1", secret=b"k", device_class="gateway")
        await store.save_replay_windows({"dev-1": b"\x01\x02"})
        await store.put_server_state({"optimizer": b"moments"})
    async with Store.open(path) as store:
        dev = await store.get_device("dev-1")
        assert dev is not None and dev.device_class == "gateway" and dev.enroll_secret == b"k"
        assert await store.load_replay_windows() == {"dev-1": b"\x01\x02"}
        assert await store.get_server_state("optimizer") == b"moments"


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path):
        pass
    with _raw(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    with pytest.raises(SchemaVersionError) as info:
        async with Store.open(path):
            pass
    assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 3, SCHEMA_VERSION)
    with _raw(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 3


async def test_appended_migration_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        await store.add_device("dev-1", secret=b"k")
    privacy = Migration(SCHEMA_VERSION + 1, "privacy ledger", (
        "ALTER TABLE devices ADD COLUMN epsilon_spent REAL NOT NULL DEFAULT 0",
    ))
    async with Store.open(path, migrations=(*MIGRATIONS, privacy)) as store:
        assert store.schema_version == SCHEMA_VERSION + 1
        assert await store.get_device("dev-1") is not None
    with _raw(path) as raw:
        assert raw.execute("SELECT epsilon_spent FROM devices").fetchall() == [(0.0,)]
    # the older code now refuses the upgraded file
    with pytest.raises(SchemaVersionError):
        async with Store.open(path):
            pass


async def test_failing_migration_leaves_the_old_schema(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path):
        pass
    broken = Migration(SCHEMA_VERSION + 1, "broken", (
        "CREATE TABLE half_done (x INTEGER)",
        "ALTER TABLE no_such_table ADD COLUMN y INTEGER",
    ))
    with pytest.raises(StoreError):
        async with Store.open(path, migrations=(*MIGRATIONS, broken)):
            pass
    with _raw(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in tables


async def test_misnumbered_migrations_are_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"1\.\.N"):
        async with Store.open(tmp_path / "x.db", migrations=(Migration(2, "x", ()),)):
            pass


async def test_unopenable_paths_raise_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        async with Store.open(tmp_path):  # a directory
            pass
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file at all" * 200)
    with pytest.raises(StoreError):
        async with Store.open(junk):
            pass
    with pytest.raises(StoreError):
        async with Store.open(tmp_path / "missing-dir" / "x.db"):
            pass


async def test_closed_store_refuses_use() -> None:
    async with Store.open(":memory:") as store:
        pass
    with pytest.raises(StoreClosedError):
        await store.list_devices()


async def test_device_registry_lifecycle() -> None:
    clock = FakeClock(5_000)
    async with Store.open(":memory:", clock=clock) as store:
        dev = await store.add_device(
            "dev-1", secret=b"one-time", device_class="sensor",
            audit=AuditEvent("device_added", actor="op-ann", device="dev-1"),
        )
        assert (dev.status, dev.role, dev.created_ms) == ("pending", "device", 5_000)
        assert "one-time" not in repr(dev)
        await store.add_device("op-ann", secret=b"x", role="operator", status="active")
        with pytest.raises(DeviceExistsError):
            await store.add_device("dev-1", secret=b"again")

        clock.now = 6_000
        await store.set_key("dev-1", b"K" * 32, status="awaiting_approval", clear_secret=True,
                            audit=AuditEvent("enrolled", actor="orchestrator", device="dev-1"))
        dev2 = await store.get_device("dev-1")
        assert dev2 is not None
        assert (dev2.public_key, dev2.status, dev2.enrolled_ms) == (b"K" * 32,
                                                                    "awaiting_approval", 6_000)
        assert dev2.enroll_secret is None
        await store.set_status("dev-1", "active")

        clock.now = 7_000
        await store.record_heartbeat("dev-1", last_status=b"\x81\xa1b\x50",
                                     device_class="gateway", replay_state=b"win")
        await store.record_heartbeat("dev-1")  # keeps the last status and class
        dev3 = await store.get_device("dev-1")
        assert dev3 is not None
        assert (dev3.last_seen_ms, dev3.last_status, dev3.device_class) == (
            7_000, b"\x81\xa1b\x50", "gateway")
        assert await store.load_replay_windows() == {"dev-1": b"win"}

        assert [d.device_id for d in await store.list_devices(role="operator")] == ["op-ann"]
        assert [d.device_id for d in await store.list_devices(status="active")] == [
            "dev-1", "op-ann"]
        assert await store.list_devices(status=["revoked", "isolated"]) == []
        assert [d.device_id for d in await store.list_devices(device_class="gateway")] == [
            "dev-1"]

        for call in (store.set_status("ghost", "revoked"),
                     store.record_heartbeat("ghost"),
                     store.set_key("ghost", b"k")):
            with pytest.raises(NotFoundError):
                await call
        with pytest.raises(ValueError):
            await store.set_status("dev-1", "asleep")  # type: ignore[arg-type]

        events = [(a.event, a.device) for a in await store.list_audit(newest_first=False)]
        assert events == [("device_added", "dev-1"), ("enrolled", "dev-1")]


async def test_replay_window_needs_a_registered_sender() -> None:
    async with Store.open(":memory:") as store:
        with pytest.raises(StoreError):
            await store.save_replay_windows({"stranger": b"x"})


async def test_audit_filters() -> None:
    clock = FakeClock(100)
    async with Store.open(":memory:", clock=clock) as store:
        await store.append_audit(AuditEvent("enrolled", "orchestrator", device="a"))
        clock.now = 200
        await store.append_audit(AuditEvent("rejected", "ingest", device="a",
                                            reason="bad_signature", detail={"seq": 4}))
        await store.append_audit(AuditEvent("revoked", "op-ann", device="b", ts_ms=300))
        clock.now = 400
        await store.append_audit(AuditEvent("operator_command", "op-ann",
                                            detail={"cmd": "pause"}))

        def names(rows: list) -> list[str]:  # type: ignore[type-arg]
            return [r.event for r in rows]

        assert names(await store.list_audit()) == [
            "operator_command", "revoked", "rejected", "enrolled"]
        assert names(await store.list_audit(since_ms=200, until_ms=400, newest_first=False)) == [
            "rejected", "revoked"]
        assert names(await store.list_audit(device="a")) == ["rejected", "enrolled"]
        assert names(await store.list_audit(event=["revoked", "enrolled"])) == [
            "revoked", "enrolled"]
        assert names(await store.list_audit(actor="op-ann", limit=1)) == ["operator_command"]
        (rejected,) = await store.list_audit(event="rejected")
        assert (rejected.ts_ms, rejected.reason, rejected.detail) == (
            200, "bad_signature", {"seq": 4})


async def test_server_state_upserts() -> None:
    async with Store.open(":memory:") as store:
        assert await store.get_server_state("optimizer") is None
        await store.put_server_state({"optimizer": b"a", "stopping": b"b"})
        await store.put_server_state({"optimizer": b"c"})
        assert await store.server_state() == {"optimizer": b"c", "stopping": b"b"}


def _bit_patterns() -> dict[str, np.ndarray]:
    special = np.array([0x7FC00001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001,
                        0x3F800000], dtype=np.uint32).view(np.float32)
    return {"special": special, "scalar": np.array(np.float32(-0.0)),
            "empty": np.zeros((0, 5), np.float32), **_params(1)}


async def test_version_round_trip_is_bit_exact(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    params = _bit_patterns()
    async with Store.open(path) as store:
        arch = await store.put_architecture(b"graphs")
        assert await store.put_architecture(b"graphs") == arch  # stored once
        v0 = await store.commit_version(params=params, kind="initial", parent=None,
                                        arch_hash=arch, metrics={"loss": 1.5})
        assert (v0.version, v0.kind, v0.lineage) == (0, "initial", {"updates": []})
    async with Store.open(path) as store:
        got = await store.get_version(0)
        assert list(got.params) == list(params)
        for name, arr in params.items():
            assert got.params[name].dtype == arr.dtype and got.params[name].shape == arr.shape
            assert got.params[name].tobytes() == arr.tobytes()
        assert got.info == v0
        assert await store.get_architecture(arch) == b"graphs"


async def test_version_chain_rules_and_metrics() -> None:
    async with Store.open(":memory:") as store:
        with pytest.raises(NotFoundError):
            await store.get_version(0)
        assert await store.latest_version() is None
        arch = await store.put_architecture(b"mlp")
        with pytest.raises(InvalidStateError):
            await store.commit_version(params=_params(), kind="aggregate", parent=0,
                                       arch_hash=arch)
        with pytest.raises(ValueError):
            await store.commit_version(params=_params(), kind="initial", parent=None)
        with pytest.raises(NotFoundError):
            await store.commit_version(params=_params(), kind="initial", parent=None,
                                       arch_hash="0" * 64)
        await store.commit_version(params=_params(0), kind="initial", parent=None, arch_hash=arch)
        await store.commit_version(params=_params(1), kind="aggregate", parent=0)
        with pytest.raises(InvalidStateError):  # aggregating onto an outdated version
            await store.commit_version(params=_params(2), kind="aggregate", parent=0)
        rb = await store.commit_version(params=_params(0), kind="rollback", parent=0,
                                        lineage={"rolled_back_from": 1})
        assert (rb.version, rb.parent, rb.arch_hash) == (2, 0, arch)
        assert rb.lineage == {"rolled_back_from": 1, "updates": []}
        with pytest.raises(ValueError, match="reserved"):
            await store.commit_version(params=_params(), kind="rollback", parent=0,
                                       lineage={"updates": [1]})
        latest = await store.latest_version()
        assert latest is not None and latest.version == 2
        assert [v.version for v in await store.list_versions()] == [0, 1, 2]

        assert await store.set_version_metrics(1, {"acc": 0.5}) == {"acc": 0.5}
        assert await store.set_version_metrics(1, {"loss": 0.3, "acc": 0.6}) == {
            "acc": 0.6, "loss": 0.3}
        assert (await store.get_version(1)).info.metrics == {"acc": 0.6, "loss": 0.3}
        with pytest.raises(NotFoundError):
            await store.set_version_metrics(9, {"acc": 1.0})


async def test_integrity_check_finds_planted_problems(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path) as store:
        arch = await store.put_architecture(b"a")
        await store.commit_version(params=_params(), kind="initial", parent=None, arch_hash=arch)
        ids = await store.ingest([
            IncomingUpdate.accepted("d", seq, 0, 5, _params(seq)) for seq in range(3)
        ])
        buffered = await store.buffered()
        await store.commit_version(params=_params(9), kind="aggregate", parent=0,
                                   applied={buffered[0].update_id: 5.0})
        await store.commit_version(params=_params(8), kind="aggregate", parent=1)
        assert await store.integrity_check() == []

    with _raw(path) as raw:
        # an applied update whose delta is still in the buffer
        raw.execute("UPDATE updates SET status = 'applied', weight = 1.0, applied_version = 1 "
                    "WHERE id = ?", (ids[1],))
        # a flipped bit in a stored model
        blob = bytearray(raw.execute("SELECT params FROM version_params WHERE version = 0")
                         .fetchone()[0])
        blob[-1] ^= 0x01
        raw.execute("UPDATE version_params SET params = ? WHERE version = 0", (bytes(blob),))
        # a hole in the version chain
        raw.execute("DELETE FROM version_params WHERE version = 1")
        raw.execute("DELETE FROM versions WHERE version = 1")

    async with Store.open(path) as store:
        problems = await store.integrity_check()
        text = "\n".join(problems)
        assert f"buffer holds update {ids[1]} whose status is 'applied'" in text
        assert "version 0: params do not match their SHA-256" in text
        assert "versions not contiguous: expected 1, found 2" in text
        assert "foreign key" in text  # version 2's parent and update rows point at version 1
        with pytest.raises(StoreCorruptionError):
            await store.get_version(0)
