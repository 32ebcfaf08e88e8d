"""The agent's one SQLite file: key, seq counter, enrollment, outbox, model, residual, window.

``async with LocalState(path, device_id=..., fed=...) as state:`` opens (or creates) the file
with mode 0600 — it holds the device's Ed25519 key — in WAL mode with ``synchronous=FULL``, so
a committed write survives a killed process and a power cut. Every transaction runs under one
lock: the agent's tasks share a single connection, and interleaved statements from two tasks
must never end up in one transaction.

The seq counter is *reserved* (incremented and committed) before a seq is used, so a kill at
any moment can skip a seq but never hand out one twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import msgpack
from nacl.signing import SigningKey

from schemas import EnrollStatus, Params, ReplayWindow, ValidationError
from schemas.annex import ModelAnnex, annex_from_record, annex_to_record

from .errors import RevokedError, StateError
from .records import (
    Enrollment,
    OutboxEntry,
    OutboxRow,
    StoredModel,
    params_from_blob,
    params_to_blob,
)

__all__ = ["SCHEMA_VERSION", "Enrollment", "LocalState", "OutboxEntry", "OutboxRow",
           "StoredModel", "write_residual"]

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_RESIDUAL = "residual"
_ANNEX = "model_annex"
_REVOKED = "revoked"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sent_ms INTEGER
);
CREATE TABLE IF NOT EXISTS model (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    arch_id TEXT NOT NULL,
    params BLOB NOT NULL,
    graphs BLOB NOT NULL,
    stopped INTEGER NOT NULL
);
"""


class LocalState:
    """Owner of the agent's database connection (an async context manager, not re-entrant)."""

    def __init__(self, path: str | os.PathLike[str], *, device_id: str, fed: str) -> None:
        self._path = Path(path)
        self._device_id = device_id
        self._fed = fed
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._key: SigningKey | None = None
        self._last_seq = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> LocalState:
        if self._db is not None:
            raise StateError("state is already open")
        await asyncio.to_thread(_create_private_file, self._path)
        try:
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self._path}: cannot open state database ({exc})",
                             reason="cannot_open") from None
        self._db = db
        try:
            await self._init()
        except BaseException:
            self._db = None
            await db.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                await db.close()

    async def _init(self) -> None:
        db = self._conn
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self._path}: not a usable state database ({exc})",
                             reason="malformed") from None
        async with self.transaction() as tx:
            await self._check_owner(tx)
            revoked = await _meta_get(tx, _REVOKED)
            if revoked is not None:  # the key is gone: never make a new one
                raise RevokedError(f"{self._path}: {revoked}", device=self._device_id,
                                   reason="revoked")
            seed = await _meta_get(tx, "signing_key")
            if seed is None:
                self._key = SigningKey.generate()
                await _meta_set(tx, "signing_key", bytes(self._key))
            elif isinstance(seed, bytes) and len(seed) == 32:
                self._key = SigningKey(seed)
            else:
                raise StateError(f"{self._path}: stored signing key is malformed",
                                 reason="malformed")
            seq = await _meta_get(tx, "seq")
            if not isinstance(seq, int) or seq < 0:
                raise StateError(f"{self._path}: stored seq counter is malformed",
                                 reason="malformed")
            self._last_seq = seq

    async def _check_owner(self, tx: aiosqlite.Connection) -> None:
        """A new file is stamped with its schema version and owner; an old one must match."""
        version = await _meta_get(tx, "schema_version")
        if version is None:
            await _meta_set(tx, "schema_version", SCHEMA_VERSION)
            await _meta_set(tx, "device_id", self._device_id)
            await _meta_set(tx, "fed", self._fed)
            await _meta_set(tx, "seq", 0)
        elif version != SCHEMA_VERSION:
            raise StateError(f"{self._path}: state schema version {version!r} is not "
                             f"{SCHEMA_VERSION}", reason="schema_version")
        owner = (await _meta_get(tx, "device_id"), await _meta_get(tx, "fed"))
        if owner != (self._device_id, self._fed):
            raise StateError(f"{self._path}: state belongs to device {owner[0]!r} of "
                             f"federation {owner[1]!r}, not {self._device_id!r}/{self._fed!r}",
                             device=str(owner[0]), reason="foreign_state")

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StateError("state is not open")
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, serialised with every other user of the connection."""
        async with self._lock:
            db = self._conn
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
            except BaseException:
                # aiosqlite runs statements in order on its own thread, so a BEGIN whose await
                # was cancelled still runs; rollback() there is a no-op when nothing is open.
                # Shielded, so a second cancellation cannot leave the transaction open.
                await asyncio.shield(db.rollback())
                raise
            else:
                await db.execute("COMMIT")

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for reads, serialised with every transaction."""
        async with self._lock:
            yield self._conn

    # -- identity and seqs -----------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def signing_key(self) -> SigningKey:
        if self._key is None:
            raise StateError("state is not open")
        return self._key

    @property
    def last_seq(self) -> int:
        """The highest seq ever reserved (0 before the first)."""
        return self._last_seq

    @asynccontextmanager
    async def rekeying(self, key: SigningKey) -> AsyncIterator[aiosqlite.Connection]:
        """A transaction that makes ``key`` the signing key, with whatever the caller writes in
        it (the outbox re-signed); the key is adopted once it commits, before any other task
        runs (no await in between), so nothing is signed with the old key after the commit."""
        async with self.transaction() as tx:
            await _meta_set(tx, "signing_key", bytes(key))
            yield tx
        self._key = key

    async def reserve_seq(self) -> int:
        """The next seq, durably reserved before it is returned (so never handed out twice)."""
        async with self.transaction() as tx:
            seq = self._last_seq + 1
            await _meta_set(tx, "seq", seq)
        self._last_seq = seq
        return seq

    # -- small durable values ----------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """A small msgpack-able value kept under ``key`` (flags, times, settings)."""
        async with self.reading() as db:
            value = await _meta_get(db, f"v:{key}")
        return default if value is None else value

    async def put(self, key: str, value: Any) -> None:
        """Keep ``value`` under ``key`` (None deletes it)."""
        await self.put_many({key: value})

    async def put_many(self, values: dict[str, Any]) -> None:
        """Several ``put``s in one transaction: all of them are kept, or none."""
        async with self.transaction() as tx:
            for key, value in values.items():
                await write_value(tx, key, value)

    async def enrollment(self) -> Enrollment | None:
        raw = await self.get("enrollment")
        if raw is None:
            return None
        try:
            return Enrollment(EnrollStatus(raw["status"]), float(raw["heartbeat_s"]),
                              str(raw.get("reason", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{self._path}: stored enrollment is malformed ({exc})",
                             reason="malformed") from None

    async def set_enrollment(self, enrollment: Enrollment) -> None:
        await self.put("enrollment", {"status": enrollment.status.value,
                                      "heartbeat_s": enrollment.heartbeat_s,
                                      "reason": enrollment.reason})

    async def replay_window(self) -> ReplayWindow:
        """The orchestrator's replay window (its tasks, acks and controls)."""
        raw = await self.get("orch_window")
        if raw is None:
            return ReplayWindow()
        try:
            return ReplayWindow.from_bytes(raw)
        except Exception as exc:  # DecodeError or a non-bytes value
            raise StateError(f"{self._path}: stored replay window is malformed ({exc})",
                             reason="malformed") from None

    async def save_replay_window(self, window: ReplayWindow) -> None:
        await self.put("orch_window", window.to_bytes())

    async def residual(self) -> Params:
        """The error-feedback residual of the last encoded update."""
        async with self.reading() as db:
            raw = await _meta_get(db, _RESIDUAL)
        return params_from_blob(raw) if isinstance(raw, bytes) else {}

    # -- revocation ----------------------------------------------------------------------------

    async def destroy_secrets(self, line: str) -> None:
        """The device was revoked: erase its signing key, outbox and residual for good and
        mark the file, so that opening it again raises :class:`RevokedError` with ``line``.

        ``secure_delete`` overwrites the freed pages, the WAL is checkpointed and truncated,
        and ``VACUUM`` rewrites the file, so the key's bytes are not left on disk.
        """
        async with self._lock:
            await _run(self._conn, "PRAGMA secure_delete=ON")
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM meta WHERE key IN (?, ?, ?)",
                             ("signing_key", _RESIDUAL, "v:pending_key"))
            await tx.execute("DELETE FROM outbox")
            await _meta_set(tx, _REVOKED, line)
        async with self._lock:
            for sql in ("PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM",
                        "PRAGMA wal_checkpoint(TRUNCATE)"):
                await _run(self._conn, sql)
        self._key = None

    # -- model -------------------------------------------------------------------------------

    async def load_model(self) -> StoredModel | None:
        async with self.reading() as db:
            async with db.execute(
                "SELECT version, arch_id, params, graphs, stopped FROM model WHERE id = 1"
            ) as cur:
                row = await cur.fetchone()
            annex_blob = await _meta_get(db, _ANNEX)
        if row is None:
            return None
        try:
            graphs = msgpack.unpackb(row[3], raw=False)
            if not isinstance(graphs, dict):
                raise ValueError("graphs are not a map")
            annex = ModelAnnex() if annex_blob is None else annex_from_record(annex_blob)
            return StoredModel(int(row[0]), params_from_blob(row[2]), graphs, str(row[1]),
                               bool(row[4]), annex)
        except (ValueError, TypeError, msgpack.UnpackException, ValidationError) as exc:
            raise StateError(f"{self._path}: stored model is malformed ({exc})",
                             reason="malformed") from None

    async def save_model(self, model: StoredModel) -> None:
        params = params_to_blob(model.params)
        graphs = msgpack.packb(model.graphs, use_bin_type=True)
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO model (id, version, arch_id, params, graphs, stopped) "
                "VALUES (1, ?, ?, ?, ?, ?)",
                (model.version, model.arch_id, params, graphs, int(model.stopped)),
            )
            await _meta_set(tx, _ANNEX, annex_to_record(model.annex))


# -- helpers -----------------------------------------------------------------------------------

async def write_value(tx: aiosqlite.Connection, key: str, value: Any) -> None:
    """``LocalState.put`` inside the caller's transaction (None deletes the value)."""
    if value is None:
        await tx.execute("DELETE FROM meta WHERE key = ?", (f"v:{key}",))
    else:
        await _meta_set(tx, f"v:{key}", value)


async def write_residual(tx: aiosqlite.Connection, residual: Params) -> None:
    """Keep the error-feedback residual, inside a transaction the caller holds."""
    await _meta_set(tx, _RESIDUAL, params_to_blob(residual))



def _create_private_file(path: Path) -> None:
    """Create the database file 0600 (SQLite gives its -wal/-shm files the same mode)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                _log.warning("%s was mode %o; restricting it to 0600 (it holds a key)", path, mode)
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateError(f"{path}: cannot create state file ({exc.strerror})",
                         reason="cannot_open") from None


async def _run(db: aiosqlite.Connection, sql: str) -> None:
    """One statement, its rows read and its cursor closed (VACUUM needs none open)."""
    async with db.execute(sql) as cur:
        await cur.fetchall()


async def _meta_get(db: aiosqlite.Connection, key: str) -> Any:
    async with db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    try:
        return msgpack.unpackb(row[0], raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StateError(f"stored value {key!r} is malformed ({exc})", reason="malformed") from None


async def _meta_set(db: aiosqlite.Connection, key: str, value: Any) -> None:
    blob = msgpack.packb(value, use_bin_type=True)
    await db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, blob))
