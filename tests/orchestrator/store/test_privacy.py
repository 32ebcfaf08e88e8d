"""The privacy ledger in the store: the migration, charges committed with their version, and
the accountant's state beside them, on real SQLite files."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from orchestrator.privacy import (
    DeviceLedger,
    DpPolicy,
    FederationAccountant,
)
from orchestrator.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    IncomingUpdate,
    InvalidStateError,
    NotFoundError,
    PrivacyCharge,
    PrivacyRecord,
    Store,
    StoreIntegrityError,
)
from orchestrator.store.state_keys import StateKey

POLICY = DpPolicy(mode="server", clip_norm=1.0, noise_multiplier=1.0, epsilon_max=10.0)


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32)}


def _tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        return {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}


async def _initial(store: Store) -> None:
    arch = await store.put_architecture(b"softmax")
    await store.commit_version(params=_params(), kind="initial", parent=None, arch_hash=arch)


async def test_v1_file_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path, migrations=MIGRATIONS[:1]) as store:
        assert store.schema_version == 1
        await store.add_device("dev-a", secret=b"s", status="active")
        await _initial(store)
        await store.ingest([IncomingUpdate.accepted("dev-a", 1, 0, 10, _params(1))])
    assert "privacy_ledger" not in _tables(path)

    async with Store.open(path) as store:
        assert store.schema_version == SCHEMA_VERSION >= 2
        # what was there survives
        assert (await store.get_device("dev-a")) is not None
        assert [e.sender for e in await store.buffered()] == ["dev-a"]
        assert await store.privacy_ledger() == []
        await store.record_privacy(0, [PrivacyCharge("dev-a", 1.0, 1.0, "local")])
        assert await store.integrity_check() == []
    assert "privacy_ledger" in _tables(path)
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def _schema_of(path: Path, name: str) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        return raw.execute("SELECT type, sql FROM sqlite_master WHERE tbl_name = ? "
                           "ORDER BY type, name", (name,)).fetchall()


async def test_v3_file_migrates_with_its_ledger_intact_and_takes_distributed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "orch.db"
    async with Store.open(path, migrations=MIGRATIONS[:3], clock=lambda: 7_000) as store:
        await _initial(store)
        await store.commit_version(params=_params(1), kind="aggregate", parent=0, privacy=[
            PrivacyCharge("dev-a", 1.0, 1.0, "local"),
            PrivacyCharge("dev-b", 0.5, 2.0, "server", contributions=2)])
        await store.commit_version(params=_params(2), kind="aggregate", parent=1, privacy=[
            PrivacyCharge("dev-a", 1.0, 1.0, "local")])
        before = await store.privacy_ledger()
        # the v3 CHECK knows two modes only
        with pytest.raises(StoreIntegrityError):
            await store.record_privacy(1, [PrivacyCharge("dev-c", 1.0, 1.0, "distributed")])
    assert len(before) == 3
    assert "distributed" not in str(_schema_of(path, "privacy_ledger"))

    async with Store.open(path, clock=lambda: 8_000) as store:
        assert store.schema_version == SCHEMA_VERSION >= 4
        assert await store.privacy_ledger() == before
        await store.record_privacy(1, [PrivacyCharge("dev-c", 1.0, 1.0, "distributed")])
        assert await store.privacy_ledger(device_id="dev-c") == [
            PrivacyRecord("dev-c", 1, 1.0, 1.0, "distributed", 1, 8_000)]
        # still one row per device and version, still only for versions that exist
        with pytest.raises(StoreIntegrityError):
            await store.record_privacy(1, [PrivacyCharge("dev-c", 1.0, 1.0, "server")])
        assert await store.integrity_check() == []
    with contextlib.closing(sqlite3.connect(path)) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO privacy_ledger VALUES ('dev-d', 1, 1.0, 1.0, 'trusted', 1, 0)")
    schema = _schema_of(path, "privacy_ledger")
    assert [kind for kind, _ in schema] == ["index", "table"]
    assert "privacy_ledger_version" in schema[0][1] and "'distributed'" in schema[1][1]
    assert "privacy_ledger_v4" not in _tables(path)


async def test_commit_version_charges_devices_with_the_version(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "orch.db", clock=lambda: 5_000) as store:
        await _initial(store)
        ids = await store.ingest([
            IncomingUpdate.accepted("dev-a", 1, 0, 10, _params(1)),
            IncomingUpdate.accepted("dev-b", 1, 0, 10, _params(2)),
            IncomingUpdate.accepted("dev-a", 2, 0, 10, _params(3)),
        ])
        entries = await store.buffered()
        senders = [e.sender for e in entries]
        accountant = FederationAccountant.for_policy(POLICY)
        accountant.record_version(len(set(senders)), 5, max_contributions=2)
        charges = PrivacyCharge.for_senders(senders, noise_multiplier=1.0, clip_norm=1.0,
                                            mode="server")
        assert [(c.device_id, c.contributions) for c in charges] == [("dev-a", 2), ("dev-b", 1)]
        info = await store.commit_version(
            params=_params(9), kind="aggregate", parent=0,
            applied={i: 10.0 for i in ids}, privacy=charges,
            server_state={StateKey.ACCOUNTANT: accountant.state_dict(),
                          StateKey.PRIVACY_POLICY: POLICY.to_bytes()},
        )
        rows = await store.privacy_ledger()
        assert rows == [
            PrivacyRecord("dev-a", info.version, 1.0, 1.0, "server", 2, 5_000),
            PrivacyRecord("dev-b", info.version, 1.0, 1.0, "server", 1, 5_000),
        ]
        assert await store.privacy_ledger(device_id="dev-b") == rows[1:]
        assert await store.privacy_ledger(since_version=info.version + 1) == []

        saved = await store.get_server_state(StateKey.ACCOUNTANT)
        assert saved is not None
        assert FederationAccountant.from_state(saved).epsilon() == accountant.epsilon()
        policy_state = await store.get_server_state(StateKey.PRIVACY_POLICY)
        assert policy_state is not None and DpPolicy.from_bytes(policy_state) == POLICY
        # the rows feed the per-device ledger as they are
        ledger = DeviceLedger.for_policy(POLICY, rows)
        assert ledger.participations("dev-a") == 1
        assert ledger.epsilon("dev-a") > ledger.epsilon("dev-b") > 0


async def test_failed_commit_charges_nobody(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "orch.db") as store:
        await _initial(store)
        with pytest.raises(InvalidStateError):
            await store.commit_version(
                params=_params(9), kind="aggregate", parent=0, applied={41: 1.0},
                privacy=[PrivacyCharge("dev-a", 1.0, 1.0, "server")],
                server_state={StateKey.ACCOUNTANT: b"{}"},
            )
        assert await store.privacy_ledger() == []
        assert await store.get_server_state(StateKey.ACCOUNTANT) is None
        # a device charged twice in one version is refused before anything is written
        with pytest.raises(ValueError, match="charged twice"):
            await store.commit_version(
                params=_params(9), kind="aggregate", parent=0,
                privacy=[PrivacyCharge("dev-a", 1.0, 1.0, "server")] * 2,
            )
        assert len(await store.list_versions()) == 1
        # callers that know nothing of privacy are unaffected
        await store.commit_version(params=_params(8), kind="aggregate", parent=0)
        assert await store.privacy_ledger() == []


async def test_record_privacy_checks_version_and_duplicates(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "orch.db") as store:
        await _initial(store)
        with pytest.raises(NotFoundError):
            await store.record_privacy(7, [PrivacyCharge("dev-a", 1.0, 1.0, "local")])
        await store.record_privacy(0, [PrivacyCharge("dev-a", 1.0, 1.0, "local")],
                                   server_state={"privacy.note": b"x"})
        with pytest.raises(StoreIntegrityError):
            await store.record_privacy(0, [PrivacyCharge("dev-a", 1.0, 1.0, "local")])
        assert len(await store.privacy_ledger()) == 1
        assert await store.get_server_state("privacy.note") == b"x"


@pytest.mark.parametrize("fields", [
    dict(mode="trusted"), dict(noise_multiplier=-1.0), dict(clip_norm=0.0),
    dict(contributions=0),
])
def test_charge_validation(fields: dict[str, object]) -> None:
    base: dict[str, object] = dict(device_id="d", noise_multiplier=1.0, clip_norm=1.0,
                                   mode="local")
    with pytest.raises(ValueError):
        PrivacyCharge(**(base | fields))  # type: ignore[arg-type]
