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
        sent = self._sender_lane(message)
        if sent is None:
            return
        sender, lane, parsed_kind = sent
        assert isinstance(message.payload, bytes | bytearray)  # checked by _sender_lane
        payload = bytes(message.payload)
        if not self._limiter.admit(sender, lane, len(payload)):
            self._counters[f"refused.rate.{lane.value}"] += 1
            return
        if lane is Lane.OPS:
            self._ops.submit(message, sender, now)
        elif lane is Lane.UPDATES:
            await self._updates(RawBatch(sender, payload, now))
        else:
            await self._control(ControlItem(sender, parsed_kind, payload, now))

    def dropped(self, message: aiomqtt.Message) -> None:
        """The link dropped ``message`` unread (its QoS 0 backlog was full): charged to its
        sender as a refusal, so a QoS 0 flood is isolated like any other."""
        sent = self._sender_lane(message, count=False)
        if sent is not None:
            sender, lane, _ = sent
            payload = message.payload
            self._limiter.refuse(sender, lane, len(payload) if isinstance(payload, bytes) else 0)
            self._counters[f"refused.rate.{lane.value}"] += 1

    def _sender_lane(self, message: aiomqtt.Message, *, count: bool = True
                     ) -> tuple[str, Lane, str] | None:
        """The account that published ``message``, its lane and kind; None (counted) for
        anything not ours to route."""
        try:
            parsed = parse_topic(str(message.topic))
        except FedmqError:
            if count:
                self._counters["dropped.bad_topic"] += 1
            return None
        payload = message.payload
        lane: Lane | None = None
        if (parsed.fed == self._topics.fed and parsed.device is not None and parsed.kind
                and isinstance(payload, bytes | bytearray) and payload):
            if parsed.area == "ops" and parsed.kind == "request":
                lane = Lane.OPS
            elif parsed.area == "up":
                lane = Lane.UPDATES if parsed.kind == UpKind.UPDATES else Lane.CONTROL
        if lane is None or parsed.device is None or parsed.kind is None:
            if count:
                self._counters["dropped.ignored"] += 1
            return None
        return parsed.device, lane, parsed.kind
