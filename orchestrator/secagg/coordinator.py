"""The coordinator of secure buckets: forms them from selected devices, judges their members'
stage messages, moves each bucket through its stages on time, and hands a finished bucket's
sum to FedBuff as one update (run as the service's ``secagg`` task).

- ``enlist``: the tasker hands over a device it selected for training (its slot is already
  counted); the device waits (a short deferral) until a bucket forms: ``bucket_size`` of them,
  or after ``form_timeout_s`` as many as reach the threshold.
- ``receive``: the intake hands over the stage messages of a committed group; each is judged
  by its bucket, the changed buckets are written, and only then are the acks returned.
- the loop (a tick a second, or at once when something arrived) closes a stage when everyone
  answered or its time is up, re-sends a stage's message to members that have not answered
  (a member offline between stages answers when it returns), and ends buckets.

A bucket ends ``done`` (its sum in the ledger and buffer, the members' slots freed) or
``abandoned`` (below the threshold: nothing is unmasked, and its members may be tasked again).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import random
from collections.abc import MutableMapping, Sequence

import numpy as np

from orchestrator.clock import Clock
from orchestrator.config import SecureAggregationConfig
from orchestrator.devices.registry import Registry
from orchestrator.devices.selection import Outstanding, OutstandingTasks
from orchestrator.ingest.buffer_cache import Buffer
from orchestrator.ingest.buffer_codec import encode_float32
from orchestrator.ingest.pipeline import Staged, fast_norm
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, IncomingUpdate, Store
from orchestrator.versions.cadence import Cadence
from orchestrator.versions.head import VersionHead
from schemas.messages import AckEntry, AckOutcome, Defer, Message, Task
from schemas.secagg import Problem, SecAggError
from schemas.secagg.flat import unflatten
from schemas.secagg.wire import LATE, SecAggEnd, SecAggInput, SecAggKeys, SecAggReveal
from schemas.tensors import Codec, CodecSpec
from schemas.topics import DownKind

from .bucket import BucketState, Phase, Unmasked
from .plan import BucketPlan
from .records import LiveBucket

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)

TICK_S = 1.0
RESEND_S = 10.0
"""A stage's message goes again to members that have not answered after this long."""
FORMING_RETRY_MS = 5000
_CLOSED_KEPT = 1000


class Coordinator:
    def __init__(self, *, config: SecureAggregationConfig, plan: BucketPlan, store: Store,
                 registry: Registry, head: VersionHead, outbound: Outbound, buffer: Buffer,
                 outstanding: OutstandingTasks, cadence: Cadence, aggregate_due: asyncio.Event,
                 counters: MutableMapping[str, int], clock: Clock, rng: random.Random) -> None:
        self._config = config
        self._plan = plan
        self._store = store
        self._registry = registry
        self._head = head
        self._outbound = outbound
        self._buffer = buffer
        self._outstanding = outstanding
        self._cadence = cadence
        self._aggregate_due = aggregate_due
        self._counters = counters
        self._clock = clock
        self._rng = rng
        self._pool: dict[str, tuple[Task, int]] = {}
        self._live: dict[str, LiveBucket] = {}
        self._member_of: dict[str, str] = {}
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Recently ended buckets: holders answering after the sum was made are not at fault."""
        self._due = asyncio.Event()
        self._unsent: list[tuple[str, DownKind, Message]] = []

    async def load(self) -> None:
        """The open buckets from the store; their members' slots are taken again."""
        for blob, inputs in await self._store.open_buckets():
            live = LiveBucket.from_saved(blob, inputs)
            self._live[live.bucket_id] = live
            for member, task in live.tasks.items():
                if member in live.state.members_in:
                    self._member_of[member] = live.bucket_id
                    self._outstanding.add(Outstanding(member, task.task_id, task.model_version,
                                                      task.deadline_ms))
        if self._live:
            log.info("secure buckets: %d open ones restored", len(self._live))
        # a crash between ending a bucket and telling its members: tell them again
        since = self._clock.wall_ms() - int(self._config.unmask_timeout_s * 1000)
        for blob in await self._store.ended_buckets(since):
            state = LiveBucket.from_saved(blob, {}).state
            self._closed[state.bucket_id] = None
            end = SecAggEnd(state.bucket_id, state.phase.value, state.reason)
            self._unsent += [(m, DownKind.SECAGG, end) for m in state.members_in]

    def enlist(self, device: str, task: Task) -> Defer:
        """Hold ``device`` (tasked with ``task``) for the next bucket."""
        if device not in self._member_of:
            self._pool.setdefault(device, (task, self._clock.wall_ms()))
            self._due.set()
        return Defer(FORMING_RETRY_MS, "bucket_forming")

    async def run(self) -> None:
        while True:
            await self._wake()
            await self.tick()

    async def _wake(self) -> None:
        waiter = asyncio.ensure_future(self._due.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(TICK_S))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        self._due.clear()

    async def tick(self) -> None:
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            await self._send_all(unsent)
        now = self._clock.wall_ms()
        await self._form(now)
        for live in list(self._live.values()):
            await self._advance(live, now)

    # -- forming -------------------------------------------------------------------------------

    def _ready(self, now: int) -> int:
        """How many pooled devices to form a bucket with now (0: wait)."""
        size = self._config.bucket_size
        if len(self._pool) >= size:
            return size
        least = max(2, math.ceil(self._config.threshold * size))
        oldest = min((t for _, t in self._pool.values()), default=now)
        waited = now - oldest >= self._config.form_timeout_s * 1000
        return len(self._pool) if waited and len(self._pool) >= least else 0

    async def _form(self, now: int) -> None:
        while (count := self._ready(now)) > 0:
            chosen = list(self._pool)[:count]
            tasks = {d: self._pool.pop(d)[0] for d in chosen}
            keys = {}
            for device in chosen:
                view = self._registry.get(device)
                if view is None or view.verify_key is None or view.status != "active":
                    self._outstanding.complete(device)
                    continue
                keys[device] = bytes(view.verify_key.to_curve25519_public_key())
            if len(keys) < 2:
                for device in keys:
                    self._outstanding.complete(device)
                return
            await self._open_bucket({d: tasks[d] for d in keys}, keys, now)

    async def _open_bucket(self, tasks: dict[str, Task], keys: dict[str, bytes],
                           now: int) -> None:
        bucket_id = f"b{self._head.version}-{self._rng.getrandbits(48):012x}"
        deadline = now + int((self._config.key_timeout_s + self._config.deadline_s) * 1000)
        expires = deadline + int(self._config.unmask_timeout_s * 1000)
        spec = self._plan.spec(bucket_id, keys, deadline, expires)
        base = min(t.model_version for t in tasks.values())
        n_params = sum(math.prod(s) for s in self._head.shapes.values())
        member_tasks = {d: dataclasses.replace(t, model_version=base, bucket=spec,
                                               codec=CodecSpec(Codec.FLOAT32),
                                               deadline_ms=deadline)
                        for d, t in tasks.items()}
        live = LiveBucket(BucketState(spec, base, n_params, now), member_tasks, now,
                          resent_ms=now)
        await self._save(live)
        self._live[bucket_id] = live
        for device in tasks:
            self._member_of[device] = bucket_id
        self._counters["secagg.buckets"] += 1
        log.info("secure bucket %s: %d members on v%d (threshold %d, degree %d, %d bits)",
                 bucket_id, len(tasks), base, spec.threshold, spec.degree, spec.bits)
        await self._send_all([(d, DownKind.TASK, t) for d, t in member_tasks.items()])

    # -- stage messages ------------------------------------------------------------------------

    async def receive(self, device: str, staged: Sequence[Staged]) -> list[AckEntry]:
        """Judge ``device``'s stage messages; the acks, once the kept ones are durable."""
        acks: list[AckEntry] = []
        changed: dict[str, dict[str, bytes]] = {}
        for item in staged:
            outcome, reason = self._judge(device, item.message, changed)
            acks.append(AckEntry(item.seq, outcome, reason))
            if reason == LATE:
                self._counters["secagg.late"] += 1  # an answer the bucket no longer needed
            elif outcome is AckOutcome.REJECTED:
                self._counters[f"rejected.secagg.{reason}"] += 1
                await self._store.append_audit(AuditEvent(
                    "rejected", "secagg", device=device, reason=reason,
                    detail={"bucket": getattr(item.message, "bucket_id", ""),
                            "message": item.header.type, "seq": item.seq}))
            else:
                self._counters[f"secagg.{outcome.value}"] += 1
        for bucket_id, inputs in changed.items():
            await self._save(self._live[bucket_id], inputs)
        if changed:
            self._due.set()
        return acks

    def _judge(self, device: str, message: Message,
               changed: dict[str, dict[str, bytes]]) -> tuple[AckOutcome, str]:
        bucket_id = getattr(message, "bucket_id", "")
        live = self._live.get(bucket_id)
        if bucket_id in self._closed or (live is not None and not live.state.open):
            return AckOutcome.REJECTED, LATE
        if live is None:
            return AckOutcome.REJECTED, "secagg_unknown_bucket"
        try:
            kept = self._apply(live, device, message)
        except SecAggError as exc:
            log.info("secure bucket %s: %s refused: %s", bucket_id, device, exc.detail)
            return AckOutcome.REJECTED, f"secagg_{exc.problem.value}"
        if not kept:
            return AckOutcome.DUPLICATE, ""
        inputs = changed.setdefault(bucket_id, {})
        if isinstance(message, SecAggInput):
            inputs[device] = message.values  # as packed on the wire, checked by on_input
        return AckOutcome.ACCEPTED, ""

    @staticmethod
    def _apply(live: LiveBucket, device: str, message: Message) -> bool:
        state = live.state
        if isinstance(message, SecAggKeys):
            return state.on_keys(device, message)
        if isinstance(message, SecAggInput):
            kept, values = state.on_input(device, message)
            if kept:
                live.masked[device] = values
            return kept
        if isinstance(message, SecAggReveal):
            return state.on_reveal(device, message)
        raise SecAggError(Problem.BAD_PARAMETER, f"a {type(message).__name__} is not a member's")

    # -- stages --------------------------------------------------------------------------------

    async def _advance(self, live: LiveBucket, now: int) -> None:
        state, cfg = live.state, self._config
        if state.phase is Phase.KEYS:
            if state.keys_complete or now >= live.stage_ms + cfg.key_timeout_s * 1000:
                await self._close_keys(live, now)
            else:
                await self._resend(live, now, [(m, DownKind.TASK, live.tasks[m])
                                               for m in state.spec.ids if m not in state.keys])
        elif state.phase is Phase.INPUTS:
            if state.inputs_complete or now >= state.spec.deadline_ms:
                await self._close_inputs(live, now)
            else:
                await self._resend(live, now, [(m, DownKind.SECAGG, state.relay_for(m))
                                               for m in state.advertised
                                               if m not in state.inputs])
        elif state.phase is Phase.UNMASK:
            if state.reveals_complete:
                await self._finish(live)
            elif now >= live.stage_ms + cfg.unmask_timeout_s * 1000:
                state.abandon("too few shares came before the unmask timeout")
                await self._end(live, None)
            else:
                request = state.unmask_request()
                await self._resend(live, now, [(m, DownKind.SECAGG, request)
                                               for m in state.advertised
                                               if m not in state.reveals])

    async def _close_keys(self, live: LiveBucket, now: int) -> None:
        state = live.state
        relays = state.close_keys()
        if state.phase is Phase.ABANDONED:
            await self._end(live, None)
            return
        live.stage_ms = live.resent_ms = now
        await self._save(live)
        left_out = [m for m in state.spec.ids if m not in relays]
        for member in left_out:
            self._release(member)
        await self._send_all([(m, DownKind.SECAGG, r) for m, r in relays.items()]
                             + [(m, DownKind.SECAGG, SecAggEnd(state.bucket_id, "abandoned",
                                                               "no keys in time"))
                                for m in left_out])

    async def _close_inputs(self, live: LiveBucket, now: int) -> None:
        state = live.state
        request = state.close_inputs()
        if request is None:
            await self._end(live, None)
            return
        live.stage_ms = live.resent_ms = now
        await self._save(live)
        await self._send_all([(m, DownKind.SECAGG, request) for m in state.advertised])

    async def _finish(self, live: LiveBucket) -> None:
        state = live.state
        masked = {m: live.masked[m] for m in state.survivors}
        try:
            unmasked = await asyncio.to_thread(state.finish, masked)
        except SecAggError as exc:  # e.g. a corrupt share: no partial result
            state.abandon(f"unmasking failed: {exc.detail}")
            await self._end(live, None)
            return
        await self._end(live, unmasked)

    async def _end(self, live: LiveBucket, unmasked: Unmasked | None) -> None:
        state, now = live.state, self._clock.wall_ms()
        update = None if unmasked is None else self._as_update(live, unmasked, now)
        event = "secagg_done" if unmasked is not None else "secagg_abandoned"
        detail = {"members": len(state.spec.ids), "survivors": len(state.survivors),
                  "base_version": state.base_version}
        ledger_id = await self._store.close_bucket(
            state.bucket_id, state.phase.value, live.to_blob(), update=update,
            audit=AuditEvent(event, "secagg", reason=state.reason or None,
                             detail={"bucket": state.bucket_id, **detail}))
        if update is not None and ledger_id is not None:
            assert isinstance(update.delta, bytes)
            self._buffer.committed([ledger_id], [update.delta], accepted=1)
            self._cadence.on_accepted(state.base_version)
            self._aggregate_due.set()
            self._counters["secagg.done"] += 1
        else:
            self._counters["secagg.abandoned"] += 1
            log.warning("secure bucket %s abandoned: %s", state.bucket_id, state.reason)
        del self._live[state.bucket_id]
        self._closed[state.bucket_id] = None
        while len(self._closed) > _CLOSED_KEPT:
            self._closed.popitem(last=False)
        members = [m for m in state.spec.ids if self._member_of.get(m) == state.bucket_id]
        for member in members:
            self._release(member)
        end = SecAggEnd(state.bucket_id, state.phase.value, state.reason)
        await self._send_all([(m, DownKind.SECAGG, end) for m in members])

    def _as_update(self, live: LiveBucket, out: Unmasked, now: int) -> IncomingUpdate:
        state = live.state
        mean = unflatten((out.total / max(out.weight, 1e-12)).astype(np.float32),
                         self._head.shapes)
        losses = [i.train_loss for m in out.survivors
                  if (i := state.inputs[m]).train_loss is not None]
        meta = {"bucket": state.bucket_id, "members": out.survivors, "weight": out.weight,
                "stored": "float32", "secure": True, "bits": state.spec.bits,
                "train_loss": float(np.mean(losses)) if losses else None}
        return IncomingUpdate.accepted(f"bucket:{state.bucket_id}", 0, state.base_version,
                                       out.num_samples, encode_float32(mean),
                                       norm=fast_norm(mean), received_ms=now, meta=meta)

    def _release(self, member: str) -> None:
        self._member_of.pop(member, None)
        self._outstanding.complete(member)

    # -- sending -------------------------------------------------------------------------------

    async def _resend(self, live: LiveBucket, now: int,
                      messages: list[tuple[str, DownKind, Message]]) -> None:
        if not messages or now - live.resent_ms < RESEND_S * 1000:
            return
        live.resent_ms = now
        self._counters["secagg.resent"] += len(messages)
        await self._send_all(messages)

    async def _send_all(self, messages: list[tuple[str, DownKind, Message]]) -> None:
        await asyncio.gather(*(self._outbound.send(d, k, m) for d, k, m in messages))

    async def _save(self, live: LiveBucket, inputs: dict[str, bytes] | None = None) -> None:
        await self._store.save_bucket(live.bucket_id, live.state.phase.value, live.to_blob(),
                                      created_ms=live.state.created_ms, inputs=inputs)

