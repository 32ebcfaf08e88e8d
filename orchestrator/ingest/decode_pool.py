"""Where update batches are judged: in worker processes beside the service.

Judging an update is mostly signature verification, unsealing, decompression and decoding.
In a thread of the service that work contends with the event loop for the GIL at every switch
between C and Python (the thread waits for the loop's switch interval each time it comes back
from a C call), and ingestion ran at a third of the speed of the same work alone. In a worker
process it runs at full speed on another core, and only compact results come back: each
accepted update as its buffer blob (see :func:`orchestrator.ingest.process_entry`).

A group is split by device across the workers, balanced by bytes (a device's batches stay
together, so each worker owns its devices' replay windows for the group); results keep the
group's order.
``workers=0`` judges in a thread of the service instead (tests, single-core devices).

A worker that dies (a crash in a C library on hostile input, an OOM kill) breaks the pool:
the pool is restarted and the group judged again one batch at a time, and a batch that kills
a worker again is rejected as ``malformed`` without taking the service down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType

from nacl.public import PrivateKey
from nacl.signing import VerifyKey

from orchestrator.ingest.pipeline import (
    BatchResult,
    GroupResult,
    IngestPolicy,
    ModelView,
    RawBatch,
    Reject,
    SenderView,
    process_group,
)
from schemas.errors import Reason
from schemas.replay import ReplayWindow

__all__ = ["DecodePool"]

log = logging.getLogger(__name__)

_Senders = dict[str, tuple[str, bytes | None]]
"""What crosses to a worker for each device: its status and raw verify key."""

_worker: IngestPolicy | None = None


def _init_worker(policy: IngestPolicy, service_pid: int) -> None:
    global _worker
    _worker = policy
    threading.Thread(target=_exit_with, args=(service_pid,), name="watch-service",
                     daemon=True).start()


def _exit_with(pid: int) -> None:
    """End this worker when the service is gone. A SIGKILLed service cannot shut its pool
    down, and a worker holds both ends of its own task pipe, so it would wait forever (and
    keep the forkserver, and any pipe it inherited, open)."""
    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: no pid-reuse race
    except (AttributeError, OSError):
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # pragma: no cover - alive, or reused by another user
                pass
    select.select([fd], [], [])  # readable once the process has exited
    os._exit(0)


def _judge_in_worker(batches: list[RawBatch], senders: _Senders,
                     windows: dict[str, ReplayWindow], model: ModelView,
                     now_ms: int, keys: tuple[bytes, ...]) -> GroupResult:
    if _worker is None:  # pragma: no cover - the pool's initializer sets it
        raise RuntimeError("decode worker not initialised")
    policy, unseal = _worker, [PrivateKey(k) for k in keys]
    views = {d: SenderView(status, None if key is None else VerifyKey(key))
             for d, (status, key) in senders.items()}
    result = process_group(batches, views, windows, model, policy, unseal, now_ms)
    # the caller has the payloads: do not send them back
    for i, batch in enumerate(result.batches):
        result.batches[i] = dataclasses.replace(
            batch, batch=dataclasses.replace(batch.batch, payload=b""))
    return result


def _warm() -> None:
    """Nothing: submitting it starts a worker (imports done) before the first batch."""


_PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process


def _widen_pipes(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    """Give the executor's task and result pipes 1 MiB of buffer instead of 64 KiB.

    A group's batches and blobs are megabytes; through 64 KiB pipes each crosses in dozens
    of fill-and-drain rounds, each a pair of context switches, which cost a third of a
    worker's time per update. The executor has no option for it, hence its private queues;
    where they or ``F_SETPIPE_SZ`` are missing (not Linux, another Python) nothing changes.
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:  # pragma: no cover - not Linux
        return
    for name in ("_call_queue", "_result_queue"):
        reader = getattr(getattr(executor, name, None), "_reader", None)
        if reader is None:  # pragma: no cover - another executor implementation
            continue
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(reader.fileno(), set_size, _PIPE_BYTES)


def _shard(batches: Sequence[RawBatch], n: int) -> dict[int, list[int]]:
    """Batch indices per shard: a device's batches in one shard, the shards' payload bytes
    as even as a greedy fill makes them (largest device first), each in arrival order."""
    sizes: dict[str, int] = {}
    for batch in batches:
        sizes[batch.device] = sizes.get(batch.device, 0) + len(batch.payload)
    loads = [0] * n
    home: dict[str, int] = {}
    for device in sorted(sizes, key=lambda d: (-sizes[d], d)):
        shard = loads.index(min(loads))
        home[device] = shard
        loads[shard] += sizes[device]
    shards: dict[int, list[int]] = {}
    for i, batch in enumerate(batches):
        shards.setdefault(home[batch.device], []).append(i)
    return shards


class DecodePool:
    """``async with DecodePool(n, policy, unseal) as pool: await pool.judge(...)``."""

    def __init__(self, workers: int, policy: IngestPolicy,
                 unseal: PrivateKey | Sequence[PrivateKey]) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._workers = workers
        self._policy = policy
        self._unseal: tuple[PrivateKey, ...] = ()
        self.set_unseal(unseal)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.restarts = 0
        """How many times a dead worker forced a restart (tests and metrics watch it)."""

    def set_unseal(self, unseal: PrivateKey | Sequence[PrivateKey]) -> None:
        """The keys that open sealed updates from now on (a rotation changes them); they
        travel with each group, so the workers need no restart."""
        self._unseal = (unseal,) if isinstance(unseal, PrivateKey) else tuple(unseal)

    async def __aenter__(self) -> DecodePool:
        if self._workers:
            self._executor = executor = self._new_executor()
            # start the workers now, not on the first batch; in a thread, since the first
            # start of the forkserver waits for its imports
            await asyncio.to_thread(lambda: [executor.submit(_warm)
                                             for _ in range(self._workers)])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # a group being judged finishes (well under a second); queued ones are dropped
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        # forkserver: a worker forked from the service would inherit its threads' locks
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["orchestrator.ingest.pipeline"])
        executor = concurrent.futures.ProcessPoolExecutor(
            self._workers, mp_context=ctx, initializer=_init_worker,
            initargs=(self._policy, os.getpid()))
        _widen_pipes(executor)
        return executor

    async def judge(
        self,
        batches: Sequence[RawBatch],
        senders: Mapping[str, SenderView],
        windows: Mapping[str, ReplayWindow],
        model: ModelView,
        now_ms: int,
    ) -> GroupResult:
        """:func:`orchestrator.ingest.process_group` of the group, off the event loop.
        ``windows`` must be copies the caller owns (see there)."""
        if self._executor is None:
            if self._workers:
                raise RuntimeError("the decode pool is not running")
            return await asyncio.to_thread(process_group, list(batches), dict(senders),
                                           dict(windows), model, self._policy, self._unseal,
                                           now_ms)
        raw: _Senders = {d: (v.status, None if v.key is None else bytes(v.key))
                         for d, v in senders.items()}
        try:
            return await self._sharded(list(batches), raw, windows, model, now_ms)
        except BrokenProcessPool:
            log.error("a decode worker died; restarting the pool and judging the group's %d "
                      "batches one at a time", len(batches))
            self._restart()
        return await self._one_by_one(list(batches), raw, windows, model, now_ms)

    async def _sharded(self, batches: list[RawBatch], senders: _Senders,
                       windows: Mapping[str, ReplayWindow], model: ModelView,
                       now_ms: int) -> GroupResult:
        shards = _shard(batches, self._workers)
        parts = await asyncio.gather(*(
            self._submit([batches[i] for i in idx], senders, windows, model, now_ms)
            for idx in shards.values()))
        ordered: list[BatchResult | None] = [None] * len(batches)
        marks: dict[str, list[int]] = {}
        for idx, part in zip(shards.values(), parts, strict=True):
            for i, result in zip(idx, part.batches, strict=True):
                ordered[i] = dataclasses.replace(result, batch=batches[i])
            marks.update(part.marks)  # a device is in one shard only
        return GroupResult([r for r in ordered if r is not None], marks)

    async def _submit(self, batches: list[RawBatch], senders: _Senders,
                      windows: Mapping[str, ReplayWindow], model: ModelView,
                      now_ms: int) -> GroupResult:
        assert self._executor is not None
        devices = {b.device for b in batches}
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _judge_in_worker, batches,
            {d: s for d, s in senders.items() if d in devices},
            {d: w for d, w in windows.items() if d in devices}, model, now_ms,
            tuple(bytes(k) for k in self._unseal))

    async def _one_by_one(self, batches: list[RawBatch], senders: _Senders,
                          windows: Mapping[str, ReplayWindow], model: ModelView,
                          now_ms: int) -> GroupResult:
        results: list[BatchResult] = []
        marks: dict[str, list[int]] = {}
        own = dict(windows)  # carried from batch to batch, as process_group would
        for batch in batches:
            try:
                part = await self._submit([batch], senders, own, model, now_ms)
            except BrokenProcessPool:
                log.error("a batch from %s killed a decode worker again: rejected",
                          batch.device)
                self._restart()
                results.append(BatchResult(batch, [], Reject(
                    Reason.MALFORMED, "the batch made the decoder crash")))
                continue
            results.extend(dataclasses.replace(r, batch=batch) for r in part.batches)
            for device, seqs in part.marks.items():
                marks.setdefault(device, []).extend(seqs)
                window = own.get(device)
                if window is not None:
                    for seq in seqs:
                        window.mark(seq)
        return GroupResult(results, marks)

    def _restart(self) -> None:
        self.restarts += 1
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
