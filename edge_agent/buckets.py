"""This device's part in secure buckets: one :class:`~schemas.secagg.session.MemberSession`
per bucket it was tasked into, kept in the state file.

Every stage message it produces goes into the outbox in the same transaction as the session
it leaves behind, so a crash never sends a share the session does not remember releasing,
nor forgets one it sent. The worker calls :meth:`Buckets.join` when a bucket task starts and
:meth:`Buckets.submit` when training is done (it waits there, within the bucket's deadline,
for the relayed keys); the downlink hands over the relay, the unmask request and the end.
A request that contradicts what this member saw, or repeats one it answered, is refused and
counted (``stats.refused["secagg_..."]``); the outbox's own delivery covers a lost answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from nacl.public import PrivateKey

from schemas import Message, Params, Task, decode_params
from schemas.secagg import SecAggError
from schemas.secagg.flat import flatten
from schemas.secagg.session import MemberSession, TrainedInput
from schemas.secagg.wire import SecAggEnd, SecAggRelay, SecAggUnmask

from .clock import Clock, wall_ms
from .shared import AgentStats, Pulse
from .signer import Signer
from .state import LocalState
from .training import TrainedUpdate

__all__ = ["Buckets"]

_INDEX = "secagg.buckets"
EXPIRY_GRACE_MS = 60_000
"""A bucket is forgotten this long after its expiry (clocks differ)."""


def _key(bucket_id: str) -> str:
    return f"secagg.{bucket_id}"


class Buckets:
    def __init__(self, *, state: LocalState, signer: Signer, device_id: str, clock: Clock,
                 stats: AgentStats, changed: Pulse, outbox_due: asyncio.Event,
                 logger: logging.Logger) -> None:
        self._state = state
        self._signer = signer
        self._me = device_id
        self._clock = clock
        self._stats = stats
        self._changed = changed
        self._outbox_due = outbox_due
        self._log = logger
        self._sessions: dict[str, MemberSession] = {}
        self._relayed = asyncio.Condition()

    def _seal(self) -> PrivateKey:
        return self._state.signing_key.to_curve25519_private_key()

    async def load(self) -> None:
        for bucket_id in await self._state.get(_INDEX, []):
            saved = await self._state.get(_key(bucket_id))
            if saved is None:
                continue
            try:
                self._sessions[bucket_id] = MemberSession.from_state(saved)
            except SecAggError as exc:
                self._log.error("secure bucket %s forgotten: %s", bucket_id, exc)
        await self._prune()

    async def _prune(self) -> None:
        """Forget the buckets past their expiry (their end never reached us)."""
        now = wall_ms(self._clock)
        for bucket_id, session in list(self._sessions.items()):
            expires = session.spec.expires_ms
            if expires and now > expires + EXPIRY_GRACE_MS:
                await self._commit(bucket_id, None, None)
                self._log.info("secure bucket %s forgotten: expired", bucket_id)

    @property
    def sessions(self) -> dict[str, MemberSession]:
        return self._sessions

    def joined(self, bucket_id: str) -> bool:
        return bucket_id in self._sessions

    def _values(self, session: MemberSession | None, bucket_id: str) -> dict[str, Any]:
        others = [b for b in self._sessions if b != bucket_id]
        index = others + ([bucket_id] if session is not None else [])
        return {_INDEX: index, _key(bucket_id): None if session is None else session.to_state()}

    async def _commit(self, bucket_id: str, session: MemberSession | None,
                      message: Message | None, *, seal: bool = True,
                      residual: Params | None = None) -> None:
        """The session's new state (None: forgotten) and ``message`` (if any), together."""
        values = self._values(session, bucket_id)
        if message is None:
            await self._state.put_many(values)
        else:
            await self._signer.enqueue(message, seal=seal, values=values, residual=residual)
            self._outbox_due.set()
        if session is None:
            self._sessions.pop(bucket_id, None)
        else:
            self._sessions[bucket_id] = session
        self._changed.fire()

    # -- from the worker -----------------------------------------------------------------------

    async def join(self, task: Task) -> bool:
        """Deal this member's shares for ``task.bucket`` (False: already a member)."""
        spec = task.bucket
        assert spec is not None
        await self._prune()
        if spec.bucket_id in self._sessions:
            return False
        session, keys = MemberSession.join(spec, self._me, self._seal())
        await self._commit(spec.bucket_id, session, keys, seal=task.seal)
        self._log.info("secure bucket %s joined (%d members, threshold %d)", spec.bucket_id,
                       len(spec.members), spec.threshold)
        return True

    async def submit(self, task: Task, trained: TrainedUpdate) -> bool:
        """Mask the trained delta and put it in the outbox, once the keys are relayed (False:
        the bucket ended or its deadline passed first)."""
        spec = task.bucket
        assert spec is not None and trained.update is not None
        bucket_id = spec.bucket_id
        async with self._relayed:
            while (s := self._sessions.get(bucket_id)) is not None and not s.relayed:
                left = (spec.deadline_ms - wall_ms(self._clock)) / 1000
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._relayed.wait(), timeout=min(left, 5.0))
                except TimeoutError:
                    continue
        session = self._sessions.get(bucket_id)
        if session is None or not session.relayed:
            self._log.warning("secure bucket %s: no relay before its deadline", bucket_id)
            return False
        update = trained.update
        delta = flatten(decode_params(update.tensors))
        masked = session.masked_input(TrainedInput(
            task.task_id, delta.astype(np.float32), update.num_samples, update.local_steps,
            update.train_loss, update.train_ms))
        await self._commit(bucket_id, session, masked, seal=task.seal,
                           residual=trained.feedback.residual)
        self._stats.updates_built += 1
        self._log.info("secure bucket %s: masked input (%d coordinates, %d bits) in the outbox",
                       bucket_id, masked.n, spec.bits)
        return True

    # -- from the downlink ---------------------------------------------------------------------

    async def on_stage(self, message: Message) -> None:
        bucket_id = str(getattr(message, "bucket_id", ""))
        await self._prune()
        session = self._sessions.get(bucket_id)
        if session is None:
            if not isinstance(message, SecAggEnd):  # an end said again: nothing to forget
                self._refused("unknown_bucket",
                              f"{type(message).__name__} for bucket {bucket_id}")
            return
        try:
            if isinstance(message, SecAggRelay):
                await self._on_relay(session, message)
            elif isinstance(message, SecAggUnmask):
                await self._on_unmask(session, message)
            elif isinstance(message, SecAggEnd):
                await self._commit(bucket_id, None, None)
                self._log.info("secure bucket %s %s%s", bucket_id, message.outcome,
                               f": {message.reason}" if message.reason else "")
        except SecAggError as exc:
            self._refused(exc.problem.value, f"bucket {bucket_id}: {exc.detail}")

    async def _on_relay(self, session: MemberSession, relay: SecAggRelay) -> None:
        if session.relayed and session.neighbour_keys == relay.keys:
            return  # sent again for a member that might have missed it
        session.on_relay(relay, self._seal())
        await self._commit(relay.bucket_id, session, None)
        async with self._relayed:
            self._relayed.notify_all()

    async def _on_unmask(self, session: MemberSession, request: SecAggUnmask) -> None:
        answered = session.answered
        if answered is not None and answered == [request.request, sorted(request.survivors),
                                                 sorted(request.dropped)]:
            self._stats.duplicates += 1  # re-sent: the answer is already in the outbox
            return
        reveal = session.on_unmask(request)
        await self._commit(request.bucket_id, session, reveal)
        self._log.info("secure bucket %s: %d shares revealed", request.bucket_id,
                       len(reveal.shares))

    def _refused(self, why: str, detail: str) -> None:
        self._stats.refused[f"secagg_{why}"] += 1
        self._log.warning("secure bucket message refused: %s", detail)
        self._changed.fire()
