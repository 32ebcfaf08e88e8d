"""The control lanes: enroll, status and eval messages, each device always on the same lane.

A device's messages are handled in order, other devices' meanwhile. Each handler awaits a
store write and a QoS 1 publish; one at a time, a 5,000-device fleet's heartbeats outran them
(196 answered of 496 a second), so :class:`ControlLanes` runs ``lanes`` of them at once.
A refusal (:class:`~schemas.errors.FedmqError`) is counted as ``<kind>.rejected.<reason>``.
Anything else a handler raises is a fault of ours, not the sender's: it is logged with its
traceback and counted as ``<kind>.error``, and the lane goes on, so that one message that
trips a bug cannot silence every device on its lane (heartbeats and enrolls are re-sent).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Protocol

from schemas.errors import FedmqError

__all__ = ["ControlItem", "ControlLanes", "Handler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ControlItem:
    device: str
    """The device id from the topic (the broker ACL ties it to the MQTT username)."""
    kind: str
    payload: bytes
    received_ms: int


class Handler(Protocol):
    async def handle(self, device_id: str, payload: bytes, received_ms: int) -> None: ...


class ControlLanes:
    def __init__(self, handlers: dict[str, Handler], *, counters: MutableMapping[str, int],
                 queue_size: int, lanes: int = 8) -> None:
        self._handlers = handlers
        self._counters = counters
        self._queue: asyncio.Queue[ControlItem] = asyncio.Queue(queue_size)
        self._lanes = lanes

    async def submit(self, item: ControlItem) -> None:
        """Queue one message; waits while the queue is full (the broker then holds the rest)."""
        await self._queue.put(item)

    async def run(self) -> None:
        lanes: list[asyncio.Queue[ControlItem]] = [asyncio.Queue(64) for _ in range(self._lanes)]
        async with asyncio.TaskGroup() as tg:
            for i, lane in enumerate(lanes):
                tg.create_task(self._lane(lane), name=f"control-{i}")
            while True:
                item = await self._queue.get()
                await lanes[zlib.crc32(item.device.encode()) % len(lanes)].put(item)

    async def _lane(self, lane: asyncio.Queue[ControlItem]) -> None:
        while True:
            item = await lane.get()
            handler = self._handlers.get(item.kind)
            if handler is None:  # pragma: no cover - the router admits only handled kinds
                continue
            try:
                await handler.handle(item.device, item.payload, item.received_ms)
            except FedmqError as exc:
                self._counters[f"{item.kind}.rejected.{exc.reason.value}"] += 1
                log.debug("%s from %s refused: %s", item.kind, item.device, exc)
            except Exception:
                self._counters[f"{item.kind}.error"] += 1
                log.exception("%s from %s: the handler failed", item.kind, item.device)
