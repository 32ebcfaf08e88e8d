"""The device registry and replay windows (internal: part of :class:`~.store.Store`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from . import _rows
from ._base import StoreBase
from ._sql import UPSERT_WINDOW, audit_row, fetchall, fetchone, in_clause, one_of
from .errors import DeviceExistsError, NotFoundError
from .records import DEVICE_STATUSES, ROLES, AuditEvent, Device, DeviceStatus, Role


class DeviceMethods(StoreBase):
    """Devices (registry rows with enrollment secrets and keys) and replay windows."""

    async def add_device(
        self,
        device_id: str,
        *,
        secret: bytes,
        role: Role = "device",
        status: DeviceStatus = "pending",
        device_class: str | None = None,
        audit: AuditEvent | None = None,
    ) -> Device:
        """Register a device (or operator) with its one-time enrollment secret."""
        one_of("role", role, ROLES)
        one_of("status", status, DEVICE_STATUSES)
        now = self._clock()
        async with self._tx() as conn:
            try:
                await conn.execute(
                    "INSERT INTO devices (device_id, role, status, enroll_secret, created_ms, "
                    "device_class) VALUES (?, ?, ?, ?, ?, ?)",
                    (device_id, role, status, bytes(secret), now, device_class),
                )
            except sqlite3.IntegrityError as exc:
                if "devices.device_id" in str(exc):
                    raise DeviceExistsError(device_id) from exc
                raise
            if audit is not None:
                await self._append_audits(conn, [audit_row(audit, now)], now)
        return Device(device_id, role, status, bytes(secret), None, now, None, None, None,
                      device_class, 0, 0, 0)

    async def get_device(self, device_id: str) -> Device | None:
        async with self._read() as conn:
            row = await fetchone(
                conn, f"SELECT {_rows.DEVICE_COLUMNS} FROM devices WHERE device_id = ?",
                (device_id,),
            )
        return None if row is None else _rows.device(row)

    async def list_devices(
        self,
        *,
        status: DeviceStatus | Collection[DeviceStatus] | None = None,
        role: Role | None = None,
        device_class: str | None = None,
    ) -> list[Device]:
        """Devices matching every given filter, by id."""
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            clause, vals = in_clause("status", status)
            where.append(clause)
            args += vals
        if role is not None:
            where.append("role = ?")
            args.append(role)
        if device_class is not None:
            where.append("device_class = ?")
            args.append(device_class)
        sql = f"SELECT {_rows.DEVICE_COLUMNS} FROM devices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self._read() as conn:
            rows = await fetchall(conn, sql + " ORDER BY device_id", args)
        return [_rows.device(r) for r in rows]

    async def _update_device(
        self, device_id: str, sql: str, args: Sequence[Any], audit: AuditEvent | None
    ) -> None:
        now = self._clock()
        async with self._tx() as conn:
            cur = await conn.execute(sql, (*args, device_id))
            if cur.rowcount == 0:
                raise NotFoundError("device", device_id)
            if audit is not None:
                await self._append_audits(conn, [audit_row(audit, now)], now)

    async def set_key(
        self,
        device_id: str,
        public_key: bytes,
        *,
        status: DeviceStatus = "active",
        enrolled_ms: int | None = None,
        clear_secret: bool = False,
        audit: AuditEvent | None = None,
    ) -> None:
        """Record the device's public key and new status (enrollment, approval, rotation)."""
        one_of("status", status, DEVICE_STATUSES)
        when = enrolled_ms if enrolled_ms is not None else self._clock()
        secret_sql = ", enroll_secret = NULL" if clear_secret else ""
        await self._update_device(
            device_id,
            f"UPDATE devices SET public_key = ?, status = ?, enrolled_ms = ?{secret_sql} "
            "WHERE device_id = ?",
            (bytes(public_key), status, when),
            audit,
        )

    async def replace_key(
        self, device_id: str, old_key: bytes, new_key: bytes, *, audit: AuditEvent
    ) -> bool:
        """Key rotation: swap an active device's ``old_key`` for ``new_key`` with ``audit``,
        atomically; False (nothing changed) if the device is not active under ``old_key``."""
        now = self._clock()
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE devices SET public_key = ? WHERE device_id = ? AND public_key = ? "
                "AND status = 'active'", (bytes(new_key), device_id, bytes(old_key)))
            if cur.rowcount == 0:
                return False
            await self._append_audits(conn, [audit_row(audit, now)], now)
        return True

    async def set_status(
        self, device_id: str, status: DeviceStatus, *, audit: AuditEvent | None = None
    ) -> None:
        one_of("status", status, DEVICE_STATUSES)
        await self._update_device(
            device_id, "UPDATE devices SET status = ? WHERE device_id = ?", (status,), audit
        )

    async def record_heartbeat(
        self,
        device_id: str,
        *,
        last_status: bytes | None = None,
        seen_ms: int | None = None,
        device_class: str | None = None,
        replay_state: bytes | None = None,
    ) -> None:
        """Note that the device was heard from; optionally save its replay window too (the
        heartbeat's ``seq`` advanced it), in the same transaction."""
        now = self._clock()
        seen = seen_ms if seen_ms is not None else now
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE devices SET last_seen_ms = ?, last_status = COALESCE(?, last_status), "
                "device_class = COALESCE(?, device_class) WHERE device_id = ?",
                (seen, last_status, device_class, device_id),
            )
            if cur.rowcount == 0:
                raise NotFoundError("device", device_id)
            if replay_state is not None:
                await conn.execute(UPSERT_WINDOW, (device_id, bytes(replay_state), now))

    # -- replay windows ----------------------------------------------------------------------

    async def load_replay_windows(self) -> dict[str, bytes]:
        async with self._read() as conn:
            rows = await fetchall(conn, "SELECT sender, state FROM replay_windows")
        return {sender: bytes(state) for sender, state in rows}

    async def save_replay_windows(self, states: Mapping[str, bytes]) -> None:
        """Upsert replay-window states (senders must be registered devices)."""
        if not states:
            return
        now = self._clock()
        async with self._tx() as conn:
            await conn.executemany(
                UPSERT_WINDOW, [(s, bytes(b), now) for s, b in states.items()]
            )
