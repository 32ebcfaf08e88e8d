"""Device key rotation, the orchestrator's side.

A device sends ``KeyRotation`` on ``up/{dev}/rotate`` (a control-lane kind): the envelope must
verify with its registered key, be fresh in its replay window, and carry a proof signed by the
new key over the old public key. Then the key is replaced in the store with a ``key_rotated``
audit row (old and new key), atomically, the in-memory registry follows, the seq is marked in
the device's window (the same window: seqs go on), and a signed ``Control(key_rotated)`` naming
the new key tells the device to switch. From then on the old key is refused (``bad_signature``)
everywhere, with one exception: a ``KeyRotation`` signed by the key the last rotation retired
and naming the current key is the device asking again for a confirmation it missed (it went
offline before it arrived): it is answered with the same ``Control(key_rotated)`` and changes
nothing.

``fedmq device rotate ID`` (another process) records a request under
``StateKey.ROTATE_REQUESTS``; :meth:`RotationRequests.sync` (each registry poll) sends
``Control(rotate_key)`` to each requested device, again every ``resend_s`` until it rotates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Protocol

from nacl.signing import VerifyKey

from orchestrator.clock import Clock
from orchestrator.devices.registry import DeviceView, Registry
from orchestrator.devices.replay_book import ReplayBook
from orchestrator.devices.reports import status_reason
from orchestrator.errors import OrchestratorError
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, Store
from orchestrator.store.records import Device
from orchestrator.store.state_keys import StateKey
from schemas.envelope import Opened, check_header, decode_body, verify
from schemas.errors import FedmqError, Reason, SignatureError
from schemas.messages import Control, ControlAction, KeyRotation, PasswordReceipt
from schemas.replay import Verdict
from schemas.signing import check_rotation_proof, key_id
from schemas.topics import DownKind

__all__ = ["KEY_ROTATED", "RESEND_S", "KeyRotationHandler", "RotationRequests",
           "record_request", "request_rotation", "requested"]

log = logging.getLogger(__name__)

KEY_ROTATED = "key_rotated"
"""The audit event of a rotation (``detail``: ``old_key``, ``new_key`` hex, ``seq``)."""

RESEND_S = 60.0
"""How often ``Control(rotate_key)`` is sent again to a device that has not rotated yet."""


class RotationRequestError(OrchestratorError):
    """``fedmq device rotate`` cannot ask this device (one line)."""


async def request_rotation(store: Store, device_id: str, *, now_ms: int,
                           actor: str = "cli") -> None:
    """Record an operator's request that ``device_id`` rotate its key (audited)."""
    device = await record_request(store, StateKey.ROTATE_REQUESTS, device_id, now_ms=now_ms,
                                  what="rotate its key", error=RotationRequestError)
    await store.append_audit(AuditEvent("rotate_requested", actor, device=device_id,
                                        detail={"key": key_id(device.public_key or b"")}))


async def record_request(store: Store, key: StateKey, device_id: str, *, now_ms: int,
                         what: str, error: type[OrchestratorError]) -> Device:
    """Note under ``key`` (``{device: requested_ms}``) that an operator asked ``device_id``
    to ``what``; ``error`` (one line) unless it is an active, enrolled device."""
    device = await store.get_device(device_id)
    if device is None:
        raise error(f"no device {device_id!r}")
    if device.status != "active" or not device.public_key:
        raise error(f"device {device_id!r} is {device.status}; only an active, enrolled "
                    f"device can {what}")
    requests = requested(await store.get_server_state(key))
    requests[device_id] = now_ms
    await store.put_server_state({key: json.dumps(requests, sort_keys=True).encode()})
    return device


def requested(raw: bytes | None) -> dict[str, int]:
    """The ``{device: requested_ms}`` map :func:`record_request` keeps (empty if unreadable)."""
    try:
        value = json.loads(raw) if raw else {}
        return {str(k): int(v) for k, v in value.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


@dataclass(slots=True)
class _Handled:
    requested_ms: int
    sent_ms: int = 0
    done: bool = False


class RotationRequests:
    """The service's side of ``fedmq device rotate`` (driven by the registry watch)."""

    def __init__(self, *, store: Store, outbound: Outbound, registry: Registry,
                 resend_s: float, clock: Clock, counters: MutableMapping[str, int]) -> None:
        self._store = store
        self._outbound = outbound
        self._registry = registry
        self._resend_ms = int(resend_s * 1000)
        self._clock = clock
        self._counters = counters
        self._handled: dict[str, _Handled] | None = None

    async def _load(self) -> dict[str, _Handled]:
        if self._handled is None:
            raw = await self._store.get_server_state(StateKey.ROTATIONS)
            handled: dict[str, _Handled] = {}
            try:
                for device, v in (json.loads(raw) if raw else {}).items():
                    handled[str(device)] = _Handled(int(v["requested_ms"]), int(v["sent_ms"]),
                                                    bool(v["done"]))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("stored rotation progress unreadable (%s); starting afresh", exc)
            self._handled = handled
        return self._handled

    async def _save(self) -> None:
        blob = json.dumps({d: {"requested_ms": h.requested_ms, "sent_ms": h.sent_ms,
                               "done": h.done} for d, h in (await self._load()).items()},
                          sort_keys=True).encode()
        await self._store.put_server_state({StateKey.ROTATIONS: blob})

    async def sync(self) -> None:
        """Ask every requested device that has not rotated since (again after resend_s)."""
        requests = requested(await self._store.get_server_state(StateKey.ROTATE_REQUESTS))
        handled = await self._load()
        now = self._clock.wall_ms()
        changed = False
        for device, requested_ms in sorted(requests.items()):
            entry = handled.get(device)
            if entry is None or entry.requested_ms != requested_ms:
                entry = handled[device] = _Handled(requested_ms)
            view = self._registry.get(device)
            if entry.done or view is None or view.status != "active":
                continue
            if entry.sent_ms and now < entry.sent_ms + self._resend_ms:
                continue
            await self._outbound.send(device, DownKind.CONTROL, Control(
                ControlAction.ROTATE_KEY, "operator request"))
            entry.sent_ms, changed = now, True
            self._counters["rotate.requested"] += 1
        if changed:
            await self._save()

    async def rotated(self, device: str) -> None:
        """``device`` rotated its key: its request (if any) is done."""
        entry = (await self._load()).get(device)
        if entry is not None and not entry.done:
            entry.done = True
            await self._save()


class Receipts(Protocol):
    async def received(self, device: str, receipt: PasswordReceipt) -> None: ...


class KeyRotationHandler:
    """Control-lane handler of ``up/{dev}/rotate``: ``KeyRotation``, and ``PasswordReceipt``
    (handed to ``passwords``, see :mod:`orchestrator.devices.passwords`)."""

    def __init__(self, *, fed: str, store: Store, registry: Registry, book: ReplayBook,
                 outbound: Outbound, counters: MutableMapping[str, int],
                 requests: RotationRequests | None = None,
                 passwords: Receipts | None = None) -> None:
        self._fed = fed
        self._store = store
        self._registry = registry
        self._book = book
        self._outbound = outbound
        self._counters = counters
        self._requests = requests
        self._passwords = passwords

    async def handle(self, device_id: str, payload: bytes, received_ms: int) -> None:
        view = self._registry.get(device_id)
        if view is None or view.verify_key is None or view.public_key is None:
            raise FedmqError(Reason.UNKNOWN_SENDER, f"no key for {device_id!r}")
        if view.status != "active":
            raise FedmqError(status_reason(view.status), f"device is {view.status}")
        try:
            opened = verify(payload, view.verify_key)
        except SignatureError:
            await self._asked_again(view, payload, received_ms)
            return
        check_header(opened.header, fed=self._fed, sender=device_id, now_ms=received_ms)
        verdict = self._book.classify(device_id, opened.header.seq)
        if verdict is Verdict.REPLAY:
            raise FedmqError(Reason.REPLAY, f"seq {opened.header.seq}")
        if verdict is Verdict.DUPLICATE:
            self._counters["rotate.duplicate"] += 1
            return
        if opened.header.type == PasswordReceipt.TYPE and self._passwords is not None:
            receipt = decode_body(opened, PasswordReceipt)
            await self._passwords.received(device_id, receipt)
            await self._book.mark_seen(device_id, opened.header.seq)
            return
        message = decode_body(opened, KeyRotation)
        await self._rotate(view, opened, message)

    async def _rotate(self, view: DeviceView, opened: Opened, message: KeyRotation) -> None:
        device, old, new = view.device_id, view.public_key, message.new_public_key
        assert old is not None
        if new == old or not check_rotation_proof(new, message.proof, old):
            raise FedmqError(Reason.BAD_SIGNATURE, "rotation proof does not verify")
        try:
            VerifyKey(new)
        except Exception:  # pragma: no cover - the proof check already needed a usable key
            raise FedmqError(Reason.INVALID_FIELD, "new_public_key is not a key") from None
        seq = opened.header.seq
        audit = AuditEvent(KEY_ROTATED, device, device=device, detail={
            "old_key": old.hex(), "new_key": new.hex(), "seq": seq})
        if not await self._store.replace_key(device, old, new, audit=audit):
            raise FedmqError(Reason.NOT_AUTHORIZED, "device changed meanwhile")
        await self._registry.reload_device(device)
        await self._book.mark_seen(device, seq)  # the same window: seqs go on
        self._counters["rotate.rotated"] += 1
        log.info("device %s: key rotated %s -> %s", device, key_id(old), key_id(new))
        if self._requests is not None:
            await self._requests.rotated(device)
        await self._confirm(device, new)

    async def _asked_again(self, view: DeviceView, payload: bytes, received_ms: int) -> None:
        """Not signed by the current key: only a retired key asking for the confirmation of
        the rotation that retired it is answered; anything else is ``bad_signature``."""
        rows = await self._store.list_audit(device=view.device_id, event=KEY_ROTATED, limit=1)
        detail = rows[0].detail if rows else {}
        if detail.get("new_key") != (view.public_key or b"").hex():
            raise SignatureError(sender=view.device_id)
        try:
            retired = VerifyKey(bytes.fromhex(str(detail.get("old_key"))))
        except (ValueError, TypeError):
            raise SignatureError(sender=view.device_id) from None
        opened = verify(payload, retired)  # raises SignatureError for any other key
        check_header(opened.header, fed=self._fed, sender=view.device_id, now_ms=received_ms)
        if opened.header.type != KeyRotation.TYPE:
            raise SignatureError(sender=view.device_id, seq=opened.header.seq)
        message = decode_body(opened, KeyRotation)
        if message.new_public_key != view.public_key:
            raise SignatureError(sender=view.device_id)
        self._counters["rotate.reconfirmed"] += 1
        await self._confirm(view.device_id, message.new_public_key)

    async def _confirm(self, device: str, new: bytes) -> None:
        await self._outbound.send(device, DownKind.CONTROL, Control(
            ControlAction.KEY_ROTATED, "key rotated", {"public_key": new}))
