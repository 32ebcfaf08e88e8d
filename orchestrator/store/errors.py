"""The store's exception tree: every failure of the database surfaces as a :class:`StoreError`."""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.errors import OrchestratorError

__all__ = [
    "DeviceExistsError",
    "DuplicateUpdateError",
    "InvalidStateError",
    "NotFoundError",
    "SchemaVersionError",
    "StoreClosedError",
    "StoreCorruptionError",
    "StoreError",
    "StoreIntegrityError",
]


class StoreError(OrchestratorError):
    """Base of every store failure (I/O, SQLite, constraint, corrupt content)."""


class StoreClosedError(StoreError):
    """The store was used outside its ``async with Store.open(...)`` block."""


class SchemaVersionError(StoreError):
    """The database was written by a newer fedmq (its schema is ahead of this code)."""

    def __init__(self, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"database schema version {found} is newer than this fedmq supports ({supported}); "
            "upgrade fedmq, or restore a backup made by this version"
        )


class StoreIntegrityError(StoreError):
    """A write broke a constraint (the transaction was rolled back)."""


class DuplicateUpdateError(StoreIntegrityError):
    """An accepted update with this (sender, seq) is already in the ledger."""

    def __init__(self, sender: str | None, seq: int | None) -> None:
        super().__init__(f"update sender={sender!r} seq={seq} was already accepted",
                         device=sender, seq=seq)
        self.sender = sender


class DeviceExistsError(StoreIntegrityError):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} already exists", device=device_id)
        self.device_id = device_id


class NotFoundError(StoreError):
    """No row of ``kind`` (``device``, ``version``, ``architecture``) has this key."""

    def __init__(self, kind: str, key: object) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"no {kind} {key!r}")


class InvalidStateError(StoreError):
    """Rows were not in the state an operation requires (e.g. applying non-buffered updates)."""

    def __init__(self, message: str, ids: Iterable[int] = ()) -> None:
        self.ids = tuple(ids)
        super().__init__(f"{message}: {list(self.ids)}" if self.ids else message)


class StoreCorruptionError(StoreError):
    """Stored content does not decode or does not match its recorded hash."""
