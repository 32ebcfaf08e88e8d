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
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import msgpack
import numpy as np
from nacl.signing import SigningKey

from schemas import EnrollStatus, Params, ReplayWindow

from .errors import StateError

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_F32 = np.dtype("<f4")

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


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What the orchestrator answered to our ``Enroll``."""

    status: EnrollStatus
    heartbeat_s: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StoredModel:
    """The global model the device holds (float32 parameters in graph order)."""

    version: int
    params: Params
    graphs: dict[str, bytes]
    arch_id: str = ""
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    envelope: bytes
    created_ms: int
    attempts: int
    last_sent_ms: int | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An entry's bookkeeping without its (possibly large) envelope."""

    seq: int
    size: int
    created_ms: int
    attempts: int
    last_sent_ms: int | None


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
        self._outbox_len = 0
        self._outbox_bytes = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> LocalState:
        if self._db is not None:
            raise StateError("state is already open")
        await asyncio.to_thread(_create_private_file, self._path)
        try:
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self._path}: cannot open state database ({exc})") from None
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
            raise StateError(f"{self._path}: not a usable state database ({exc})") from None
        async with self._tx() as tx:
            version = await _meta_get(tx, "schema_version")
            if version is None:
                await _meta_set(tx, "schema_version", SCHEMA_VERSION)
                await _meta_set(tx, "device_id", self._device_id)
                await _meta_set(tx, "fed", self._fed)
                await _meta_set(tx, "seq", 0)
            elif version != SCHEMA_VERSION:
                raise StateError(f"{self._path}: state schema version {version!r} is not "
                                 f"{SCHEMA_VERSION}")
            owner = (await _meta_get(tx, "device_id"), await _meta_get(tx, "fed"))
            if owner != (self._device_id, self._fed):
                raise StateError(f"{self._path}: state belongs to device {owner[0]!r} of "
                                 f"federation {owner[1]!r}, not {self._device_id!r}/{self._fed!r}")
            seed = await _meta_get(tx, "signing_key")
            if seed is None:
                self._key = SigningKey.generate()
                await _meta_set(tx, "signing_key", bytes(self._key))
            elif isinstance(seed, bytes) and len(seed) == 32:
                self._key = SigningKey(seed)
            else:
                raise StateError(f"{self._path}: stored signing key is malformed")
            seq = await _meta_get(tx, "seq")
            if not isinstance(seq, int) or seq < 0:
                raise StateError(f"{self._path}: stored seq counter is malformed")
            self._last_seq = seq
            async with tx.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM outbox"
            ) as cur:
                row = await cur.fetchone()
            assert row is not None
            self._outbox_len, self._outbox_bytes = int(row[0]), int(row[1])

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StateError("state is not open")
        return self._db

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
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

    async def reserve_seq(self) -> int:
        """The next seq, durably reserved before it is returned (so never handed out twice)."""
        async with self._tx() as tx:
            seq = self._last_seq + 1
            await _meta_set(tx, "seq", seq)
        self._last_seq = seq
        return seq

    # -- small durable values ----------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """A small msgpack-able value kept under ``key`` (flags, times, settings)."""
        async with self._lock:
            value = await _meta_get(self._conn, f"v:{key}")
        return default if value is None else value

    async def put(self, key: str, value: Any) -> None:
        async with self._tx() as tx:
            if value is None:
                await tx.execute("DELETE FROM meta WHERE key = ?", (f"v:{key}",))
            else:
                await _meta_set(tx, f"v:{key}", value)

    async def enrollment(self) -> Enrollment | None:
        raw = await self.get("enrollment")
        if raw is None:
            return None
        try:
            return Enrollment(EnrollStatus(raw["status"]), float(raw["heartbeat_s"]),
                              str(raw.get("reason", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{self._path}: stored enrollment is malformed ({exc})") from None

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
            raise StateError(f"{self._path}: stored replay window is malformed ({exc})") from None

    async def save_replay_window(self, window: ReplayWindow) -> None:
        await self.put("orch_window", window.to_bytes())

    async def residual(self) -> Params:
        """The error-feedback residual of the last encoded update."""
        async with self._lock:
            raw = await _meta_get(self._conn, "residual")
        return _params_from_blob(raw) if isinstance(raw, bytes) else {}

    # -- model -------------------------------------------------------------------------------

    async def load_model(self) -> StoredModel | None:
        async with self._lock:
            async with self._conn.execute(
                "SELECT version, arch_id, params, graphs, stopped FROM model WHERE id = 1"
            ) as cur:
                row = await cur.fetchone()
        if row is None:
            return None
        try:
            graphs = msgpack.unpackb(row[3], raw=False)
            if not isinstance(graphs, dict):
                raise ValueError("graphs are not a map")
            return StoredModel(int(row[0]), _params_from_blob(row[2]), graphs, str(row[1]),
                               bool(row[4]))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise StateError(f"{self._path}: stored model is malformed ({exc})") from None

    async def save_model(self, model: StoredModel) -> None:
        params = _params_to_blob(model.params)
        graphs = msgpack.packb(model.graphs, use_bin_type=True)
        async with self._tx() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO model (id, version, arch_id, params, graphs, stopped) "
                "VALUES (1, ?, ?, ?, ?, ?)",
                (model.version, model.arch_id, params, graphs, int(model.stopped)),
            )

    # -- outbox --------------------------------------------------------------------------------

    @property
    def outbox_len(self) -> int:
        return self._outbox_len

    @property
    def outbox_bytes(self) -> int:
        return self._outbox_bytes

    async def outbox_put(
        self, seq: int, envelope: bytes, *, created_ms: int, residual: Params | None = None
    ) -> None:
        """Insert an entry and (same transaction) the residual that goes with it."""
        blob = _params_to_blob(residual) if residual is not None else None
        async with self._tx() as tx:
            await tx.execute(
                "INSERT INTO outbox (seq, envelope, created_ms) VALUES (?, ?, ?)",
                (seq, envelope, created_ms),
            )
            if blob is not None:
                await _meta_set(tx, "residual", blob)
        self._outbox_len += 1
        self._outbox_bytes += len(envelope)

    async def outbox_entries(self, limit: int | None = None) -> list[OutboxEntry]:
        """Entries oldest first (by seq)."""
        sql = "SELECT seq, envelope, created_ms, attempts, last_sent_ms FROM outbox ORDER BY seq"
        args: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (limit,)
        async with self._lock:
            async with self._conn.execute(sql, args) as cur:
                rows = await cur.fetchall()
        return [OutboxEntry(int(r[0]), bytes(r[1]), int(r[2]), int(r[3]),
                            None if r[4] is None else int(r[4])) for r in rows]

    async def outbox_rows(self) -> list[OutboxRow]:
        """Bookkeeping of every entry, oldest first."""
        async with self._lock:
            async with self._conn.execute(
                "SELECT seq, LENGTH(envelope), created_ms, attempts, last_sent_ms FROM outbox "
                "ORDER BY seq"
            ) as cur:
                rows = await cur.fetchall()
        return [OutboxRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]),
                          None if r[4] is None else int(r[4])) for r in rows]

    async def outbox_get(self, seqs: Iterable[int]) -> list[OutboxEntry]:
        """The named entries that still exist, in seq order."""
        out: list[OutboxEntry] = []
        async with self._lock:
            for seq in sorted(set(seqs)):
                async with self._conn.execute(
                    "SELECT seq, envelope, created_ms, attempts, last_sent_ms FROM outbox "
                    "WHERE seq = ?", (seq,)
                ) as cur:
                    r = await cur.fetchone()
                if r is not None:
                    out.append(OutboxEntry(int(r[0]), bytes(r[1]), int(r[2]), int(r[3]),
                                           None if r[4] is None else int(r[4])))
        return out

    async def outbox_mark_sent(self, seqs: Iterable[int], now_ms: int) -> None:
        rows = [(now_ms, s) for s in seqs]
        async with self._tx() as tx:
            await tx.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_sent_ms = ? WHERE seq = ?", rows
            )

    async def outbox_delete(self, seqs: Iterable[int]) -> int:
        """Delete the named entries; returns how many existed."""
        wanted = sorted(set(seqs))
        if not wanted:
            return 0
        removed = freed = 0
        async with self._tx() as tx:
            for seq in wanted:
                async with tx.execute(
                    "DELETE FROM outbox WHERE seq = ? RETURNING LENGTH(envelope)", (seq,)
                ) as cur:
                    row = await cur.fetchone()
                if row is not None:
                    removed += 1
                    freed += int(row[0])
        self._outbox_len -= removed
        self._outbox_bytes -= freed
        return removed


# -- helpers -----------------------------------------------------------------------------------


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
        raise StateError(f"{path}: cannot create state file ({exc.strerror})") from None


async def _meta_get(db: aiosqlite.Connection, key: str) -> Any:
    async with db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    try:
        return msgpack.unpackb(row[0], raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StateError(f"stored value {key!r} is malformed ({exc})") from None


async def _meta_set(db: aiosqlite.Connection, key: str, value: Any) -> None:
    blob = msgpack.packb(value, use_bin_type=True)
    await db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, blob))


def _params_to_blob(params: Params) -> bytes:
    items = [
        [name, list(value.shape), np.ascontiguousarray(value, dtype=_F32).tobytes()]
        for name, value in params.items()
    ]
    out: bytes = msgpack.packb(items, use_bin_type=True)
    return out


def _params_from_blob(blob: bytes) -> Params:
    try:
        items = msgpack.unpackb(blob, raw=False)
        out: Params = {}
        for name, shape, data in items:
            out[str(name)] = np.frombuffer(data, dtype=_F32).astype(np.float32).reshape(shape)
        return out
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StateError(f"stored parameters are malformed ({exc})") from None
