"""Rotation of the orchestrator's own key: the request, the announcement, the retirement.

``fedmq orchestrator rotate-key`` calls :func:`request_rotation`: a new key is written (0600)
as ``orchestrator.key.next`` and the request recorded in the store. The running service's
``keys`` task (:class:`KeyWatch`; or the next start, for a request made while it was down)
then signs a ``KeyAnnouncement`` with the old key, the new key's proof inside, records it,
switches the key files (:func:`~.keyring.settle`), signs everything from then on with the new
key, publishes the announcement retained on ``fl/{fed}/model/key`` and republishes the model
under the new key. During the grace period the old key still opens updates sealed to it; when
the grace ends its file is destroyed and ``key_retired`` audited. The announcement stays
retained: a device that missed the whole grace verifies it with the key it pins and stops
with one clear line instead of refusing every message in silence. A second rotation is refused
until the first has retired the old key; it then announces on ``fl/{fed}/model/key`` and moves
each earlier announcement to ``fl/{fed}/model/key/{generation}`` (still retained), so a device
that missed both still finds the announcement its key signed, and the same line.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.clock import Clock
from orchestrator.link.keyring import (
    KeySet,
    Rotation,
    RotationError,
    next_path,
    retire_files,
    settle,
)
from orchestrator.link.keys import create_key, load_key, load_or_create_key
from orchestrator.link.mqtt import NotConnectedError
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, Store
from orchestrator.store.state_keys import StateKey
from schemas.messages import KeyAnnouncement
from schemas.signing import announcement_proof, key_id

__all__ = ["KeyWatch", "load_rotation", "request_rotation"]

log = logging.getLogger(__name__)

_POLL_S = 1.0


async def load_rotation(store: Store) -> Rotation | None:
    raw = await store.get_server_state(StateKey.KEY_ROTATION)
    return None if raw is None else Rotation.from_bytes(raw)


async def request_rotation(store: Store, key_path: Path, *, grace_s: float, actor: str,
                           now_ms: int) -> Rotation:
    """Write the next key and record the request; ``RotationError`` while another rotation
    is still in progress (its grace has not ended)."""
    if grace_s <= 0:
        raise RotationError(f"the grace period must be positive, got {grace_s:g} s")
    previous = await load_rotation(store)
    if previous is not None and previous.in_progress:
        raise RotationError(_in_progress(previous))
    current = await asyncio.to_thread(load_or_create_key, key_path)
    nxt = next_path(key_path)
    await asyncio.to_thread(nxt.unlink, missing_ok=True)  # a request that was never recorded
    new = await asyncio.to_thread(create_key, nxt)
    rotation = Rotation(
        request_id=os.urandom(8).hex(), phase="requested", actor=actor, requested_ms=now_ms,
        grace_s=grace_s, old_public=bytes(current.verify_key).hex(),
        new_public=bytes(new.verify_key).hex(),
        generation=previous.generation + 1 if previous is not None else 1,
        earlier=(*previous.earlier, previous.announcement) if previous is not None else ())
    await store.put_server_state({StateKey.KEY_ROTATION: rotation.to_bytes()})
    await store.append_audit(AuditEvent("key_rotation_requested", actor, detail={
        "request_id": rotation.request_id, "old_key": key_id(bytes(current.verify_key)),
        "new_key": key_id(bytes(new.verify_key)), "grace_s": grace_s}))
    return rotation


def _in_progress(rotation: Rotation) -> str:
    new = key_id(bytes.fromhex(rotation.new_public))
    if rotation.phase == "requested":
        return (f"a rotation of the orchestrator key is already requested (new key {new}); "
                "the orchestrator announces it when it runs, and a new rotation may follow "
                "once that one's grace has ended")
    retires = datetime.fromtimestamp(rotation.retire_after_ms / 1000, UTC)
    return (f"a rotation of the orchestrator key is already announced (new key {new}); the "
            f"old key retires at {retires:%Y-%m-%d %H:%M:%S} UTC: rotate again after that")


class KeyWatch:
    """The ``keys`` task: carries a rotation through its phases and keeps its announcement
    retained (again after every reconnect: :meth:`republish`)."""

    def __init__(self, *, store: Store, keys: KeySet, key_path: Path, outbound: Outbound,
                 set_unseal: Callable[[KeySet], None], republish_model: Callable[[], None],
                 clock: Clock, counters: MutableMapping[str, int],
                 interval_s: float = _POLL_S) -> None:
        self._store = store
        self.keys = keys
        self._key_path = key_path
        self._outbound = outbound
        self._set_unseal = set_unseal
        self._republish_model = republish_model
        self._clock = clock
        self._counters = counters
        self._interval_s = interval_s
        self._due = True
        self.rotation: Rotation | None = None

    def republish(self) -> None:
        """The link (re)connected: publish the announcement again."""
        self._due = True

    async def run(self) -> None:
        while True:
            await self.step()
            await self._clock.sleep(self._interval_s)

    async def step(self) -> None:
        """One look at the record: announce, retire, or (re)publish as due."""
        rotation = self.rotation = await load_rotation(self._store)
        if rotation is None:
            return
        if rotation.phase == "requested":
            rotation = self.rotation = await self._announce(rotation)
        elif rotation.phase == "announced" and self._clock.wall_ms() >= rotation.retire_after_ms:
            rotation = self.rotation = await self._retire(rotation)
        if self._due and rotation.announcement:
            await self._publish(rotation)

    async def _announce(self, rotation: Rotation) -> Rotation:
        old = self.keys.current
        if bytes(old.verify_key).hex() != rotation.old_public:
            raise RotationError("the key rotation was requested for another current key")
        new = await asyncio.to_thread(load_key, next_path(self._key_path))
        now = self._clock.wall_ms()
        message = KeyAnnouncement(
            new_public_key=bytes(new.verify_key), old_public_key=bytes(old.verify_key),
            proof=announcement_proof(new, fed=self._outbound.topics.fed,
                                     old_public_key=bytes(old.verify_key)),
            not_before_ms=now, retire_after_ms=now + int(rotation.grace_s * 1000),
            generation=rotation.generation)
        payload = await self._outbound.sign(message)  # by the old key: it vouches for the new
        rotation = rotation.announced(payload, now_ms=now)
        await self._store.put_server_state({StateKey.KEY_ROTATION: rotation.to_bytes()})
        # published before anything is signed by the new key, so a reader subscribed to the
        # key topic (an agent, an operator tool) learns the key before it sees it sign
        self._due = True
        await self._publish(rotation)
        self._use(await asyncio.to_thread(settle, self._key_path, rotation))
        await self._store.append_audit(AuditEvent("key_rotated", rotation.actor, detail={
            "request_id": rotation.request_id, "old_key": key_id(message.old_public_key),
            "new_key": key_id(message.new_public_key),
            "retire_after_ms": rotation.retire_after_ms, "generation": rotation.generation}))
        log.info("orchestrator key rotated to %s; the old key %s retires in %g s",
                 key_id(message.new_public_key), key_id(message.old_public_key),
                 rotation.grace_s)
        self._counters["key_rotations"] += 1
        self._republish_model()
        return rotation

    async def _retire(self, rotation: Rotation) -> Rotation:
        await asyncio.to_thread(retire_files, self._key_path)
        rotation = rotation.retired(now_ms=self._clock.wall_ms())
        await self._store.put_server_state({StateKey.KEY_ROTATION: rotation.to_bytes()})
        self._use(KeySet(self.keys.current))
        old = bytes.fromhex(rotation.old_public)
        await self._store.append_audit(AuditEvent("key_retired", "orchestrator", detail={
            "request_id": rotation.request_id, "old_key": key_id(old),
            "new_key": key_id(bytes.fromhex(rotation.new_public))}))
        log.info("orchestrator key %s retired", key_id(old))
        return rotation

    def _use(self, keys: KeySet) -> None:
        self.keys = keys
        self._outbound.key = keys.current
        self._set_unseal(keys)

    async def _publish(self, rotation: Rotation) -> None:
        """The announcement, and the earlier ones on their own topics (retained)."""
        topics = self._outbound.topics
        retained = [(topics.model_key_earlier(g), payload)
                     for g, payload in enumerate(rotation.earlier, start=1)]
        retained.append((topics.model_key, rotation.announcement))
        try:
            for topic, payload in retained:
                await self._outbound.publish(topic, bytes.fromhex(payload), qos=1, retain=True)
        except NotConnectedError:
            return  # the next connect calls republish()
        self._due = False
