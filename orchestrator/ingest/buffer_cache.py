"""Buffer blobs of buffered updates kept in memory, so aggregation need not read them back.

At ingestion the service holds each accepted update's buffer blob (see :mod:`.buffer_codec`),
the very bytes it writes to the store. Reading K of them back through SQLite for every version
was a large share of aggregation's cost, so the service remembers the blobs it committed, keyed
by ledger id, up to a byte budget; aggregation decodes them (in a thread) as the store would.

The store stays the source of truth: the ids (and their sender, base version and sample count)
always come from the ledger, and whenever one of them is not in memory (after a restart, or
once the budget was full) the whole window is read from the store as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.aggregation import BufferedUpdate
from orchestrator.ingest.buffer_codec import decode_buffered, from_stored
from orchestrator.store import Store

__all__ = ["DEFAULT_BUDGET_BYTES", "Buffer", "BufferCache", "load_buffer"]

DEFAULT_BUDGET_BYTES = 256 * 2**20


class BufferCache:
    """``{ledger id: buffer blob}`` of committed, still-buffered updates, within a budget."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self._budget = budget_bytes
        self._blobs: dict[int, bytes] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, update_id: object) -> bool:
        return update_id in self._blobs

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put_many(self, ids: Sequence[int], blobs: Sequence[bytes | None]) -> None:
        """Remember the committed rows' blobs (``None`` for rows not buffered); a blob that
        would exceed the budget is not kept (aggregation then reads its window from the
        store)."""
        if len(ids) != len(blobs):
            raise ValueError(f"{len(ids)} ids for {len(blobs)} blobs")
        for update_id, blob in zip(ids, blobs, strict=True):
            if blob is None or self._bytes + len(blob) > self._budget:
                continue
            self._blobs[update_id] = blob
            self._bytes += len(blob)

    def get(self, update_id: int) -> bytes | None:
        return self._blobs.get(update_id)

    def forget_before(self, update_id: int) -> None:
        """Drop every id below ``update_id`` (they left the buffer: the buffer is read oldest
        first, so everything before its first id is applied, rejected or quarantined)."""
        for old in [i for i in self._blobs if i < update_id]:
            self._bytes -= len(self._blobs.pop(old))

    def clear(self) -> None:
        self._blobs.clear()
        self._bytes = 0


async def load_buffer(store: Store, cache: BufferCache, limit: int | None
                      ) -> list[BufferedUpdate]:
    """The oldest ``limit`` buffered updates (all with None) with their float32 deltas: from
    the cached blobs when the cache holds every one of them, else from the store."""
    rows = await store.ledger(status="buffered", limit=limit)
    if rows:
        cache.forget_before(rows[0].id)
    else:
        cache.clear()
    cached: list[tuple[int, str, int, int, bytes, tuple[str, ...]]] = []
    for row in rows:
        blob = cache.get(row.id)
        if (blob is None or row.sender is None or row.base_version is None
                or row.num_samples is None):
            break
        cached.append((row.id, row.sender, row.base_version, row.num_samples, blob,
                       _contributors(row.meta)))
    else:
        def decode() -> list[BufferedUpdate]:
            return [BufferedUpdate(uid, sender, base, n, decode_buffered(blob), who)
                    for uid, sender, base, n, blob, who in cached]

        return await asyncio.to_thread(decode)
    entries = await store.buffered(limit=limit)

    def restore() -> list[BufferedUpdate]:
        return [BufferedUpdate(e.update_id, e.sender, e.base_version, e.num_samples,
                               from_stored(e.delta), _contributors(e.meta)) for e in entries]

    return await asyncio.to_thread(restore)


def _contributors(meta: Mapping[str, Any]) -> tuple[str, ...]:
    members = meta.get("members")
    return tuple(str(m) for m in members) if isinstance(members, list) else ()


class Buffer:
    """The aggregation buffer as the running service sees it: how many accepted updates wait
    in the store, and their blobs in memory. Intake adds what it committed; the aggregator
    takes the oldest and removes what it applied, rejected or quarantined."""

    def __init__(self, store: Store, cache: BufferCache | None = None) -> None:
        self._store = store
        self._cache = cache if cache is not None else BufferCache()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    async def load(self) -> None:
        self._count = await self._store.buffered_count()

    def committed(self, ids: Sequence[int], blobs: Sequence[bytes | None], *,
                  accepted: int) -> None:
        """Rows ``ids`` are in the store (``blobs``: the buffered ones' blobs, else None)."""
        self._cache.put_many(ids, blobs)
        self._count += accepted

    def removed(self, n: int) -> None:
        self._count = max(0, self._count - n)

    async def oldest(self, limit: int | None) -> list[BufferedUpdate]:
        """The oldest ``limit`` buffered updates (see :func:`load_buffer`); none left resets
        the count (the store is the truth)."""
        entries = await load_buffer(self._store, self._cache, limit)
        if not entries:
            self._count = 0
        return entries
