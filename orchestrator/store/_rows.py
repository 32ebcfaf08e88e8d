"""Row <-> record conversion and JSON helpers (internal)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from orchestrator.aggregation.codec import ParamsCodecError, decode_params
from schemas.tensors import Params

from .errors import StoreCorruptionError
from .records import (
    AuditRecord,
    Device,
    DeviceStatus,
    LedgerEntry,
    Role,
    UpdateStatus,
    VersionInfo,
    VersionKind,
)

DEVICE_COLUMNS = (
    "device_id, role, status, enroll_secret, public_key, created_ms, enrolled_ms, last_seen_ms, "
    "last_status, device_class, quarantine_count, accepted_count, rejected_count"
)
LEDGER_COLUMNS = (
    "id, sender, seq, base_version, num_samples, weight, status, reason, received_ms, "
    "applied_version, norm, meta"
)
VERSION_COLUMNS = (
    "version, parent, created_ms, kind, arch_hash, params_sha256, lineage, metrics"
)
AUDIT_COLUMNS = "id, ts_ms, event, actor, device, reason, detail"


def _json_default(value: object) -> object:
    # numpy scalars and small arrays sneak into provenance (e.g. a float32 train loss)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(obj: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON; raises ``ValueError`` for what cannot be stored."""
    try:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot store as JSON: {exc}") from None


def loads(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreCorruptionError(f"{what}: unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise StoreCorruptionError(f"{what}: JSON is not an object")
    return value


def device(row: Sequence[Any]) -> Device:
    return Device(
        device_id=row[0],
        role=cast(Role, row[1]),
        status=cast(DeviceStatus, row[2]),
        enroll_secret=row[3],
        public_key=row[4],
        created_ms=row[5],
        enrolled_ms=row[6],
        last_seen_ms=row[7],
        last_status=row[8],
        device_class=row[9],
        quarantine_count=row[10],
        accepted_count=row[11],
        rejected_count=row[12],
    )


def ledger(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(
        id=row[0],
        sender=row[1],
        seq=row[2],
        base_version=row[3],
        num_samples=row[4],
        weight=row[5],
        status=cast(UpdateStatus, row[6]),
        reason=row[7],
        received_ms=row[8],
        applied_version=row[9],
        norm=row[10],
        meta=loads(row[11], f"update {row[0]} meta"),
    )


def version(row: Sequence[Any]) -> VersionInfo:
    return VersionInfo(
        version=row[0],
        parent=row[1],
        created_ms=row[2],
        kind=cast(VersionKind, row[3]),
        arch_hash=row[4],
        params_sha256=row[5],
        lineage=loads(row[6], f"version {row[0]} lineage"),
        metrics=loads(row[7], f"version {row[0]} metrics"),
    )


def audit(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(
        id=row[0],
        ts_ms=row[1],
        event=row[2],
        actor=row[3],
        device=row[4],
        reason=row[5],
        detail=loads(row[6], f"audit {row[0]} detail"),
    )


def params_from_blob(blob: bytes, digest: str | None, what: str) -> Params:
    """Decode a stored params blob, checking it against its SHA-256 first when given.
    CPU-bound: call it through ``asyncio.to_thread``."""
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
        raise StoreCorruptionError(f"{what}: params do not match their SHA-256")
    try:
        return decode_params(blob)
    except ParamsCodecError as exc:
        raise StoreCorruptionError(f"{what}: {exc}") from exc
