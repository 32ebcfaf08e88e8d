"""Typed rows the store reads and writes (frozen dataclasses) and their allowed values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from schemas.tensors import Params

__all__ = [
    "DEVICE_STATUSES",
    "INGEST_STATUSES",
    "ROLES",
    "UPDATE_STATUSES",
    "VERSION_KINDS",
    "AuditEvent",
    "AuditRecord",
    "BufferedEntry",
    "Device",
    "DeviceStatus",
    "IncomingUpdate",
    "IngestStatus",
    "LedgerEntry",
    "ModelVersion",
    "Role",
    "UpdateStatus",
    "VersionInfo",
    "VersionKind",
]

Role = Literal["device", "operator"]
DeviceStatus = Literal["pending", "awaiting_approval", "active", "revoked", "isolated"]
"""``pending``: bundle issued, not enrolled yet; ``awaiting_approval``: enrolled, key held for
an operator; ``active``; ``revoked``; ``isolated``: cut off automatically as a repeat offender."""
UpdateStatus = Literal["buffered", "applied", "rejected", "quarantined"]
IngestStatus = Literal["buffered", "rejected", "quarantined"]
VersionKind = Literal["initial", "aggregate", "rollback"]

ROLES: tuple[Role, ...] = get_args(Role)
DEVICE_STATUSES: tuple[DeviceStatus, ...] = get_args(DeviceStatus)
UPDATE_STATUSES: tuple[UpdateStatus, ...] = get_args(UpdateStatus)
INGEST_STATUSES: tuple[IngestStatus, ...] = get_args(IngestStatus)
VERSION_KINDS: tuple[VersionKind, ...] = get_args(VersionKind)


@dataclass(frozen=True)
class Device:
    """A registry row. ``enroll_secret`` is the one-time secret itself, not a hash: the
    orchestrator must recompute the enrollment HMAC with it (the database file is 0600)."""

    device_id: str
    role: Role
    status: DeviceStatus
    enroll_secret: bytes | None = field(repr=False)
    public_key: bytes | None
    created_ms: int
    enrolled_ms: int | None
    last_seen_ms: int | None
    last_status: bytes | None = field(repr=False)
    """The latest heartbeat body as the caller serialised it."""
    device_class: str | None
    quarantine_count: int
    accepted_count: int
    rejected_count: int


@dataclass(frozen=True)
class IncomingUpdate:
    """One received update for :meth:`Store.ingest`. Build it with :meth:`accepted`,
    :meth:`rejected` or :meth:`quarantined`.

    Accepted (``buffered``) and quarantined updates need a trustworthy ``sender`` and ``seq``;
    a rejected one records whatever was claimed, possibly nothing.
    """

    status: IngestStatus
    sender: str | None
    seq: int | None
    base_version: int | None = None
    num_samples: int | None = None
    delta: Params | bytes | None = field(default=None, repr=False, compare=False)
    """Buffered updates only: the tensors, or their blob already encoded by
    ``aggregation.encode_params`` (e.g. in a decode worker process)."""
    reason: str | None = None
    norm: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Provenance (local steps, train loss, duration, device class, codec...), JSON-able."""
    received_ms: int | None = None
    """Defaults to the store's clock at ingest."""

    def __post_init__(self) -> None:
        if self.status not in INGEST_STATUSES:
            raise ValueError(f"ingest status must be one of {INGEST_STATUSES}, not {self.status!r}")
        if self.status != "rejected" and (self.sender is None or self.seq is None):
            raise ValueError(f"a {self.status} update needs sender and seq")
        if self.status == "buffered":
            if self.delta is None or self.base_version is None or self.num_samples is None:
                raise ValueError("a buffered update needs delta, base_version and num_samples")
        elif self.reason is None:
            raise ValueError(f"a {self.status} update needs a reason")

    @classmethod
    def accepted(
        cls,
        sender: str,
        seq: int,
        base_version: int,
        num_samples: int,
        delta: Params | bytes,
        *,
        norm: float | None = None,
        meta: Mapping[str, Any] | None = None,
        received_ms: int | None = None,
    ) -> IncomingUpdate:
        return cls("buffered", sender, seq, base_version, num_samples, delta, None, norm,
                   meta or {}, received_ms)

    @classmethod
    def rejected(
        cls,
        reason: str,
        *,
        sender: str | None = None,
        seq: int | None = None,
        base_version: int | None = None,
        num_samples: int | None = None,
        norm: float | None = None,
        meta: Mapping[str, Any] | None = None,
        received_ms: int | None = None,
    ) -> IncomingUpdate:
        return cls("rejected", sender, seq, base_version, num_samples, None, reason, norm,
                   meta or {}, received_ms)

    @classmethod
    def quarantined(
        cls,
        sender: str,
        seq: int,
        reason: str,
        *,
        base_version: int | None = None,
        num_samples: int | None = None,
        norm: float | None = None,
        meta: Mapping[str, Any] | None = None,
        received_ms: int | None = None,
    ) -> IncomingUpdate:
        """Authentic and fresh (it takes its (sender, seq)), but held out of the model."""
        return cls("quarantined", sender, seq, base_version, num_samples, None, reason, norm,
                   meta or {}, received_ms)


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    sender: str | None
    seq: int | None
    base_version: int | None
    num_samples: int | None
    weight: float | None
    status: UpdateStatus
    reason: str | None
    received_ms: int
    applied_version: int | None
    norm: float | None
    meta: dict[str, Any]


@dataclass(frozen=True)
class BufferedEntry:
    """An update waiting for aggregation, with its decoded delta (satisfies
    :class:`orchestrator.aggregation.UpdateLike`). Equality ignores the delta."""

    update_id: int
    sender: str
    seq: int
    base_version: int
    num_samples: int
    received_ms: int
    norm: float | None
    meta: dict[str, Any]
    delta: Params = field(repr=False, compare=False)


@dataclass(frozen=True)
class VersionInfo:
    version: int
    parent: int | None
    created_ms: int
    kind: VersionKind
    arch_hash: str
    params_sha256: str
    """SHA-256 (hex) of the stored params blob."""
    lineage: dict[str, Any]
    """Caller's lineage plus ``updates``: the ids of the updates applied to make it."""
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ModelVersion:
    """A version and its parameters. Equality compares ``info`` (which holds the SHA-256)."""

    info: VersionInfo
    params: Params = field(repr=False, compare=False)


@dataclass(frozen=True)
class AuditEvent:
    """An audit entry to append (``ts_ms`` defaults to the store's clock)."""

    event: str
    """e.g. ``enrolled``, ``approved``, ``revoked``, ``isolated``, ``rejected``,
    ``quarantined``, ``operator_command``, ``rollback``."""
    actor: str
    device: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    ts_ms: int | None = None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    ts_ms: int
    event: str
    actor: str
    device: str | None
    reason: str | None
    detail: dict[str, Any]
