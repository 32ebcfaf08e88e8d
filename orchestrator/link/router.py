"""Where each received message goes: the MQTT link hands every message here, in order.

First the sender's rate (:mod:`orchestrator.link.rates`): the topic names the account that
published it, and a message over that sender's limit is dropped unread
(``refused.rate.<lane>``). Then update batches go to intake, enroll/status/eval to the control
lanes, operator requests to the ops desk; anything else is counted and dropped. Queuing
waits while a queue is full, and the link acknowledges a QoS 1 message only once this returns,
so a backlog waits at the broker
(see :class:`~orchestrator.link.mqtt.MqttSettings.receive_maximum`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Protocol

import aiomqtt

from orchestrator.clock import Clock
from orchestrator.devices.control import ControlItem
from orchestrator.ingest.pipeline import RawBatch
from orchestrator.link.rates import Lane, RateLimiter
from schemas.errors import FedmqError
from schemas.topics import Topics, UpKind, parse_topic

__all__ = ["Router"]


class OpsIntake(Protocol):
    def submit(self, message: aiomqtt.Message, sender: str, received_ms: int) -> None: ...


class Router:
    def __init__(self, topics: Topics, *, updates: Callable[[RawBatch], Awaitable[None]],
                 control: Callable[[ControlItem], Awaitable[None]], ops: OpsIntake,
                 limiter: RateLimiter, counters: MutableMapping[str, int], clock: Clock,
                 tap: Callable[[aiomqtt.Message], None] | None = None) -> None:
        """``updates``, ``control``: the queues' ``submit``s (they may wait); ``ops``: the
        desk, whose ``submit`` never blocks (its own bounded queue); ``tap``: sees every
        message first (must not block)."""
        self._tap = tap
        self._topics = topics
        self._updates = updates
        self._control = control
        self._ops = ops
        self._limiter = limiter
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
        if parsed.fed != self._topics.fed or parsed.device is None or not isinstance(
                payload, bytes | bytearray) or not payload:
            self._counters["dropped.ignored"] += 1
            return
        if parsed.area == "ops" and parsed.kind == "request":
            lane = Lane.OPS
        elif parsed.area == "up" and parsed.kind is not None:
            lane = Lane.UPDATES if parsed.kind == UpKind.UPDATES else Lane.CONTROL
        else:
            self._counters["dropped.ignored"] += 1
            return
        if not self._limiter.admit(parsed.device, lane, len(payload)):
            self._counters[f"refused.rate.{lane.value}"] += 1
            return
        if lane is Lane.OPS:
            self._ops.submit(message, parsed.device, now)
        elif lane is Lane.UPDATES:
            await self._updates(RawBatch(parsed.device, bytes(payload), now))
        else:
            await self._control(ControlItem(parsed.device, parsed.kind, bytes(payload), now))
