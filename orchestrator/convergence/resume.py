"""Resuming a stopped federation from the box: ``fedmq federation resume --config``.

The operator's tool and the running service meet in the store, as for a rollback:
:func:`request_resume` records the request (audited ``resume_requested``), and the service's
``resume`` task (:class:`ResumeWatch`) finds it within a poll and lifts the stop through
:meth:`~orchestrator.convergence.stopper.Stopper.resume`, the same path a signed
``federation.resume`` request over MQTT takes. A request made while the service is down is
applied when it starts. Any resume clears the request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from orchestrator.clock import Clock
from orchestrator.convergence.stopper import NotStoppedError, Stopper
from orchestrator.store import AuditEvent, Store
from orchestrator.store.state_keys import StateKey

__all__ = ["ResumeRequest", "ResumeWatch", "request_resume"]

log = logging.getLogger(__name__)

_POLL_S = 1.0
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    actor: str
    reason: str
    requested_ms: int

    def to_bytes(self) -> bytes:
        return json.dumps({"actor": self.actor, "reason": self.reason,
                           "requested_ms": self.requested_ms}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ResumeRequest | None:
        """The request, or None for an unreadable one (dropped: it cannot be honoured)."""
        try:
            d = json.loads(raw)
            return cls(str(d["actor"]), str(d["reason"]), int(d["requested_ms"]))
        except (ValueError, KeyError, TypeError):
            return None


async def request_resume(store: Store, *, actor: str, reason: str, now_ms: int) -> str:
    """Ask the service to lift the stop; returns why it stopped. ``NotStoppedError`` when the
    store says the federation is running."""
    stopped = await store.get_server_state(StateKey.STOPPED)
    if stopped is None:
        raise NotStoppedError("the federation is not stopped")
    try:
        why = str(json.loads(stopped)["reason"])
    except (ValueError, KeyError, TypeError):
        why = "unknown reason"
    request = ResumeRequest(actor, reason[:MAX_REASON], now_ms)
    await store.put_server_state({StateKey.RESUME_REQUEST: request.to_bytes()})
    await store.append_audit(AuditEvent("resume_requested", actor, reason=request.reason,
                                        detail={"stopped_for": why}))
    return why


class ResumeWatch:
    """The ``resume`` task: polls the store and lifts the stop a request asks to lift."""

    def __init__(self, store: Store, stopper: Stopper, clock: Clock,
                 interval_s: float = _POLL_S) -> None:
        self._store = store
        self._stopper = stopper
        self._clock = clock
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            await self.check()
            await self._clock.sleep(self._interval_s)

    async def check(self) -> None:
        """Apply a pending request (one poll)."""
        raw = await self._store.get_server_state(StateKey.RESUME_REQUEST)
        if raw is None:
            return
        request = ResumeRequest.from_bytes(raw)
        try:
            if request is None:
                raise NotStoppedError("unreadable resume request")
            await self._stopper.resume(request.actor, request.reason or "operator request")
        except NotStoppedError as exc:
            log.warning("resume request dropped: %s", exc)
            await self._store.delete_server_state([StateKey.RESUME_REQUEST])
