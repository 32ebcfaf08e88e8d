"""Everything the device receives: verification, the replay window, and dispatch.

``Downlink.deliver(topic, payload)`` takes one message as it arrived on ``topic``. Model
messages go to the ``ModelKeeper``. Messages for this device must verify against the pinned
orchestrator key, name this federation, the orchestrator as sender and this device as
recipient, be of a type the orchestrator sends to devices, and be fresh in the replay window
(a duplicate is ignored, one below the window refused) — in that order, before the body is
decoded. Then ``Task`` goes to the worker's queue, ``Defer``, ``Control`` and ``Enrolled``
change the activity, and ``Ack`` removes entries from the outbox. A ``Control(revoke)`` writes
the tombstone, stops the agent's work and destroys the outbox (see ``_on_revoke``).

Nothing forged or malformed raises out of ``deliver``: it is refused, logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol

from schemas import (
    Ack,
    AckOutcome,
    Control,
    ControlAction,
    DecodeError,
    Defer,
    Enrolled,
    EnrollStatus,
    FedmqError,
    Message,
    Reason,
    ReplayWindow,
    Task,
    Verdict,
    check_header,
    decode_body,
    message_type,
    parse_topic,
    unseal_key,
)
from schemas.secagg.wire import LATE, SecAggEnd, SecAggRelay, SecAggUnmask
from schemas.topics import ORCHESTRATOR_SENDER

from .buckets import Buckets
from .clock import Clock, wall_ms
from .config import AGENT_VERSION
from .errors import ModelContractError
from .keeper import ModelKeeper
from .orchkeys import KeyLostError, OrchestratorKeys
from .outbox import Outbox
from .records import Enrollment
from .shared import AgentStats, Pulse, Settings, Shutdown
from .state import LocalState
from .tombstone import Tombstone
from .tracker import ActivityTracker

__all__ = ["Downlink"]

class Rotation(Protocol):
    """What handles ``Control(rotate_key)`` and ``Control(key_rotated)`` (``KeyRotator``)."""

    async def on_control(self, control: Control) -> None: ...


_ROTATION = (ControlAction.ROTATE_KEY, ControlAction.KEY_ROTATED,
             ControlAction.NEW_PASSWORD, ControlAction.PASSWORD_ROTATED)
_STAGES = (SecAggRelay, SecAggUnmask, SecAggEnd)
_DOWN_TYPES: tuple[type[Message], ...] = (Task, Defer, Ack, Control, Enrolled, *_STAGES)


class Downlink:
    def __init__(self, *, device_id: str, fed: str, orchestrator_keys: OrchestratorKeys,
                 state: LocalState, window: ReplayWindow, models: ModelKeeper,
                 tracker: ActivityTracker, tasks: asyncio.Queue[Task], outbox: Outbox,
                 settings: Settings, shutdown: Shutdown, stats: AgentStats, changed: Pulse,
                 status_due: asyncio.Event, outbox_due: asyncio.Event, clock: Clock,
                 exit_on_revoke: bool, tombstone: Path, logger: logging.Logger,
                 rotation: Rotation | None = None, buckets: Buckets | None = None) -> None:
        self._device_id = device_id
        self._fed = fed
        self._keys = orchestrator_keys
        self._state = state
        self._window = window
        self._models = models
        self._tracker = tracker
        self._tasks = tasks
        self._outbox = outbox
        self._settings = settings
        self._shutdown = shutdown
        self._stats = stats
        self._changed = changed
        self._status_due = status_due
        self._outbox_due = outbox_due
        self._clock = clock
        self._exit_on_revoke = exit_on_revoke
        self._tombstone = tombstone
        self._log = logger
        self._rotation = rotation
        self._buckets = buckets

    async def deliver(self, topic: str, payload: bytes) -> None:
        """Handle one message as if it had arrived on ``topic``. Never raises for bad input:
        anything forged or malformed is refused, logged and counted in ``stats.refused``."""
        try:
            parsed = parse_topic(topic)
            if parsed.fed != self._fed:
                raise FedmqError(Reason.WRONG_FEDERATION, f"topic of federation {parsed.fed!r}")
            if parsed.area == "model" and parsed.kind in ("key", "earlier_key"):
                if payload:
                    await self._keys.receive(payload, earlier=parsed.kind == "earlier_key")
            elif parsed.area == "model":
                if payload:  # an empty retained payload clears a superseded chunk
                    await self._on_model(parsed.kind or "", payload, topic)
            elif parsed.area == "down" and parsed.device == self._device_id:
                message = await self._open(payload)
                if message is not None:
                    await self._dispatch(message)
            else:
                raise DecodeError(Reason.BAD_TOPIC, "not a topic for this device")
            await self._keys.settle()
        except KeyLostError as exc:
            self._key_lost(exc)
        except FedmqError as exc:
            self._refuse(topic, exc.reason.value, str(exc))
        except (ModelContractError, ValueError) as exc:
            self._refuse(topic, Reason.INVALID_FIELD.value, str(exc))

    def _key_lost(self, exc: KeyLostError) -> None:
        """Nothing the orchestrator signs can be verified any more: one line, and the end."""
        if self._shutdown.finished == "orchestrator_key_changed":
            return
        self._log.error("%s", exc.line)
        self._changed.fire()
        self._shutdown.finish("orchestrator_key_changed")

    def _refuse(self, topic: str, reason: str, detail: str) -> None:
        self._stats.refused[reason] += 1
        self._log.warning("refused message on %s: %s", topic, detail)
        self._changed.fire()

    async def _on_model(self, kind: str, payload: bytes, topic: str) -> None:
        model = await self._models.receive(kind, payload, topic)
        if model is None:
            return
        self._stats.models_adopted += 1
        self._status_due.set()  # the reported model version moved
        changed = self._tracker.current.on_model(model.stopped)
        if changed.durable_part() != self._tracker.current.durable_part():
            await self._tracker.commit(lambda a: a.on_model(model.stopped))  # a resume
        else:
            self._tracker.set(changed)

    async def _open(self, payload: bytes) -> Message | None:
        """The verified, fresh message (marked in the window), or None for a duplicate."""
        opened = self._keys.verify(payload)
        header = opened.header
        check_header(header, fed=self._fed, sender=ORCHESTRATOR_SENDER, now_ms=wall_ms(self._clock),
                     recipient=self._device_id)
        cls = message_type(opened)
        if cls not in _DOWN_TYPES:
            raise DecodeError(Reason.WRONG_TYPE, f"{header.type!r} is not sent to devices")
        verdict = self._window.classify(header.seq)
        if verdict is Verdict.DUPLICATE:
            self._stats.duplicates += 1
            self._log.debug("duplicate %s seq %d ignored", header.type, header.seq)
            return None
        if verdict is not Verdict.FRESH:
            raise FedmqError(Reason.REPLAY, f"{header.type} seq {header.seq} is below the window")
        # nothing downstream is sealed today; opening with our key costs nothing if it is
        message = decode_body(opened, cls, unseal=unseal_key(self._state.signing_key))
        self._window.mark(header.seq)
        await self._state.save_replay_window(self._window)
        return message

    async def _dispatch(self, message: Message) -> None:
        if isinstance(message, _STAGES):
            if self._buckets is None:
                raise DecodeError(Reason.WRONG_TYPE, "secure buckets are not set up here")
            await self._buckets.on_stage(message)
        elif isinstance(message, Task):
            self._on_task(message)
        elif isinstance(message, Defer):
            await self._on_defer(message)
        elif isinstance(message, Ack):
            await self._on_ack(message)
        elif isinstance(message, Control):
            await self._on_control(message)
        elif isinstance(message, Enrolled):
            await self._on_enrolled(message)

    def _on_task(self, task: Task) -> None:
        self._stats.tasks_received += 1
        bucket = task.bucket
        if bucket is not None and self._buckets is not None \
                and self._buckets.joined(bucket.bucket_id):
            self._stats.duplicates += 1  # re-sent to a member that might have missed it
            return
        try:
            self._tasks.put_nowait(task)
        except asyncio.QueueFull:
            self._stats.tasks_dropped += 1
            self._log.warning("task %s dropped: %d tasks already queued", task.task_id,
                              self._tasks.qsize())
        self._changed.fire()

    async def _on_defer(self, defer: Defer) -> None:
        now = wall_ms(self._clock)
        await self._tracker.commit(lambda a: a.on_defer(now, defer.retry_after_ms))
        self._log.info("deferred for %d ms%s", defer.retry_after_ms,
                       f" ({defer.reason})" if defer.reason else "")

    async def _on_ack(self, ack: Ack) -> None:
        removed = await self._outbox.ack(e.seq for e in ack.entries)
        for entry in ack.entries:
            self._stats.acked[entry.outcome.value] += 1
            if entry.outcome is AckOutcome.REJECTED:
                level = logging.INFO if entry.reason == LATE else logging.WARNING
                self._log.log(level, "update seq %d rejected: %s", entry.seq,
                              entry.reason or "?")
        self._log.debug("ack for %d seq(s), %d removed, %d left", len(ack.entries), removed,
                        len(self._outbox))
        self._changed.fire()

    async def _on_control(self, control: Control) -> None:
        action = control.action
        self._log.info("control %s%s", action.value,
                       f": {control.reason}" if control.reason else "")
        if action is ControlAction.RECONFIGURE:
            await self._reconfigure(control.params)
            return
        if action in _ROTATION and self._rotation is not None:
            await self._rotation.on_control(control)
            return
        if self._tracker.current.on_order(action, control.reason) is None:
            self._log.warning("control %s is not supported by %s; ignored", action.value,
                              AGENT_VERSION)
            return
        if action is ControlAction.REVOKE:
            await self._on_revoke(control)
            return
        await self._tracker.commit(lambda a: a.on_order(action, control.reason) or a)

    async def _on_revoke(self, control: Control) -> None:
        """The tombstone first (a restart refuses from now on), then the stop, then the
        outbox; the key goes when the agent ends (it signs the confirming status first)."""
        if self._tracker.current.revoked is not None and self._tombstone.exists():
            return  # already done (a second copy under a fresh seq)
        stone = Tombstone(self._device_id, self._fed, wall_ms(self._clock),
                          control.reason or "revoked")
        await asyncio.to_thread(stone.write, self._tombstone)
        await self._tracker.commit(lambda a: a.on_order(ControlAction.REVOKE, control.reason)
                                   or a)
        dropped = await self._outbox.destroy()
        self._log.error("%s; %d pending update(s) destroyed", stone.line, dropped)
        self._status_due.set()  # a status saying so confirms the revocation
        self._changed.fire()
        if self._exit_on_revoke:
            self._shutdown.finish("revoked")

    async def _reconfigure(self, params: dict[str, Any]) -> None:
        for name, value in params.items():
            if name == "heartbeat_s" and isinstance(value, int | float) and value > 0:
                self._settings.heartbeat_s = float(value)
            else:
                self._log.warning("reconfigure: ignoring %s=%r", name, value)
        await self._state.put("settings", self._settings.to_record())
        self._status_due.set()

    async def _on_enrolled(self, enrolled: Enrolled) -> None:
        if enrolled.device_id != self._device_id:
            raise FedmqError(Reason.SENDER_MISMATCH, f"enrolled for {enrolled.device_id!r}")
        enrollment = Enrollment(enrolled.status, enrolled.heartbeat_s, enrolled.reason)
        await self._tracker.commit(lambda a: a.on_enrolled(enrollment))
        if enrolled.status is EnrollStatus.REJECTED:
            self._log.error("enrollment rejected by the orchestrator: %s",
                            enrolled.reason or "no reason given")
            self._shutdown.finish("enrollment_rejected")
        else:
            self._log.info("enrollment %s (heartbeat %ss)", enrolled.status.value,
                           enrolled.heartbeat_s)
        self._status_due.set()
        self._outbox_due.set()
