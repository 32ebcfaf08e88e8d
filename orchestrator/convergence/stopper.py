"""Applies the stopping rules: after each version (evaluated or not), and on the clock.

When a rule fires the federation stops once: the reason is recorded (server state and audit),
the version head says so (publication then republishes the model with ``stopped``, tasking
defers every ask), and every active device is told at once (``Control(stop)``).

An operator lifts a stop with ``fedmq federation resume`` (:meth:`Stopper.resume`): the record
goes (audited ``resumed``), the rules start over from the current version and the current
time (``max_versions`` and ``max_wall_s`` count from the resume; the best metric is kept),
the model is republished without ``stopped`` and every active device is told
(``Control(resume)``). A rule whose condition still holds, such as a reached
``target_metric``, stops the federation again at the next evaluated version.
"""

from __future__ import annotations

import json
import logging

from orchestrator.clock import Clock
from orchestrator.convergence.stopping import StoppingRules, StoppingState
from orchestrator.devices.registry import Registry
from orchestrator.errors import OrchestratorError
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, Store
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.head import VersionHead
from schemas.messages import Control, ControlAction
from schemas.topics import ORCHESTRATOR_SENDER, DownKind

__all__ = ["NotStoppedError", "Stopper"]

log = logging.getLogger(__name__)


class NotStoppedError(OrchestratorError):
    """``resume`` when the federation is running (one line back to the operator)."""


class Stopper:
    def __init__(self, rules: StoppingRules | None, *, fed: str, store: Store,
                 head: VersionHead, registry: Registry, outbound: Outbound,
                 clock: Clock) -> None:
        self._rules = rules
        self._fed = fed
        self._store = store
        self._head = head
        self._registry = registry
        self._outbound = outbound
        self._clock = clock
        self._stopping = False

    async def on_version(self, version: int, metric: float | None) -> None:
        """After ``version`` was made (with its server-side metric, when evaluated)."""
        if self._rules is None or self._head.stopped is not None:
            return
        reason = self._rules.on_version(version, metric)
        await self._store.put_server_state({StateKey.STOPPING: self._rules.state.to_bytes()})
        if reason is not None:
            await self.stop(reason)

    async def on_clock(self) -> None:
        if self._rules is None or self._head.stopped is not None:
            return
        reason = self._rules.on_clock(self._clock.wall_ms())
        if reason is not None:
            await self.stop(reason)

    async def stop(self, reason: str) -> None:
        if self._head.stopped is not None or self._stopping:
            return
        self._stopping = True  # the store writes below yield: no second stop meanwhile
        detail = {"reason": reason, "version": self._head.version,
                  "ts_ms": self._clock.wall_ms()}
        await self._store.put_server_state({StateKey.STOPPED: json.dumps(detail).encode()})
        await self._store.append_audit(AuditEvent("stopped", ORCHESTRATOR_SENDER, reason=reason,
                                                  detail=detail))
        await self._head.mark_stopped(reason)  # once on the record: waiters may read it
        self._stopping = False  # head.stopped guards from here on (until a resume)
        log.info("federation %r stopped: %s", self._fed, reason)
        # the retained model says so too; this reaches connected agents at once
        stop = Control(ControlAction.STOP, reason)
        for view in self._registry.all():
            if view.role == "device" and view.status == "active":
                await self._outbound.send(view.device_id, DownKind.CONTROL, stop)

    async def resume(self, actor: str, reason: str) -> dict[str, object]:
        """Lift the stop (see the module docstring); what was lifted, for the operator."""
        was = self._head.stopped
        if was is None or self._stopping:
            raise NotStoppedError("the federation is not stopped")
        version, now = self._head.version, self._clock.wall_ms()
        if self._rules is not None:
            old = self._rules.state
            self._rules.state = StoppingState(now, old.best_metric, old.best_version,
                                              base_version=version)
            await self._store.put_server_state(
                {StateKey.STOPPING: self._rules.state.to_bytes()})
        # a pending offline request is answered by this resume too: left, it would lift a
        # later stop nobody asked to lift
        await self._store.delete_server_state([StateKey.STOPPED, StateKey.RESUME_REQUEST])
        detail = {"stopped_for": was, "version": version, "ts_ms": now}
        await self._store.append_audit(AuditEvent("resumed", actor, reason=reason,
                                                  detail=detail))
        await self._head.mark_stopped(None)  # publication republishes without ``stopped``
        log.info("federation %r resumed by %s at version %d (was stopped: %s)", self._fed,
                 actor, version, was)
        resume = Control(ControlAction.RESUME, reason)
        for view in self._registry.all():
            if view.role == "device" and view.status == "active":
                await self._outbound.send(view.device_id, DownKind.CONTROL, resume)
        return detail
