"""Versioned schema migrations, applied in order inside one transaction when the store opens.

The schema version is ``PRAGMA user_version``: 0 for an empty file, N after ``MIGRATIONS[:N]``.
To change the schema, append a :class:`Migration` (never edit a released one), e.g.::

    Migration(3, "device notes", (
        "ALTER TABLE devices ADD COLUMN notes TEXT",
    ))

Statements run inside a transaction, so they cannot toggle ``PRAGMA foreign_keys``; a step that
must rebuild a table uses the create-copy-drop-rename recipe, which works with keys on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "check_migrations"]


@dataclass(frozen=True)
class Migration:
    version: int
    """The schema version once this step has run (steps are numbered 1, 2, ...)."""
    description: str
    statements: tuple[str, ...]


_V1 = (
    """CREATE TABLE devices (
        device_id TEXT PRIMARY KEY NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('device', 'operator')),
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'awaiting_approval', 'active', 'revoked', 'isolated')),
        enroll_secret BLOB,
        public_key BLOB,
        created_ms INTEGER NOT NULL,
        enrolled_ms INTEGER,
        last_seen_ms INTEGER,
        last_status BLOB,
        device_class TEXT,
        quarantine_count INTEGER NOT NULL DEFAULT 0,
        accepted_count INTEGER NOT NULL DEFAULT 0,
        rejected_count INTEGER NOT NULL DEFAULT 0
    ) STRICT""",
    "CREATE INDEX devices_status ON devices(status)",
    """CREATE TABLE replay_windows (
        sender TEXT PRIMARY KEY NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        state BLOB NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID""",
    """CREATE TABLE architectures (
        arch_hash TEXT PRIMARY KEY NOT NULL,
        spec BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    ) STRICT""",
    """CREATE TABLE versions (
        version INTEGER PRIMARY KEY CHECK (version >= 0),
        parent INTEGER REFERENCES versions(version),
        created_ms INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('initial', 'aggregate', 'rollback')),
        arch_hash TEXT NOT NULL REFERENCES architectures(arch_hash),
        params_sha256 TEXT NOT NULL,
        lineage TEXT NOT NULL DEFAULT '{}',
        metrics TEXT NOT NULL DEFAULT '{}',
        CHECK ((kind = 'initial') = (parent IS NULL)),
        CHECK (parent IS NULL OR parent < version)
    ) STRICT""",
    # Blobs apart from the metadata: listing versions never pages through parameters.
    """CREATE TABLE version_params (
        version INTEGER PRIMARY KEY REFERENCES versions(version),
        params BLOB NOT NULL
    ) STRICT""",
    """CREATE TABLE updates (
        id INTEGER PRIMARY KEY,
        sender TEXT,
        seq INTEGER,
        base_version INTEGER,
        num_samples INTEGER,
        weight REAL,
        status TEXT NOT NULL CHECK (status IN ('buffered', 'applied', 'rejected', 'quarantined')),
        reason TEXT,
        received_ms INTEGER NOT NULL,
        applied_version INTEGER REFERENCES versions(version),
        norm REAL,
        meta TEXT NOT NULL DEFAULT '{}',
        CHECK (status = 'rejected' OR (sender IS NOT NULL AND seq IS NOT NULL)),
        CHECK (status <> 'buffered' OR (base_version IS NOT NULL AND num_samples IS NOT NULL)),
        CHECK ((status = 'applied') = (applied_version IS NOT NULL))
    ) STRICT""",
    # Exactly-once in the model: an accepted (sender, seq) exists at most once. Rejected rows
    # may repeat, and may have no sender or seq at all.
    """CREATE UNIQUE INDEX updates_accepted_sender_seq ON updates(sender, seq)
        WHERE status IN ('buffered', 'applied', 'quarantined')""",
    "CREATE INDEX updates_status ON updates(status, id)",
    "CREATE INDEX updates_sender ON updates(sender, id)",
    """CREATE INDEX updates_applied_version ON updates(applied_version)
        WHERE applied_version IS NOT NULL""",
    """CREATE TABLE buffer (
        update_id INTEGER PRIMARY KEY REFERENCES updates(id),
        delta BLOB NOT NULL
    ) STRICT""",
    """CREATE TABLE server_state (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT""",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        event TEXT NOT NULL,
        actor TEXT NOT NULL,
        device TEXT,
        reason TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    ) STRICT""",
    "CREATE INDEX audit_ts ON audit(ts_ms)",
    "CREATE INDEX audit_event ON audit(event, ts_ms)",
    "CREATE INDEX audit_device ON audit(device, ts_ms)",
)

# Differential privacy: each device's part in each version. No foreign key to devices: a
# device's spend must outlive its registry row (a re-added id is the same data source). The
# federation accountant's steps live in server_state (key "privacy.accountant"), written in
# the same transaction as the version they account for.
_V2 = (
    """CREATE TABLE privacy_ledger (
        device_id TEXT NOT NULL,
        version INTEGER NOT NULL REFERENCES versions(version),
        noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
        clip_norm REAL NOT NULL CHECK (clip_norm > 0),
        mode TEXT NOT NULL CHECK (mode IN ('local', 'server')),
        contributions INTEGER NOT NULL DEFAULT 1 CHECK (contributions >= 1),
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, version)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX privacy_ledger_version ON privacy_ledger(version)",
)

# The audit hash chain (see ``_chain``): each row's SHA-256 over its fields and the previous
# row's hash. Rows from before this step keep a NULL hash and stay outside the chain; the
# anchor, written with the first chained row, records where the chain starts and the federation
# whose genesis value it starts from.
_V3 = (
    "ALTER TABLE audit ADD COLUMN hash TEXT",
    """CREATE TABLE audit_anchor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        federation_id TEXT NOT NULL,
        first_id INTEGER NOT NULL CHECK (first_id >= 1),
        created_ms INTEGER NOT NULL
    ) STRICT""",
)

# Distributed DP (noise added by secure-bucket members, charged like central noise) is a third
# ledger mode. SQLite cannot alter a CHECK: the table is rebuilt with it allowed (create, copy,
# drop, rename), its rows and index as they were.
_LEDGER_COLUMNS = "device_id, version, noise_multiplier, clip_norm, mode, contributions, ts_ms"
_V4 = (
    """CREATE TABLE privacy_ledger_v4 (
        device_id TEXT NOT NULL,
        version INTEGER NOT NULL REFERENCES versions(version),
        noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
        clip_norm REAL NOT NULL CHECK (clip_norm > 0),
        mode TEXT NOT NULL CHECK (mode IN ('local', 'server', 'distributed')),
        contributions INTEGER NOT NULL DEFAULT 1 CHECK (contributions >= 1),
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, version)
    ) STRICT, WITHOUT ROWID""",
    f"INSERT INTO privacy_ledger_v4 ({_LEDGER_COLUMNS}) "
    f"SELECT {_LEDGER_COLUMNS} FROM privacy_ledger",
    "DROP TABLE privacy_ledger",
    "ALTER TABLE privacy_ledger_v4 RENAME TO privacy_ledger",
    "CREATE INDEX privacy_ledger_version ON privacy_ledger(version)",
)

# Secure buckets (orchestrator.secagg): one row per bucket with its state machine (keys, sealed
# share pairs, survivor lists, the shares of the unmasking stage), and the masked inputs apart,
# written once each. Nothing here alone reveals a member's update (see docs/security.md);
# a finished bucket's inputs are deleted with its sum's entry into the ledger and buffer.
_V5 = (
    """CREATE TABLE secagg_buckets (
        bucket_id TEXT PRIMARY KEY,
        phase TEXT NOT NULL CHECK (phase IN ('keys', 'inputs', 'unmask', 'done', 'abandoned')),
        state BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT""",
    "CREATE INDEX secagg_buckets_phase ON secagg_buckets(phase)",
    """CREATE TABLE secagg_inputs (
        bucket_id TEXT NOT NULL REFERENCES secagg_buckets(bucket_id),
        member TEXT NOT NULL,
        ring BLOB NOT NULL,
        PRIMARY KEY (bucket_id, member)
    ) STRICT, WITHOUT ROWID""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "devices, replay windows, ledger, buffer, versions, server state, audit", _V1),
    Migration(2, "privacy ledger", _V2),
    Migration(3, "audit hash chain", _V3),
    Migration(4, "privacy ledger: distributed mode", _V4),
    Migration(5, "secure buckets", _V5),
)
SCHEMA_VERSION = len(MIGRATIONS)


def check_migrations(migrations: Sequence[Migration]) -> None:
    """Raise ``ValueError`` unless steps are numbered 1..N in order."""
    for i, m in enumerate(migrations, start=1):
        if m.version != i:
            raise ValueError(f"migration #{i} is numbered {m.version}; steps must be 1..N")
