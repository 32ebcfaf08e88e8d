"""Enrollment as the service handles it: the pure decision on an ``enroll`` message
(:func:`judge_enroll`, no I/O) and :class:`EnrollHandler`, which records and answers it. The
operator's side (``fedmq device add`` and the rest) is in :mod:`orchestrator.devices.commands`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

from orchestrator.devices.registry import DeviceView, Registry
from orchestrator.devices.replay_book import ReplayBook
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, DeviceStatus, Store
from schemas.envelope import check_header, open_enroll
from schemas.errors import FedmqError, Reason
from schemas.messages import Enroll, Enrolled, EnrollStatus
from schemas.signing import check_enroll_mac, key_id
from schemas.topics import ORCHESTRATOR_SENDER, DownKind

__all__ = ["EnrollDecision", "EnrollHandler", "judge_enroll"]


@dataclass(frozen=True, slots=True)
class EnrollDecision:
    status: EnrollStatus
    reason: str = ""
    register: DeviceStatus | None = None
    """Store the key with this status (a first enrollment); None: store nothing."""


def judge_enroll(
    device: DeviceView | None, enroll: Enroll, *, fed: str, manual_approval: bool
) -> EnrollDecision:
    """What to answer to an authentic (self-signed) enroll from ``enroll.device_id``."""
    if device is None:
        return EnrollDecision(EnrollStatus.REJECTED, Reason.UNKNOWN_SENDER.value)
    if device.status == "revoked":
        return EnrollDecision(EnrollStatus.REJECTED, Reason.REVOKED.value)
    if device.status == "isolated":
        return EnrollDecision(EnrollStatus.REJECTED, Reason.ISOLATED.value)
    if device.status == "pending":
        if device.secret is None or not check_enroll_mac(
            device.secret, enroll.mac, fed=fed, device_id=enroll.device_id,
            public_key=enroll.public_key,
        ):
            return EnrollDecision(EnrollStatus.REJECTED, Reason.BAD_HMAC.value)
        if manual_approval:
            return EnrollDecision(EnrollStatus.AWAITING_APPROVAL, register="awaiting_approval")
        return EnrollDecision(EnrollStatus.ACTIVE, register="active")
    # enrolled before: the same key is answered again (idempotent), another key is refused
    if device.public_key != enroll.public_key:
        return EnrollDecision(EnrollStatus.REJECTED, Reason.NOT_AUTHORIZED.value)
    if device.status == "awaiting_approval":
        return EnrollDecision(EnrollStatus.AWAITING_APPROVAL)
    return EnrollDecision(EnrollStatus.ACTIVE)


class EnrollHandler:
    """Judges an ``enroll`` (self-signed with the key it enrolls), records a first
    enrollment and answers ``Enrolled``. One that proves nothing about its sender is audited
    and refused without an answer."""

    def __init__(self, *, fed: str, manual_approval: bool, heartbeat_s: float, store: Store,
                 registry: Registry, book: ReplayBook, outbound: Outbound,
                 counters: MutableMapping[str, int]) -> None:
        self._fed = fed
        self._manual = manual_approval
        self._heartbeat_s = heartbeat_s
        self._store = store
        self._registry = registry
        self._book = book
        self._outbound = outbound
        self._counters = counters

    async def handle(self, device_id: str, payload: bytes, received_ms: int) -> None:
        try:
            header, enroll = open_enroll(payload)
            check_header(header, fed=self._fed, sender=device_id, now_ms=received_ms)
        except FedmqError as exc:
            # not answerable: nothing proves who sent it; still on the record
            await self._store.append_audit(AuditEvent(
                "rejected", ORCHESTRATOR_SENDER, device=device_id, reason=exc.reason.value,
                detail={"message": "enroll", "detail": exc.detail[:200]}))
            raise
        device = await self._registry.reload_device(device_id)
        decision = judge_enroll(device, enroll, fed=self._fed, manual_approval=self._manual)
        if decision.register is not None:
            await self._store.set_key(
                device_id, enroll.public_key, status=decision.register, clear_secret=True,
                audit=AuditEvent("enrolled", ORCHESTRATOR_SENDER, device=device_id, detail={
                    "status": decision.register, "key_id": key_id(enroll.public_key),
                    "agent_version": enroll.agent_version}),
            )
            await self._registry.reload_device(device_id)
            await self._book.reset(device_id)  # a (re-)enrolled key starts a fresh seq history
            self._counters["enrolled"] += 1
        elif decision.status is EnrollStatus.REJECTED:
            await self._store.append_audit(AuditEvent(
                "rejected", ORCHESTRATOR_SENDER, device=device_id, reason=decision.reason,
                detail={"message": "enroll", "key_id": key_id(enroll.public_key)}))
            # counted once audited (plain reads do not wait for writes: see store)
            self._counters[f"enroll.rejected.{decision.reason}"] += 1
        await self._outbound.send(device_id, DownKind.ENROLLED, Enrolled(
            device_id, decision.status, decision.reason, heartbeat_s=self._heartbeat_s))
