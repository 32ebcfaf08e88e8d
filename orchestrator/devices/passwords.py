"""Broker password rotation: the new password reaches the device before the broker wants it.

``fedmq device rotate ID --password`` (another process) records a request under
``StateKey.PASSWORD_REQUESTS``. The running service, on every registry poll
(:meth:`PasswordRotations.sync`):

1. makes a new password for each requested device (kept in the store, which is the
   orchestrator's alone, until the rotation ends) and sends a signed
   ``Control(new_password)`` whose ``params["sealed"]`` is the password sealed to the
   device's Ed25519 key (converted to X25519): the broker and other devices see ciphertext.
   It is sent again every ``resend_s`` until the device answers; the old password still
   works meanwhile, so an offline device loses nothing by being away.
2. On the device's ``PasswordReceipt`` (signed with its key, on ``up/{dev}/rotate``, naming the
   SHA-256 of the password: it could open it and holds it durably), the broker's entry is
   switched to the new password and the broker reloaded — which drops the device's
   connection made with the old one; the agent reconnects with the new — audited
   ``password_rotated``, and ``Control(password_rotated)`` tells the device to forget the old.
3. A device that has not answered ``federation.password_grace_s`` after the first offer gets
   the new password anyway (audited ``password_rotated`` with reason ``grace_expired``): the
   old one is refused from then on, and the device, when it returns, is refused by the
   broker with one clear error line until it is given a new bundle.

A receipt for a rotation already finished (the device missed the confirmation) is answered
with ``Control(password_rotated)`` again and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass

from orchestrator.broker import PasswordFile, generate_password
from orchestrator.clock import Clock
from orchestrator.devices.registry import Registry
from orchestrator.devices.rotation import record_request, requested
from orchestrator.errors import OrchestratorError
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, Store
from orchestrator.store.state_keys import StateKey
from schemas.errors import FedmqError, Reason
from schemas.messages import Control, ControlAction, PasswordReceipt
from schemas.signing import password_digest, seal_password
from schemas.topics import DownKind

__all__ = ["CONFIRMED", "GRACE_EXPIRED", "PASSWORD_ROTATED", "PasswordRotationError",
           "PasswordRotations", "request_password_rotation"]

log = logging.getLogger(__name__)

PASSWORD_ROTATED = "password_rotated"
"""The audit event of a switched broker password (reason ``confirmed`` or ``grace_expired``)."""
CONFIRMED = "confirmed"
GRACE_EXPIRED = "grace_expired"


class PasswordRotationError(OrchestratorError):
    """``fedmq device rotate --password`` cannot ask this device (one line)."""


async def request_password_rotation(store: Store, device_id: str, *, managed: bool,
                                    now_ms: int, actor: str = "cli") -> None:
    """Record an operator's request for a new broker password for ``device_id`` (audited).
    ``managed``: fedmq writes the broker's password file (else there is nothing to rotate)."""
    if not managed:
        raise PasswordRotationError("the broker's password file is not managed by fedmq "
                                    "(broker.password_file); rotate the password there")
    await record_request(store, StateKey.PASSWORD_REQUESTS, device_id, now_ms=now_ms,
                         what="get a new password", error=PasswordRotationError)
    await store.append_audit(AuditEvent("password_rotation_requested", actor,
                                        device=device_id))


@dataclass(slots=True)
class _Rotation:
    requested_ms: int
    password: str = ""
    """The new password until the switch ("" after it: only its digest is kept)."""
    digest: str = ""
    offered_ms: int = 0
    sent_ms: int = 0
    done: bool = False


class PasswordRotations:
    """The service's side of broker password rotation (registry poll and control lane)."""

    def __init__(self, *, store: Store, outbound: Outbound, registry: Registry,
                 passwords: PasswordFile | None, reload: Callable[[], object],
                 grace_s: float, resend_s: float, clock: Clock,
                 counters: MutableMapping[str, int]) -> None:
        """``reload``: makes the broker reread its password file (best effort)."""
        self._store = store
        self._outbound = outbound
        self._registry = registry
        self._passwords = passwords
        self._reload = reload
        self._grace_ms = int(grace_s * 1000)
        self._resend_ms = int(resend_s * 1000)
        self._clock = clock
        self._counters = counters
        self._state: dict[str, _Rotation] | None = None
        self._lock = asyncio.Lock()  # the registry task and the control lanes both come here

    async def _load(self) -> dict[str, _Rotation]:
        if self._state is None:
            raw = await self._store.get_server_state(StateKey.PASSWORD_ROTATIONS)
            state: dict[str, _Rotation] = {}
            try:
                for device, v in (json.loads(raw) if raw else {}).items():
                    state[str(device)] = _Rotation(**v)
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("stored password rotations unreadable (%s); starting afresh", exc)
            self._state = state
        return self._state

    async def _save(self) -> None:
        blob = json.dumps({d: asdict(r) for d, r in (await self._load()).items()},
                          sort_keys=True).encode()
        await self._store.put_server_state({StateKey.PASSWORD_ROTATIONS: blob})

    async def sync(self) -> None:
        """Offer new passwords to requested devices; switch those whose grace is over."""
        async with self._lock:
            requests = requested(await self._store.get_server_state(StateKey.PASSWORD_REQUESTS))
            state = await self._load()
            now = self._clock.wall_ms()
            changed = False
            for device, requested_ms in sorted(requests.items()):
                entry = state.get(device)
                if entry is None or entry.requested_ms != requested_ms:
                    entry = state[device] = _Rotation(requested_ms)
                view = self._registry.get(device)
                if entry.done or view is None or view.status != "active" \
                        or view.public_key is None:
                    continue  # revoked or gone meanwhile: revocation deals with the login
                if not entry.password:
                    entry.password = generate_password()
                    entry.digest = password_digest(entry.password).hex()
                    entry.offered_ms = now
                if now >= entry.offered_ms + self._grace_ms:
                    await self._switch(device, entry, GRACE_EXPIRED)
                elif not entry.sent_ms or now >= entry.sent_ms + self._resend_ms:
                    await self._offer(device, entry, view.public_key)
                    entry.sent_ms = now
                else:
                    continue
                changed = True
            if changed:
                await self._save()

    async def _offer(self, device: str, entry: _Rotation, public_key: bytes) -> None:
        sealed = seal_password(entry.password, public_key)
        await self._outbound.send(device, DownKind.CONTROL, Control(
            ControlAction.NEW_PASSWORD, "broker password rotation", {"sealed": sealed}))
        self._counters["password.offered"] += 1

    async def received(self, device: str, receipt: PasswordReceipt) -> None:
        """The device holds the new password (a verified ``PasswordReceipt``)."""
        async with self._lock:
            entry = (await self._load()).get(device)
            if entry is None or not entry.digest or not hmac.compare_digest(
                    bytes.fromhex(entry.digest), receipt.password_sha256):
                raise FedmqError(Reason.INVALID_FIELD, "receipt names no password offered")
            if entry.done:
                self._counters["password.reconfirmed"] += 1
            else:
                await self._switch(device, entry, CONFIRMED)
                await self._save()
        await self._outbound.send(device, DownKind.CONTROL, Control(
            ControlAction.PASSWORD_ROTATED, "broker password rotated"))

    async def _switch(self, device: str, entry: _Rotation, why: str) -> None:
        switched = False
        passwords = self._passwords
        if passwords is not None and passwords.exists() and device in passwords.users():
            # PBKDF2 and a file rewrite: off the loop
            await asyncio.to_thread(passwords.set, device, entry.password)
            self._reload()
            switched = True
        entry.password, entry.done = "", True
        await self._store.append_audit(AuditEvent(
            PASSWORD_ROTATED, "orchestrator", device=device, reason=why,
            detail={"password_file": switched, "offered_ms": entry.offered_ms}))
        self._counters[f"password.{why}"] += 1
        log.info("device %s: broker password switched (%s)", device, why)
