"""Device key rotation: a new Ed25519 key, vouched for by the old one, switched to only once
the orchestrator confirms it.

A rotation starts on the schedule (``AgentConfig.key_rotation_s`` since the last one; off by
default) or when the orchestrator asks (``Control(rotate_key)``). The new key is kept durably
*pending* in the state file; until the orchestrator confirms, the device goes on signing with
its old key and sends ``KeyRotation`` (signed with the old key, proof signed with the new) on
``up/{dev}/rotate`` on every connection and every ``key_rotation_retry_s``. The confirmation
is a signed ``Control(key_rotated)`` naming the new public key: then, in one transaction, the
new key replaces the old and every outbox entry is re-signed with it (same seq, due at once),
so an update signed with the old key and refused after the switch is sent again and counted
once. A device that went offline after sending ``KeyRotation`` still holds the pending key when
it returns, sends ``KeyRotation`` again and is confirmed again (idempotently); a device whose
rotation the orchestrator never saw keeps signing with its old key, which stays valid.

The broker password rotates through the same loop: ``Control(new_password)`` hands the
sealed password to :class:`~edge_agent.login.BrokerLogin`, and the loop sends the
``PasswordReceipt`` (again whenever the orchestrator offers it again: a lost receipt is
answered by the next offer); ``Control(password_rotated)`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgpack
from nacl.signing import SigningKey

from schemas import Control, ControlAction, KeyRotation, PasswordReceipt, key_id, rotation_proof

from .clock import Clock, wait_for, wall_ms
from .config import AgentConfig
from .errors import NotConnectedError
from .login import BrokerLogin
from .outbox import Outbox
from .session import PUBLISH_RETRY_S, Session
from .shared import AgentStats, Pulse
from .signer import Signer
from .state import LocalState
from .tracker import ActivityTracker

__all__ = ["KeyRotator"]

_PENDING = "pending_key"
_ROTATED_MS = "key_rotated_ms"


class KeyRotator:
    """The agent's side of key rotation: ``load()``, then ``run(session)`` as a loop."""

    def __init__(self, *, state: LocalState, signer: Signer, outbox: Outbox, topic: str,
                 tracker: ActivityTracker, config: AgentConfig, clock: Clock,
                 stats: AgentStats, changed: Pulse, status_due: asyncio.Event,
                 outbox_due: asyncio.Event, logger: logging.Logger,
                 login: BrokerLogin | None = None) -> None:
        self._state = state
        self.login = login
        self._receipt: bytes | None = None
        """The digest of a new broker password still to be confirmed to the orchestrator."""
        self._signer = signer
        self._outbox = outbox
        self._topic = topic
        self._tracker = tracker
        self._interval_s = config.key_rotation_s
        self._retry_s = config.key_rotation_retry_s
        self._clock = clock
        self._stats = stats
        self._changed = changed
        self._status_due = status_due
        self._outbox_due = outbox_due
        self._log = logger
        self.wake = asyncio.Event()
        """Set to make the loop look again now (on every new connection, too)."""
        self.pending: SigningKey | None = None
        self._rotated_ms = 0

    async def load(self) -> None:
        seed = await self._state.get(_PENDING)
        self.pending = SigningKey(seed) if isinstance(seed, bytes) and len(seed) == 32 else None
        rotated = await self._state.get(_ROTATED_MS)
        if not isinstance(rotated, int):
            # the schedule counts from the first boot that knows about it, not from 1970
            rotated = wall_ms(self._clock)
            await self._state.put(_ROTATED_MS, rotated)
        self._rotated_ms = rotated

    def due_in_s(self, now_ms: int) -> float | None:
        """Seconds until the schedule starts a rotation (0: now; None: no schedule)."""
        if self._interval_s is None:
            return None
        return max(0.0, (self._rotated_ms + self._interval_s * 1000 - now_ms) / 1000)

    async def begin(self, why: str) -> None:
        """Make a new key pending (durably) unless one already is; the loop sends it."""
        if self.pending is None:
            key = SigningKey.generate()
            await self._state.put(_PENDING, bytes(key))
            self.pending = key
            self._log.info("key rotation started (%s): new key %s pending", why,
                           key_id(bytes(key.verify_key)))
        self.wake.set()

    async def on_control(self, control: Control) -> None:
        """``rotate_key`` (start, or send again), ``key_rotated`` (switch), or the broker
        password's ``new_password`` and ``password_rotated``."""
        if control.action in (ControlAction.NEW_PASSWORD, ControlAction.PASSWORD_ROTATED):
            await self._on_password(control)
            return
        if control.action is ControlAction.ROTATE_KEY:
            await self.begin(control.reason or "requested by the orchestrator")
            return
        public = control.params.get("public_key")
        if not isinstance(public, bytes):
            self._log.warning("key_rotated without a public key; ignored")
            return
        await self.confirmed(public)

    async def _on_password(self, control: Control) -> None:
        if self.login is None:
            self._log.warning("control %s: no broker login to rotate; ignored",
                              control.action.value)
            return
        if control.action is ControlAction.PASSWORD_ROTATED:
            await self.login.rotated()
            return
        sealed = control.params.get("sealed")
        if not isinstance(sealed, bytes):
            self._log.warning("new_password without a sealed password; ignored")
            return
        digest = await self.login.offer(sealed, (self._state.signing_key, self.pending))
        if digest is not None:
            self._receipt = digest
            self.wake.set()

    async def confirmed(self, public_key: bytes) -> None:
        """The orchestrator registered ``public_key``: switch to it if it is the pending key."""
        pending = self.pending
        if pending is None or bytes(pending.verify_key) != public_key:
            if bytes(self._state.signing_key.verify_key) != public_key:
                self._log.warning("key_rotated for key %s, which is not ours; ignored",
                                  key_id(public_key))
            return  # else: a second confirmation of the switch already made
        now = wall_ms(self._clock)
        async with self._state.rekeying(pending) as tx:
            resigned = await Outbox.resign_all(tx, pending)
            await tx.execute("DELETE FROM meta WHERE key = ?", (f"v:{_PENDING}",))
            await tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (f"v:{_ROTATED_MS}", msgpack.packb(now)))
        self.pending, self._rotated_ms = None, now
        self._stats.keys_rotated += 1
        self._log.info("key rotated: now signing with %s; %d outbox entr%s re-signed",
                       key_id(public_key), resigned, "y" if resigned == 1 else "ies")
        self._status_due.set()
        self._outbox_due.set()
        self.wake.set()  # the schedule starts again from now
        self._changed.fire()

    async def run(self, session: Session) -> None:
        while True:
            await session.wait_connected()
            # only a registered, active key rotates (not before enrollment, not once revoked)
            await self._tracker.wait_for(lambda a: a.may_send_updates and a.revoked is None)
            self.wake.clear()
            wait = await self._step(session)
            with contextlib.suppress(TimeoutError):
                await wait_for(self._clock, self.wake.wait(), wait)

    async def _step(self, session: Session) -> float | None:
        """One look: start a scheduled rotation, send a pending one; returns how long to
        wait before the next look (None: until woken)."""
        if self._receipt is not None:
            try:
                await session.publish(self._topic, await self._signer.sign(
                    PasswordReceipt(self._receipt)), qos=1)
            except NotConnectedError:
                return PUBLISH_RETRY_S
            self._receipt = None
            self._stats.password_receipts += 1
        due = self.due_in_s(wall_ms(self._clock))
        if self.pending is None and due is not None and due <= 0:
            await self.begin("scheduled")
        if self.pending is None:
            return due
        try:
            await self._send(session, self.pending)
        except NotConnectedError:
            return PUBLISH_RETRY_S
        return self._retry_s

    async def _send(self, session: Session, new: SigningKey) -> None:
        old = bytes(self._state.signing_key.verify_key)
        message = KeyRotation(bytes(new.verify_key), rotation_proof(new, old))
        await session.publish(self._topic, await self._signer.sign(message), qos=1)
        self._stats.rotations_sent += 1
        self._log.info("key rotation sent (new key %s, signed by %s)",
                       key_id(bytes(new.verify_key)), key_id(old))
        self._changed.fire()
