"""The differential-privacy ledger (internal: part of :class:`~.store.Store`).

One row per (device, version) the device contributed to, with the noise it was protected by;
:mod:`orchestrator.privacy` turns the rows into each device's epsilon. Rows are written with
the version (``commit_version(..., privacy=...)``) so a crash never leaves a version without
its spend, or a spend without its version.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aiosqlite

from ._base import StoreBase
from ._sql import UPSERT_STATE, fetchall, one_of, scalar
from .errors import NotFoundError

__all__ = ["DP_LEDGER_MODES", "PrivacyCharge", "PrivacyMethods", "PrivacyRecord"]

LedgerMode = Literal["local", "server", "distributed"]
DP_LEDGER_MODES: tuple[LedgerMode, ...] = get_args(LedgerMode)
_COLUMNS = "device_id, version, noise_multiplier, clip_norm, mode, contributions, ts_ms"


@dataclass(frozen=True)
class PrivacyCharge:
    """A device's part in a version about to be recorded. Build a version's charges with
    :meth:`for_senders`, which counts each device's updates into ``contributions``."""

    device_id: str
    noise_multiplier: float
    clip_norm: float
    mode: LedgerMode
    contributions: int = 1
    """How many of the version's updates came from this device."""

    def __post_init__(self) -> None:
        one_of("mode", self.mode, DP_LEDGER_MODES)
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, "
                             f"got {self.noise_multiplier!r}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be finite and > 0, got {self.clip_norm!r}")
        if isinstance(self.contributions, bool) or not isinstance(self.contributions, int) \
                or self.contributions < 1:
            raise ValueError(f"contributions must be an integer >= 1, "
                             f"got {self.contributions!r}")

    @classmethod
    def for_senders(
        cls,
        senders: Iterable[str],
        *,
        noise_multiplier: float,
        clip_norm: float,
        mode: LedgerMode,
    ) -> list[PrivacyCharge]:
        """One charge per distinct sender (of the version's applied updates), in first-seen
        order."""
        counts = Counter(senders)
        return [cls(d, noise_multiplier, clip_norm, mode, n) for d, n in counts.items()]


@dataclass(frozen=True)
class PrivacyRecord:
    """A privacy-ledger row (satisfies :class:`orchestrator.privacy.ParticipationLike`)."""

    device_id: str
    version: int
    noise_multiplier: float
    clip_norm: float
    mode: LedgerMode
    contributions: int
    ts_ms: int


def check_charges(charges: Sequence[PrivacyCharge]) -> None:
    """Raise ``ValueError`` if a device is charged twice for one version."""
    seen: set[str] = set()
    for c in charges:
        if c.device_id in seen:
            raise ValueError(f"device {c.device_id!r} is charged twice for one version "
                             "(count its updates into contributions)")
        seen.add(c.device_id)


async def insert_charges(
    conn: aiosqlite.Connection, version: int, charges: Sequence[PrivacyCharge], now: int
) -> None:
    """Write ``charges`` for ``version`` inside the caller's transaction (checked already)."""
    await conn.executemany(
        f"INSERT INTO privacy_ledger ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(c.device_id, version, float(c.noise_multiplier), float(c.clip_norm), c.mode,
          c.contributions, now) for c in charges],
    )


class PrivacyMethods(StoreBase):
    """The per-device privacy ledger."""

    async def record_privacy(
        self,
        version: int,
        charges: Sequence[PrivacyCharge],
        *,
        server_state: Mapping[str, bytes] | None = None,
    ) -> None:
        """Charge devices for an existing ``version`` (and upsert ``server_state``, e.g. the
        accountant), in one transaction. Prefer ``commit_version(..., privacy=...)``, which
        does it with the version itself. A device already charged for the version raises
        :class:`StoreIntegrityError`; an unknown version :class:`NotFoundError`."""
        charges = list(charges)
        check_charges(charges)
        now = self._clock()
        async with self._tx() as conn:
            if await scalar(conn, "SELECT 1 FROM versions WHERE version = ?", (version,)) is None:
                raise NotFoundError("version", version)
            await insert_charges(conn, version, charges, now)
            if server_state:
                await conn.executemany(
                    UPSERT_STATE, [(k, bytes(v), now) for k, v in server_state.items()]
                )

    async def privacy_ledger(
        self, *, device_id: str | None = None, since_version: int | None = None
    ) -> list[PrivacyRecord]:
        """Ledger rows matching every given filter, by version then device."""
        where: list[str] = []
        args: list[Any] = []
        if device_id is not None:
            where.append("device_id = ?")
            args.append(device_id)
        if since_version is not None:
            where.append("version >= ?")
            args.append(since_version)
        sql = f"SELECT {_COLUMNS} FROM privacy_ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self._read() as conn:
            rows = await fetchall(conn, sql + " ORDER BY version, device_id", args)
        return [PrivacyRecord(*row) for row in rows]
