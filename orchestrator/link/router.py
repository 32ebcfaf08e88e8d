"""Where each received message goes: the MQTT link hands every message here, in order.

Update batches go to intake, enroll/status/eval to the control lanes, operator requests to
the ops desk; anything else is counted and dropped. Queuing waits while a queue is full, and
the link acknowledges a QoS 1 message only once this returns, so a backlog waits at the
broker (see :class:`~orchestrator.link.mqtt.MqttSettings.receive_maximum`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Protocol

import aiomqtt

from orchestrator.clock import Clock
from orchestrator.devices.control import ControlItem
from orchestrator.ingest.pipeline import RawBatch
from schemas.errors import FedmqError
from schemas.topics import Topics, UpKind, parse_topic

__all__ = ["Router"]


class OpsIntake(Protocol):
    def submit(self, message: aiomqtt.Message, received_ms: int) -> None: ...


class Router:
    def __init__(self, topics: Topics, *, updates: Callable[[RawBatch], Awaitable[None]],
                 control: Callable[[ControlItem], Awaitable[None]], ops: OpsIntake,
                 counters: MutableMapping[str, int], clock: Clock,
                 tap: Callable[[aiomqtt.Message], None] | None = None) -> None:
        """``updates``, ``control``: the queues' ``submit``s (they may wait); ``ops``: the
        desk, whose ``submit`` never blocks (its own bounded queue); ``tap``: sees every
        message first (must not block)."""
        self._tap = tap
        self._topics = topics
        self._updates = updates
        self._control = control
        self._ops = ops
        self._counters = counters
        self._clock = clock

    async def route(self, message: aiomqtt.Message) -> None:
        if self._tap is not None:
            self._tap(message)
        now = self._clock.wall_ms()
        try:
            parsed = parse_topic(str(message.topic))
        except FedmqError:
            self._counters["dropped.bad_topic"] += 1
            return
        payload = message.payload
        ours = parsed.fed == self._topics.fed
        if ours and parsed.area == "ops" and parsed.kind == "request":
            self._ops.submit(message, now)
            return
        if (not ours or parsed.area != "up" or parsed.device is None or parsed.kind is None
                or not isinstance(payload, bytes | bytearray) or not payload):
            self._counters["dropped.ignored"] += 1
            return
        data = bytes(payload)
        if parsed.kind == UpKind.UPDATES:
            await self._updates(RawBatch(parsed.device, data, now))
        else:
            await self._control(ControlItem(parsed.device, parsed.kind, data, now))
