"""The orchestrator key(s) this device pins, across a rotation of the orchestrator's key.

The bundle's key is pinned at first boot; the state file keeps the ring from then on:
``current`` (what the device trusts and seals to), ``previous`` (still accepted during a
rotation, until a message signed by ``current`` arrives or the announced retirement time
passes) and ``history`` (keys pinned before, so an old bundle is recognised as older).

A ``KeyAnnouncement`` (retained on ``fl/{fed}/model/key``) is adopted only when it verifies
with the current key, names this federation and the orchestrator, carries a valid proof by
the new key, and its old key's retirement is still ahead; the new ring is saved before it is
used. One whose retirement has passed means this device missed the whole grace period:
:class:`KeyLostError`, which the agent reports as one clear line and ends on. Announcements of
earlier rotations (``fl/{fed}/model/key/{generation}``) are read the same way, so a device that
missed several rotations finds the one signed by the key it pins; one signed by a key it never
pinned (it enrolled later) is nothing to act on and passes quietly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from nacl.public import PublicKey
from nacl.signing import VerifyKey

from schemas import DEFAULT_LIMITS, FedmqError, Limits, Opened, Reason, SignatureError
from schemas.envelope import check_header, decode_body, seal_key, verify
from schemas.messages import KeyAnnouncement
from schemas.signing import check_announcement_proof, key_id
from schemas.topics import ORCHESTRATOR_SENDER

from .clock import Clock, wall_ms
from .state import LocalState

__all__ = ["KeyLostError", "OrchestratorKeys", "Ring"]

_STATE_KEY = "orch_keys"


class KeyLostError(FedmqError):
    """The orchestrator's key changed and this device missed the announcement."""

    def __init__(self, new_key: bytes, retired_ms: int) -> None:
        super().__init__(Reason.BAD_SIGNATURE, "")
        self.line = (f"the orchestrator's key changed (to {key_id(new_key)}) and this device "
                     f"missed the announcement (the old key retired at {retired_ms} ms): "
                     "re-enroll it with a new bundle")

    def __str__(self) -> str:
        return self.line


@dataclass(frozen=True, slots=True)
class Ring:
    current: bytes
    previous: bytes | None = None
    retire_ms: int = 0
    history: tuple[bytes, ...] = field(default=())

    def to_record(self) -> dict[str, Any]:
        return {"current": self.current, "previous": self.previous,
                "retire_ms": self.retire_ms, "history": list(self.history)}

    @classmethod
    def from_record(cls, raw: Any) -> Ring:
        return cls(bytes(raw["current"]), raw.get("previous"), int(raw.get("retire_ms", 0)),
                   tuple(bytes(k) for k in raw.get("history", ())))

    def knows(self, key: bytes) -> bool:
        return key == self.current or key == self.previous or key in self.history


class OrchestratorKeys:
    def __init__(self, state: LocalState, bundle_key: bytes, *, fed: str, clock: Clock,
                 logger: logging.Logger) -> None:
        self._state = state
        self._fed = fed
        self._clock = clock
        self._log = logger
        self.ring = Ring(bundle_key)
        self._bundle_key = bundle_key
        self._current_seen = False
        self.on_adopt: Callable[[], None] | None = None
        """Called after a new key is pinned (the agent asks for the retained model again)."""

    async def load(self) -> None:
        raw = await self._state.get(_STATE_KEY)
        stored = Ring.from_record(raw) if raw is not None else None
        if stored is not None and stored.knows(self._bundle_key):
            self.ring = stored
        elif stored is not None:
            self._log.warning("the bundle pins orchestrator key %s, not the adopted %s: "
                              "using the bundle's", key_id(self._bundle_key),
                              key_id(stored.current))
            await self._save(Ring(self._bundle_key))
        else:
            await self._save(Ring(self._bundle_key))

    @property
    def current(self) -> VerifyKey:
        return VerifyKey(self.ring.current)

    def seal_key(self) -> PublicKey:
        return seal_key(self.current)

    def verify(self, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Opened:
        """Verify with the current key, or (during a rotation) the previous one; a message
        signed by the current key ends the previous key's acceptance (see :meth:`settle`)."""
        try:
            opened = verify(data, self.current, limits)
        except SignatureError:
            ring = self.ring
            if ring.previous is None or wall_ms(self._clock) >= ring.retire_ms:
                raise
            return verify(data, VerifyKey(ring.previous), limits)
        if self.ring.previous is not None:
            self._current_seen = True
        return opened

    async def settle(self) -> None:
        """Drop the previous key once the current one has signed something."""
        if self._current_seen and self.ring.previous is not None:
            self._current_seen = False
            old = self.ring.previous
            await self._save(replace(self.ring, previous=None, retire_ms=0))
            self._log.info("orchestrator key %s no longer accepted", key_id(old))

    async def receive(self, payload: bytes, *, earlier: bool = False) -> bool:
        """Handle a ``KeyAnnouncement`` (``earlier``: of a rotation before the latest); True
        when a new key was pinned."""
        try:
            opened = self._opened(payload)
        except SignatureError:
            if not earlier:
                raise
            self._log.debug("an earlier key announcement not signed by a key this device pins")
            return False
        if opened is None:
            return False
        check_header(opened.header, fed=self._fed, sender=ORCHESTRATOR_SENDER,
                     now_ms=wall_ms(self._clock), recipient="")
        message = decode_body(opened, KeyAnnouncement)
        if message.new_public_key == self.ring.current:
            return False
        if message.old_public_key != self.ring.current:
            raise FedmqError(Reason.INVALID_FIELD, "announcement names another old key")
        if not check_announcement_proof(message.new_public_key, message.proof, fed=self._fed,
                                        old_public_key=message.old_public_key):
            raise FedmqError(Reason.BAD_SIGNATURE, "the new key's proof does not verify")
        if wall_ms(self._clock) >= message.retire_after_ms:
            raise KeyLostError(message.new_public_key, message.retire_after_ms)
        ring = self.ring
        await self._save(Ring(message.new_public_key, ring.current, message.retire_after_ms,
                              (*ring.history, ring.current)))
        self._log.info("orchestrator key %s adopted (announced by %s, which is accepted "
                       "until the new key signs or it retires)",
                       key_id(message.new_public_key), key_id(message.old_public_key))
        if self.on_adopt is not None:
            self.on_adopt()
        return True

    def _opened(self, payload: bytes) -> Opened | None:
        """The announcement verified by the current key; None for an old one (signed by a
        key pinned before, nothing to do)."""
        try:
            return verify(payload, self.current)
        except SignatureError:
            pass
        for old in (self.ring.previous, *self.ring.history):
            if old is None:
                continue
            try:
                verify(payload, VerifyKey(old))
            except SignatureError:
                continue
            return None
        raise SignatureError("the key announcement is not signed by a key this device pins")

    async def _save(self, ring: Ring) -> None:
        await self._state.put(_STATE_KEY, ring.to_record())
        self.ring = ring
