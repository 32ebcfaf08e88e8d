"""Revocation that reaches the device: ``Control(revoke)`` first, the broker credential after.

``fedmq device revoke ID`` (another process) marks the device revoked — ingest refuses its key
from then on — and leaves its broker credential in place. The running service then, on every
registry poll (:meth:`Revocations.sync`):

1. publishes a signed ``Control(revoke)`` **retained** on the device's control topic, so a
   device that is offline gets it when it next connects and subscribes (QoS 1, and queued on
   its persistent session too; a second copy is a duplicate to its replay window);
2. removes the device's broker credential (password file, broker reload), clears the retained
   order and audits ``credential_removed`` as soon as the device confirms — a status signed
   with its key whose reason is ``revoked`` (:meth:`confirmed`) — or once
   ``federation.revoke_grace_s`` has passed since the order was published, whichever first.

When the order was published is kept in the store (``StateKey.REVOCATIONS``), so a restart
neither sends it again nor restarts the grace period. A device revoked while no service ran
is handled the same way at the next start. What is still to do is read from the password
file (a revoked device whose username is still in it); without a managed password file the
steps run the same and the audit says the credential is not ours to remove.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from orchestrator.broker import PasswordFile
from orchestrator.clock import Clock
from orchestrator.devices.registry import Registry
from orchestrator.link.mqtt import NotConnectedError
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, Store
from orchestrator.store.state_keys import StateKey
from schemas.messages import Control, ControlAction
from schemas.topics import DownKind

__all__ = ["CONFIRMED", "GRACE_EXPIRED", "Revocations"]

log = logging.getLogger(__name__)

CONFIRMED = "confirmed"
"""``credential_removed`` reason: the device said it was revoked."""
GRACE_EXPIRED = "grace_expired"
"""``credential_removed`` reason: the grace period passed without a word from the device."""


@dataclass(slots=True)
class _Entry:
    sent_ms: int
    done: bool = False


class Revocations:
    """The service's side of revocation (one per service, driven by the registry watch)."""

    def __init__(self, *, registry: Registry, store: Store,
                 outbound: Outbound, passwords: PasswordFile | None,
                 reload: Callable[[], object], grace_s: float, clock: Clock,
                 counters: MutableMapping[str, int]) -> None:
        """``reload``: makes the broker reread its password file (best effort)."""
        self._registry = registry
        self._store = store
        self._outbound = outbound
        self._passwords = passwords
        self._reload = reload
        self._grace_ms = int(grace_s * 1000)
        self._clock = clock
        self._counters = counters
        self._entries: dict[str, _Entry] | None = None
        self._lock = asyncio.Lock()

    async def _load(self) -> dict[str, _Entry]:
        if self._entries is None:
            raw = await self._store.get_server_state(StateKey.REVOCATIONS)
            entries: dict[str, _Entry] = {}
            if raw:
                try:
                    for device, value in json.loads(raw).items():
                        entries[str(device)] = _Entry(int(value["sent_ms"]),
                                                      bool(value.get("done", False)))
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    log.warning("stored revocations unreadable (%s); starting afresh", exc)
            self._entries = entries
        return self._entries

    async def _save(self) -> None:
        entries = await self._load()
        blob = json.dumps({d: {"sent_ms": e.sent_ms, "done": e.done}
                           for d, e in entries.items()}, sort_keys=True).encode()
        await self._store.put_server_state({StateKey.REVOCATIONS: blob})

    def pending(self) -> list[str]:
        """Revoked devices whose credential is still to be removed (ids, sorted)."""
        entries = self._entries or {}
        waiting = [v.device_id for v in self._registry.all() if v.status == "revoked"
                   and not (entries.get(v.device_id) or _Entry(0)).done]
        if not waiting or self._passwords is None:
            return sorted(waiting)  # no password file of ours: only ``done`` tells
        users = set(self._passwords.users()) if self._passwords.exists() else set()
        return sorted(d for d in waiting if d in users)

    async def sync(self) -> None:
        """Tell every newly revoked device, and finish those whose grace period is over."""
        async with self._lock:  # the registry task and the control lanes both come here
            await self._sync()

    async def _sync(self) -> None:
        entries = await self._load()
        now = self._clock.wall_ms()
        for device in self.pending():
            entry = entries.get(device)
            if entry is None:
                await self._notify(device)
            elif now >= entry.sent_ms + self._grace_ms:
                await self._finish(device, GRACE_EXPIRED)

    async def confirmed(self, device: str) -> None:
        """The device acknowledged its revocation (a signed status saying so)."""
        self._counters["revoke.receipts"] += 1
        async with self._lock:
            entry = (await self._load()).get(device)
            if entry is not None and not entry.done and device in self.pending():
                await self._finish(device, CONFIRMED)

    async def _notify(self, device: str) -> None:
        view = self._registry.get(device)
        reason = await self._revoke_reason(device)
        payload = await self._outbound.sign(Control(ControlAction.REVOKE, reason), to=device)
        topic = self._outbound.topics.down(device, DownKind.CONTROL)
        try:
            await self._outbound.publish(topic, payload, qos=1, retain=True)
        except NotConnectedError:
            self._counters["revoke.deferred"] += 1
            return  # the next poll tries again; the grace period starts once it is out
        (await self._load())[device] = _Entry(self._clock.wall_ms())
        await self._save()
        self._counters["revoke.sent"] += 1
        log.info("device %s (%s): Control(revoke) sent; credential removed on its "
                 "confirmation or in %d s", device, view.role if view else "?",
                 self._grace_ms // 1000)

    async def _revoke_reason(self, device: str) -> str:
        rows = await self._store.list_audit(device=device, event="revoked", limit=1)
        return (rows[0].reason if rows and rows[0].reason else "") or "revoked"

    async def _finish(self, device: str, why: str) -> None:
        entries = await self._load()
        entry = entries.setdefault(device, _Entry(self._clock.wall_ms()))
        removed = False
        if self._passwords is not None and self._passwords.exists() \
                and device in self._passwords.users():
            self._passwords.remove(device)
            self._reload()
            removed = True
        try:  # an empty retained payload clears the order; the device no longer needs it
            await self._outbound.publish(self._outbound.topics.down(device, DownKind.CONTROL),
                                         b"", qos=1, retain=True)
        except NotConnectedError:
            self._counters["revoke.retained_left"] += 1
        entry.done = True
        await self._save()
        await self._store.append_audit(AuditEvent(
            "credential_removed", "orchestrator", device=device, reason=why,
            detail={"sent_ms": entry.sent_ms, "grace_s": self._grace_ms / 1000,
                    "password_file": removed}))
        self._counters[f"revoke.{why}"] += 1
        log.info("device %s: broker credential %s (%s)", device,
                 "removed" if removed else "not managed here", why)
