"""The decode pool: worker processes judge exactly as the in-thread path does, survive a dead
worker, shut down cleanly, and do not outlive a SIGKILLed service."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from orchestrator.ingest.decode_pool import DecodePool, _shard
from orchestrator.ingest.pipeline import (
    Accept,
    Duplicate,
    GroupResult,
    IngestPolicy,
    ModelView,
    RawBatch,
    Reject,
    SenderView,
)
from schemas import (
    DEFAULT_LIMITS,
    Codec,
    CodecSpec,
    ReplayWindow,
    Update,
    UpdateBatch,
    encode_params,
    pack,
    pack_batch,
    seal_key,
    unseal_key,
)
from tests.support.paths import REPO

FED = "f"
ORCH = SigningKey.generate()
SHAPES = {"W0": (16, 4), "b0": (4,)}
POLICY = IngestPolicy(fed=FED, limits=DEFAULT_LIMITS, max_update_bytes=1 << 20,
                      max_staleness=1)
MODEL = ModelView(version=2, shapes=SHAPES)
KEYS = {f"d{i}": SigningKey.generate() for i in range(5)}


def _entry(device: str, seq: int, value: float, *, base: int = 2) -> bytes:
    rng = np.random.default_rng(seq)
    delta = {n: (rng.standard_normal(s) * value).astype(np.float32) for n, s in SHAPES.items()}
    update = Update(task_id="t", base_version=base, num_samples=3,
                    tensors=encode_params(delta, CodecSpec(Codec.INT8), rng), codec=Codec.INT8)
    return pack(update, key=KEYS[device], fed=FED, sender=device, seq=seq,
                ts_ms=int(time.time() * 1000), seal_to=seal_key(ORCH.verify_key))


def _group() -> list[RawBatch]:
    """Batches from five devices, with a repeat across batches, a rejection (too stale) and
    a batch that is not a batch."""
    batches = [RawBatch(d, pack_batch(UpdateBatch([_entry(d, s, 0.1) for s in (1, 2)])), 7)
               for d in KEYS]
    batches.append(RawBatch("d0", pack_batch(UpdateBatch([_entry("d0", 2, 0.1),
                                                          _entry("d0", 3, 0.1, base=0)])), 8))
    batches.append(RawBatch("d1", b"\xc1 not msgpack", 9))
    return batches


def _senders() -> dict[str, SenderView]:
    return {d: SenderView("active", k.verify_key) for d, k in KEYS.items()}


def _windows() -> dict[str, ReplayWindow]:
    return {d: ReplayWindow() for d in KEYS}


def _summary(result: GroupResult) -> list[Any]:
    out: list[Any] = []
    for b in result.batches:
        row: list[Any] = [b.batch.device, b.batch.received_ms, len(b.batch.payload),
                          None if b.failure is None else b.failure.reason.value]
        for o in b.outcomes:
            if isinstance(o, Accept):
                row.append(("accept", o.seq, o.blob, o.form, o.norm, o.update.task_id))
            elif isinstance(o, Duplicate):
                row.append(("duplicate", o.seq))
            else:
                assert isinstance(o, Reject)
                row.append(("reject", o.seq, o.reason.value))
        out.append(row)
    return out


async def _judge(pool: DecodePool) -> GroupResult:
    now = int(time.time() * 1000)
    return await pool.judge(_group(), _senders(), _windows(), MODEL, now)


@pytest.mark.parametrize("workers", [1, 2])
async def test_workers_judge_exactly_as_the_thread_does(workers: int) -> None:
    async with DecodePool(0, POLICY, unseal_key(ORCH)) as inline:
        expected = await _judge(inline)
    async with DecodePool(workers, POLICY, unseal_key(ORCH)) as pool:
        got = await _judge(pool)
    assert _summary(got) == _summary(expected)
    assert got.marks == expected.marks == {**{d: [1, 2] for d in KEYS}, "d0": [1, 2, 3]}
    kinds = [o[0] for b in _summary(got) for o in b[4:]]
    assert kinds.count("accept") == 10 and kinds.count("duplicate") == 1
    assert ("reject", 3, "stale") in _summary(got)[-2]
    assert _summary(got)[-1][3] == "malformed"  # the batch that is not one
    first = got.batches[0].outcomes[0]
    assert isinstance(first, Accept) and first.update.tensors == []
    assert set(first.delta) == set(SHAPES)  # the blob decodes to the validated delta


async def test_a_dead_worker_is_replaced_and_the_group_still_judged() -> None:
    async with DecodePool(1, POLICY, unseal_key(ORCH)) as pool:
        expected = _summary(await _judge(pool))
        executor = pool._executor
        assert executor is not None
        for proc in list(executor._processes.values()):  # type: ignore[attr-defined]
            os.kill(proc.pid, signal.SIGKILL)
        got = await _judge(pool)  # the broken pool is noticed, restarted, batches one by one
        assert _summary(got) == expected and pool.restarts == 1
        assert _summary(await _judge(pool)) == expected  # and the new pool keeps working
        assert pool.restarts == 1


async def test_leaving_stops_the_workers() -> None:
    async with DecodePool(2, POLICY, unseal_key(ORCH)) as pool:
        await _judge(pool)
        executor = pool._executor
        assert executor is not None
        procs = list(executor._processes.values())  # type: ignore[attr-defined]
        assert len(procs) == 2
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(RuntimeError, match="not running"):
        await _judge(pool)
    with pytest.raises(ValueError, match="workers"):
        DecodePool(-1, POLICY, unseal_key(ORCH))


_HOLDER = """
import asyncio, sys
from nacl.signing import SigningKey
from orchestrator.ingest.decode_pool import DecodePool, _shard
from orchestrator.ingest.pipeline import IngestPolicy
from schemas import DEFAULT_LIMITS, unseal_key

async def main():
    policy = IngestPolicy(fed="f", limits=DEFAULT_LIMITS, max_update_bytes=1024,
                          max_staleness=1)
    async with DecodePool(2, policy, unseal_key(SigningKey.generate())) as pool:
        await asyncio.get_running_loop().run_in_executor(pool._executor, int, "1")
        await asyncio.get_running_loop().run_in_executor(pool._executor, int, "2")
        print(*(p.pid for p in pool._executor._processes.values()), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: its parent (the forkserver) may not have reaped it yet
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_workers_do_not_outlive_a_killed_service() -> None:
    with subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL,
                          cwd=REPO) as proc:
        try:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()]
            assert len(pids) == 2 and all(_alive(p) for p in pids)
            proc.kill()
            proc.wait()
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_alive(p) for p in pids)
        finally:
            proc.kill()


def test_shards_keep_devices_together_and_balance_bytes() -> None:
    batches = [RawBatch(d, b"x" * size, i) for i, (d, size) in enumerate(
        [("a", 900), ("b", 300), ("a", 100), ("c", 500), ("d", 400), ("b", 300)])]
    shards = _shard(batches, 2)
    homes = {batches[i].device: s for s, idx in shards.items() for i in idx}
    assert all(homes[b.device] == s for s, idx in shards.items() for b in
               (batches[i] for i in idx))  # one shard per device
    loads = sorted(sum(len(batches[i].payload) for i in idx) for idx in shards.values())
    assert loads == [1100, 1400]  # greedy, largest first: a 1000 + d 400 | b 600 + c 500
    assert all(idx == sorted(idx) for idx in shards.values())  # arrival order kept
    assert _shard(batches, 1) == {0: list(range(6))}


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux-only")
async def test_the_task_and_result_pipes_are_widened() -> None:
    async with DecodePool(1, POLICY, unseal_key(ORCH)) as pool:
        executor = pool._executor
        assert executor is not None
        for queue in (executor._call_queue, executor._result_queue):  # type: ignore[attr-defined]
            assert fcntl.fcntl(queue._reader.fileno(), fcntl.F_GETPIPE_SZ) == 1 << 20
