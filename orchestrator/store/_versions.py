"""Model versions, architectures and server state (internal: part of :class:`~.store.Store`)."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite

from orchestrator.aggregation.codec import encode_params
from schemas.tensors import Params

from . import _rows
from ._base import StoreBase
from ._privacy import PrivacyCharge, check_charges, insert_charges
from ._sql import UPSERT_STATE, fetchall, fetchone, not_buffered, one_of, scalar, take_from_buffer
from .errors import InvalidStateError, NotFoundError, StoreCorruptionError
from .records import VERSION_KINDS, ModelVersion, VersionInfo, VersionKind


class VersionMethods(StoreBase):
    """Architectures, model versions with lineage and metrics, and server state."""

    async def put_architecture(self, spec: bytes) -> str:
        """Store a model architecture (graphs, spec) once; returns its SHA-256 hex key."""
        key = await asyncio.to_thread(lambda: hashlib.sha256(spec).hexdigest())
        now = self._clock()
        async with self._tx() as conn:
            await conn.execute(
                "INSERT OR IGNORE INTO architectures (arch_hash, spec, created_ms) "
                "VALUES (?, ?, ?)", (key, bytes(spec), now),
            )
        return key

    async def get_architecture(self, arch_hash: str) -> bytes:
        async with self._read() as conn:
            spec = await scalar(
                conn, "SELECT spec FROM architectures WHERE arch_hash = ?", (arch_hash,)
            )
        if spec is None:
            raise NotFoundError("architecture", arch_hash)
        return bytes(spec)

    async def commit_version(
        self,
        *,
        params: Params,
        kind: VersionKind,
        parent: int | None,
        arch_hash: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        applied: Mapping[int, float] | None = None,
        dropped: Mapping[int, str] | None = None,
        server_state: Mapping[str, bytes] | None = None,
        metrics: Mapping[str, Any] | None = None,
        privacy: Sequence[PrivacyCharge] | None = None,
    ) -> VersionInfo:
        """Create the next model version and consume the buffer, all in one transaction.

        The version number is the latest + 1 (0 for the first, which must be ``initial``).
        ``applied`` maps each consumed buffered update to its final weight: they become
        ``applied`` with this version. ``dropped`` maps buffered updates to a reason: they
        become ``rejected``. Both leave the buffer. ``server_state`` entries (optimizer
        moments, stopping-rule state...) are upserted. ``privacy`` charges each contributing
        device for this version in the privacy ledger (see :meth:`record_privacy`). A crash
        sees all of it or none of it.

        ``parent``: None for ``initial``; the latest version for ``aggregate``; the version
        whose parameters are republished for ``rollback``. ``arch_hash`` defaults to the
        parent's. ``lineage`` gets an ``updates`` key listing the applied ids.
        """
        applied, dropped, lineage_obj = _checked_outcome(kind, parent, applied, dropped, lineage)
        charges = list(privacy or ())
        check_charges(charges)
        lineage_json = _rows.dumps(lineage_obj)
        metrics_json = _rows.dumps(metrics or {})
        blob = await asyncio.to_thread(encode_params, params)
        digest = hashlib.sha256(blob).hexdigest()
        now = self._clock()
        async with self._tx() as conn:
            version, arch = await _next_version(conn, kind, parent, arch_hash)
            await conn.execute(
                f"INSERT INTO versions ({_rows.VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (version, parent, now, kind, arch, digest, lineage_json, metrics_json),
            )
            await conn.execute(
                "INSERT INTO version_params (version, params) VALUES (?, ?)", (version, blob)
            )
            await _consume_buffer(conn, version, applied, dropped)
            if server_state:
                await conn.executemany(
                    UPSERT_STATE, [(k, bytes(v), now) for k, v in server_state.items()]
                )
            if charges:
                await insert_charges(conn, version, charges, now)
        return VersionInfo(version, parent, now, kind, arch, digest,
                           _rows.loads(lineage_json, "lineage"),
                           _rows.loads(metrics_json, "metrics"))

    async def latest_version(self) -> VersionInfo | None:
        async with self._read() as conn:
            row = await fetchone(
                conn, f"SELECT {_rows.VERSION_COLUMNS} FROM versions "
                "ORDER BY version DESC LIMIT 1",
            )
        return None if row is None else _rows.version(row)

    async def list_versions(self) -> list[VersionInfo]:
        async with self._read() as conn:
            rows = await fetchall(
                conn, f"SELECT {_rows.VERSION_COLUMNS} FROM versions ORDER BY version"
            )
        return [_rows.version(r) for r in rows]

    async def get_version(self, version: int) -> ModelVersion:
        """A version with its parameters (checked against the stored SHA-256)."""
        async with self._read() as conn:
            row = await fetchone(
                conn,
                f"SELECT {_rows.VERSION_COLUMNS}, (SELECT p.params FROM version_params AS p "
                "WHERE p.version = versions.version) FROM versions WHERE version = ?",
                (version,),
            )
        if row is None:
            raise NotFoundError("version", version)
        info = _rows.version(row[:-1])
        if row[-1] is None:
            raise StoreCorruptionError(f"version {version} has no params")
        params = await asyncio.to_thread(_rows.params_from_blob, row[-1], info.params_sha256,
                                         f"version {version}")
        return ModelVersion(info, params)

    async def set_version_metrics(
        self, version: int, metrics: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge ``metrics`` into the version's metrics (new keys win); returns the result."""
        async with self._tx() as conn:
            text = await scalar(conn, "SELECT metrics FROM versions WHERE version = ?",
                                 (version,))
            if text is None:
                raise NotFoundError("version", version)
            merged = _rows.loads(text, f"version {version} metrics")
            merged.update(metrics)
            await conn.execute("UPDATE versions SET metrics = ? WHERE version = ?",
                               (_rows.dumps(merged), version))
        return merged

    # -- server state ------------------------------------------------------------------------

    async def get_server_state(self, key: str) -> bytes | None:
        async with self._read() as conn:
            value = await scalar(conn, "SELECT value FROM server_state WHERE key = ?", (key,))
        return None if value is None else bytes(value)

    async def server_state(self) -> dict[str, bytes]:
        async with self._read() as conn:
            rows = await fetchall(conn, "SELECT key, value FROM server_state ORDER BY key")
        return {k: bytes(v) for k, v in rows}

    async def put_server_state(self, entries: Mapping[str, bytes]) -> None:
        if not entries:
            return
        now = self._clock()
        async with self._tx() as conn:
            await conn.executemany(UPSERT_STATE, [(k, bytes(v), now) for k, v in entries.items()])

    async def delete_server_state(self, keys: Sequence[str]) -> None:
        async with self._tx() as conn:
            await conn.executemany("DELETE FROM server_state WHERE key = ?", [(k,) for k in keys])


def _checked_outcome(
    kind: VersionKind,
    parent: int | None,
    applied: Mapping[int, float] | None,
    dropped: Mapping[int, str] | None,
    lineage: Mapping[str, Any] | None,
) -> tuple[dict[int, float], dict[int, str], dict[str, Any]]:
    """Validate a commit's arguments before any work; returns the applied and dropped maps as
    dicts and the lineage with its ``updates`` key filled in."""
    one_of("kind", kind, VERSION_KINDS)
    if (kind == "initial") != (parent is None):
        raise ValueError("an initial version has no parent; every other kind needs one")
    applied = dict(applied or {})
    dropped = dict(dropped or {})
    if applied.keys() & dropped.keys():
        raise ValueError("an update cannot be both applied and dropped")
    if not all(math.isfinite(w) and w >= 0 for w in applied.values()):
        raise ValueError("applied weights must be finite and >= 0")
    lineage_obj = dict(lineage or {})
    if "updates" in lineage_obj:
        raise ValueError("lineage key 'updates' is reserved (the store fills it in)")
    lineage_obj["updates"] = list(applied)
    return applied, dropped, lineage_obj


async def _next_version(
    conn: aiosqlite.Connection, kind: VersionKind, parent: int | None, arch_hash: str | None
) -> tuple[int, str]:
    """The new version's number and architecture, checked against the rows under the write
    lock: the first version is ``initial``, an ``aggregate`` builds on the latest, the parent
    exists, and the architecture (given, else the parent's) is stored."""
    latest = await scalar(conn, "SELECT MAX(version) FROM versions")
    version = 0 if latest is None else int(latest) + 1
    if version == 0 and kind != "initial":
        raise InvalidStateError("the first version must be kind 'initial'")
    if kind == "aggregate" and parent != latest:
        raise InvalidStateError(f"aggregate on version {parent}, but the latest is {latest}")
    arch = arch_hash
    if parent is not None:
        parent_arch = await scalar(
            conn, "SELECT arch_hash FROM versions WHERE version = ?", (parent,)
        )
        if parent_arch is None:
            raise NotFoundError("version", parent)
        arch = arch or str(parent_arch)
    if arch is None:
        raise ValueError("an initial version needs arch_hash (see put_architecture)")
    if await scalar(conn, "SELECT 1 FROM architectures WHERE arch_hash = ?", (arch,)) is None:
        raise NotFoundError("architecture", arch)
    return version, arch


async def _consume_buffer(
    conn: aiosqlite.Connection, version: int, applied: Mapping[int, float],
    dropped: Mapping[int, str],
) -> None:
    """Take the version's updates out of the buffer: ``applied`` ones with their final weight,
    ``dropped`` ones as rejected with their reason. Every id must be buffered."""
    if applied:
        cur = await conn.executemany(
            "UPDATE updates SET status = 'applied', weight = ?, applied_version = ? "
            "WHERE id = ? AND status = 'buffered'",
            [(float(w), version, uid) for uid, w in applied.items()],
        )
        if cur.rowcount != len(applied):
            raise await not_buffered(conn, applied)
        await conn.executemany(
            "DELETE FROM buffer WHERE update_id = ?", [(uid,) for uid in applied]
        )
    if dropped:
        await take_from_buffer(conn, list(dropped), "rejected", dropped)
