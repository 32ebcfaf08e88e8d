"""Decoded deltas of buffered updates kept in memory, so aggregation need not read them back.

At ingestion the service already holds each accepted update's float32 delta, decoded by the
wire decoder; the store keeps the same update in buffer form (see :mod:`.buffer_codec`), whose
restoration calls that decoder again and gives the identical arrays. Reading K blobs back,
decompressing and decoding them for every version was a large share of aggregation's cost, so
the service remembers the deltas it committed, keyed by ledger id, up to a byte budget.

The store stays the source of truth: the ids (and their sender, base version and sample count)
always come from the ledger, and whenever one of them is not in memory (after a restart, or
once the budget was full) the whole window is read from the store as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orchestrator.aggregation import BufferedUpdate
from orchestrator.buffer_codec import from_stored
from orchestrator.store import Store
from schemas.tensors import Params

__all__ = ["DEFAULT_BUDGET_BYTES", "BufferCache", "load_buffer"]

DEFAULT_BUDGET_BYTES = 256 * 2**20


class BufferCache:
    """``{ledger id: float32 delta}`` of committed, still-buffered updates, within a budget."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self._budget = budget_bytes
        self._deltas: dict[int, Params] = {}
        self._sizes: dict[int, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._deltas)

    def __contains__(self, update_id: object) -> bool:
        return update_id in self._deltas

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put_many(self, ids: Sequence[int], deltas: Sequence[Params | None]) -> None:
        """Remember the committed rows' deltas (``None`` for rows not buffered); a delta that
        would exceed the budget is not kept (aggregation then reads its window from the
        store)."""
        if len(ids) != len(deltas):
            raise ValueError(f"{len(ids)} ids for {len(deltas)} deltas")
        for update_id, delta in zip(ids, deltas, strict=True):
            if delta is None:
                continue
            size = sum(int(a.nbytes) for a in delta.values())
            if self._bytes + size > self._budget:
                continue
            self._deltas[update_id] = delta
            self._sizes[update_id] = size
            self._bytes += size

    def get(self, update_id: int) -> Params | None:
        return self._deltas.get(update_id)

    def forget_before(self, update_id: int) -> None:
        """Drop every id below ``update_id`` (they left the buffer: the buffer is read oldest
        first, so everything before its first id is applied, rejected or quarantined)."""
        for old in [i for i in self._deltas if i < update_id]:
            del self._deltas[old]
            self._bytes -= self._sizes.pop(old)

    def clear(self) -> None:
        self._deltas.clear()
        self._sizes.clear()
        self._bytes = 0


async def load_buffer(store: Store, cache: BufferCache, limit: int | None
                      ) -> list[BufferedUpdate]:
    """The oldest ``limit`` buffered updates (all with None) with their float32 deltas: from
    the cache when it holds every one of them, else decoded from the store."""
    rows = await store.ledger(status="buffered", limit=limit)
    if rows:
        cache.forget_before(rows[0].id)
    else:
        cache.clear()
    out: list[BufferedUpdate] = []
    for row in rows:
        delta = cache.get(row.id)
        if (delta is None or row.sender is None or row.base_version is None
                or row.num_samples is None):
            break
        out.append(BufferedUpdate(row.id, row.sender, row.base_version, row.num_samples, delta))
    else:
        return out
    entries = await store.buffered(limit=limit)

    def restore() -> list[BufferedUpdate]:
        return [BufferedUpdate(e.update_id, e.sender, e.base_version, e.num_samples,
                               from_stored(e.delta)) for e in entries]

    return await asyncio.to_thread(restore)
