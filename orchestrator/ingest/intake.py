"""Intake of update batches: judge (decode workers), commit (one transaction), then ack.

Two loops, run as the service's ``ingest-decode`` and ``ingest-commit`` tasks:

- ``decode``: groups queued batches (up to ``group_batches``), takes the registry's word on
  each sender and a copy of its judging window, and has the decode pool judge the group
  (:func:`~.pipeline.process_group`: signature, replay window, unseal, decode, validate);
- ``commit``: writes the group's ledger rows, buffer blobs and replay windows in one store
  transaction, and only then acks each batch, counts the outcomes and tells the buffer, the
  outstanding-task table and the cadence what was accepted.

An ack therefore always names updates that are durably stored: a crash at any point loses no
acknowledged update, and a batch resent after one is answered ``duplicate``.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping, Sequence
from typing import Protocol

from orchestrator.clock import Clock
from orchestrator.devices.registry import Registry
from orchestrator.devices.replay_book import ReplayBook
from orchestrator.devices.selection import OutstandingTasks
from orchestrator.ingest.buffer_cache import Buffer
from orchestrator.ingest.decode_pool import DecodePool
from orchestrator.ingest.pipeline import (
    Accept,
    Duplicate,
    GroupResult,
    ModelView,
    RawBatch,
    Reject,
    SenderView,
    Staged,
    incoming_rows,
)
from orchestrator.link.sender import Outbound
from orchestrator.metrics.counters import observe_group
from orchestrator.metrics.prometheus import Metrics
from orchestrator.store import Store
from orchestrator.versions.cadence import Cadence
from orchestrator.versions.head import VersionHead
from schemas.messages import Ack, AckEntry, AckOutcome
from schemas.replay import ReplayWindow
from schemas.topics import DownKind

__all__ = ["Intake", "StageJudge"]


class StageJudge(Protocol):
    """Who answers secure-bucket stage messages (:class:`orchestrator.secagg.Coordinator`)."""

    async def receive(self, device: str, staged: Sequence[Staged]) -> list[AckEntry]: ...


class Intake:
    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        book: ReplayBook,
        decoder: DecodePool,
        head: VersionHead,
        buffer: Buffer,
        outstanding: OutstandingTasks,
        cadence: Cadence,
        outbound: Outbound,
        aggregate_due: asyncio.Event,
        counters: MutableMapping[str, int],
        metrics: Metrics,
        clock: Clock,
        group_batches: int,
        queue_batches: int,
        buckets: StageJudge | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._book = book
        self._decoder = decoder
        self._head = head
        self._buffer = buffer
        self._outstanding = outstanding
        self._cadence = cadence
        self._outbound = outbound
        self._aggregate_due = aggregate_due
        self._counters = counters
        self._metrics = metrics
        self._clock = clock
        self._group_batches = group_batches
        self._buckets = buckets
        self._queued: asyncio.Queue[RawBatch] = asyncio.Queue(queue_batches)
        self._judged: asyncio.Queue[GroupResult] = asyncio.Queue(2)

    async def submit(self, batch: RawBatch) -> None:
        """Queue a batch; waits while the queue is full (the broker then holds the rest)."""
        await self._queued.put(batch)

    async def decode(self) -> None:
        while True:
            group = [await self._queued.get()]
            while len(group) < self._group_batches and not self._queued.empty():
                group.append(self._queued.get_nowait())
            senders: dict[str, SenderView] = {}
            windows: dict[str, ReplayWindow] = {}
            for batch in group:
                view = self._registry.get(batch.device)
                if view is None or batch.device in senders:
                    continue
                senders[batch.device] = SenderView(view.status, view.verify_key)
                if view.verify_key is not None:
                    windows[batch.device] = self._book.for_judging(batch.device)
            model = ModelView(self._head.version, self._head.shapes)
            result = await self._decoder.judge(group, senders, windows, model,
                                               self._clock.wall_ms())
            self._book.mark_judged(result.marks)
            await self._judged.put(result)

    async def commit(self) -> None:
        while True:
            await self._commit(await self._judged.get())

    async def _commit(self, result: GroupResult) -> None:
        rows = incoming_rows(result)
        async with self._book.writing():
            states = self._book.committed_with(result.marks)
            ids = await self._store.ingest(rows, {d: w.to_bytes() for d, w in states.items()})
            self._book.adopt(states)
        accepted = self._tally(result)
        # committed: now (and only now) the buffer, the acks and the counters
        self._buffer.committed(ids, [r.delta if isinstance(r.delta, bytes) else None
                                     for r in rows], accepted=accepted)
        if accepted:
            self._aggregate_due.set()
        acks = [(b.batch.device, Ack(entries)) for b in result.batches
                if (entries := b.ack_entries() + await self._stages(b.batch.device, b.staged))]
        if acks:
            await asyncio.gather(*(self._outbound.send(d, DownKind.ACK, a) for d, a in acks))
        observe_group(self._metrics, result, self._clock.wall_ms(), buffered=self._buffer.count)

    async def _stages(self, device: str, staged: list[Staged]) -> list[AckEntry]:
        """The bucket's answers to stage messages (after their bucket stored them)."""
        if not staged:
            return []
        if self._buckets is None:
            self._counters["rejected.secagg_off"] += len(staged)
            return [AckEntry(s.seq, AckOutcome.REJECTED, "secagg_off") for s in staged]
        return await self._buckets.receive(device, staged)

    def _tally(self, result: GroupResult) -> int:
        """Count the group's outcomes; the accepted ones complete their tasks."""
        accepted = 0
        for batch in result.batches:
            device = batch.batch.device
            self._counters["batches"] += 1
            if batch.failure is not None:
                self._counters[f"rejected.{batch.failure.reason.value}"] += 1
            for outcome in batch.outcomes:
                if isinstance(outcome, Accept):
                    accepted += 1
                    self._counters["accepted"] += 1
                    task = self._outstanding.get(device)
                    if task is not None and task.task_id == outcome.update.task_id:
                        self._outstanding.complete(device)
                    self._cadence.on_accepted(outcome.update.base_version)
                elif isinstance(outcome, Reject):
                    self._counters[f"rejected.{outcome.reason.value}"] += 1
                elif isinstance(outcome, Duplicate):
                    self._counters["duplicate"] += 1
        return accepted
