"""The in-memory cache of buffered deltas: the store's buffer stays the source of truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.ingest.buffer_cache import BufferCache, load_buffer
from orchestrator.ingest.buffer_codec import encode_buffered
from orchestrator.store import IncomingUpdate, Store
from schemas import Codec, CodecSpec, Update, decode_params, encode_params
from schemas.tensors import Params


def _delta(seed: int) -> Params:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((6, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32)}


def _accepted(seq: int, delta: Params) -> tuple[IncomingUpdate, Params, bytes]:
    """An int8 update as ingestion keeps it: the ledger row (with the buffer blob), the
    decoded delta, and the blob."""
    tensors = encode_params(delta, CodecSpec(Codec.INT8), np.random.default_rng(seq))
    update = Update(task_id="t", base_version=0, num_samples=seq, tensors=tensors,
                    codec=Codec.INT8)
    decoded = decode_params(tensors)
    blob, form = encode_buffered(update, decoded)
    assert form == "int8"
    return IncomingUpdate.accepted("dev", seq, 0, seq, blob, norm=1.0), decoded, blob


def test_budget_bounds_what_is_kept() -> None:
    cache = BufferCache(budget_bytes=100)
    small = b"x" * 40
    cache.put_many([1, 2, 3, 4], [small, None, small, small])
    assert 1 in cache and 2 not in cache and 3 in cache and 4 not in cache
    assert cache.nbytes == 80
    cache.forget_before(3)
    assert len(cache) == 1 and cache.nbytes == 40
    with pytest.raises(ValueError, match="ids for"):
        cache.put_many([5], [])


async def test_load_buffer_matches_the_store_with_and_without_the_cache(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "s.db") as store:
        await store.commit_version(params=_delta(0), kind="initial", parent=None,
                                   arch_hash=await store.put_architecture(b"arch"))
        rows, decoded, blobs = zip(*(_accepted(seq, _delta(seq)) for seq in range(1, 6)),
                                   strict=True)
        ids = await store.ingest(list(rows))
        cold = await load_buffer(store, BufferCache(), 3)  # nothing cached: read the store
        warm_cache = BufferCache()
        warm_cache.put_many(ids, list(blobs))
        warm = await load_buffer(store, warm_cache, 3)
        partial_cache = BufferCache()
        partial_cache.put_many(ids[1:], list(blobs[1:]))  # one missing: the store again
        partial = await load_buffer(store, partial_cache, None)
    assert [u.update_id for u in cold] == [u.update_id for u in warm] == ids[:3]
    assert [u.update_id for u in partial] == ids
    for a, b in zip(cold, warm, strict=True):
        assert (a.sender, a.base_version, a.num_samples) == (b.sender, b.base_version,
                                                             b.num_samples)
        for name in a.delta:  # the cached delta is bit for bit what the store restores
            assert np.array_equal(a.delta[name], b.delta[name])
    for u, d in zip(partial, decoded, strict=True):
        assert all(np.array_equal(u.delta[n], d[n]) for n in d)


async def test_ids_that_left_the_buffer_are_forgotten(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "s.db") as store:
        await store.commit_version(params=_delta(0), kind="initial", parent=None,
                                   arch_hash=await store.put_architecture(b"arch"))
        rows, _, blobs = zip(*(_accepted(seq, _delta(seq)) for seq in range(1, 4)), strict=True)
        ids = await store.ingest(list(rows))
        cache = BufferCache()
        cache.put_many(ids, list(blobs))
        await store.mark_updates(ids[:2], "rejected", "stale")
        left = await load_buffer(store, cache, None)
        assert [u.update_id for u in left] == ids[2:]
        assert len(cache) == 1
        await store.mark_updates(ids[2:], "rejected", "stale")
        assert await load_buffer(store, cache, None) == []
        assert len(cache) == 0
