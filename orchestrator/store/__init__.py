"""The orchestrator's durable state: one aiosqlite database in WAL mode.

``async with Store.open(path) as store:`` owns the connection. Devices and their enrollment
secrets, replay windows, the update ledger and aggregation buffer, model versions with lineage
and metrics, server state, the audit log and the differential-privacy ledger live here; see
:mod:`.store` for the durability choice and :mod:`.migrations` for schema changes.
"""

from orchestrator.aggregation.codec import ParamsCodecError, decode_params, encode_params

from ._privacy import DP_LEDGER_MODES, PrivacyCharge, PrivacyRecord
from .audit_chain import ChainReport, verify_audit
from .errors import (
    DeviceExistsError,
    DuplicateUpdateError,
    InvalidStateError,
    NotFoundError,
    SchemaVersionError,
    StoreClosedError,
    StoreCorruptionError,
    StoreError,
    StoreIntegrityError,
)
from .migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from .records import (
    DEVICE_STATUSES,
    ROLES,
    UPDATE_STATUSES,
    VERSION_KINDS,
    AuditEvent,
    AuditRecord,
    BufferedEntry,
    Device,
    DeviceStatus,
    IncomingUpdate,
    IngestStatus,
    LedgerEntry,
    ModelVersion,
    Role,
    UpdateStatus,
    VersionInfo,
    VersionKind,
)
from .store import Clock, Store, wall_clock_ms

__all__ = [
    "DEVICE_STATUSES",
    "DP_LEDGER_MODES",
    "MIGRATIONS",
    "ROLES",
    "SCHEMA_VERSION",
    "UPDATE_STATUSES",
    "VERSION_KINDS",
    "AuditEvent",
    "AuditRecord",
    "BufferedEntry",
    "ChainReport",
    "Clock",
    "Device",
    "DeviceExistsError",
    "DeviceStatus",
    "DuplicateUpdateError",
    "IncomingUpdate",
    "IngestStatus",
    "InvalidStateError",
    "LedgerEntry",
    "Migration",
    "ModelVersion",
    "NotFoundError",
    "ParamsCodecError",
    "PrivacyCharge",
    "PrivacyRecord",
    "Role",
    "SchemaVersionError",
    "Store",
    "StoreClosedError",
    "StoreCorruptionError",
    "StoreError",
    "StoreIntegrityError",
    "UpdateStatus",
    "VersionInfo",
    "VersionKind",
    "decode_params",
    "encode_params",
    "verify_audit",
    "wall_clock_ms",
]
