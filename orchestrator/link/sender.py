"""The one outbound sender: everything the orchestrator publishes is numbered, signed and sent
through :class:`Outbound` (devices keep one replay window for all of it)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Protocol

from nacl.signing import SigningKey
from paho.mqtt.properties import Properties

from orchestrator.clock import Clock
from orchestrator.link.mqtt import NotConnectedError
from schemas.envelope import pack
from schemas.messages import Message
from schemas.topics import ORCHESTRATOR_SENDER, DownKind, Topics

__all__ = ["Outbound", "Publisher", "SeqSource"]


class Publisher(Protocol):
    """Moves bytes to the broker (the MQTT link); raises ``NotConnectedError`` when it cannot."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None) -> None: ...


class SeqSource(Protocol):
    """The orchestrator's durable message seqs (see :class:`orchestrator.link.seqs.SeqCounter`)."""

    async def reserve(self, n: int) -> list[int]: ...

    async def next(self) -> int: ...


class Outbound:
    """Signs as the orchestrator and publishes.

    ``send`` is for messages to one device, which are simply re-earned when lost (an ack is
    sent again for a resent batch, a task on the next heartbeat): while the link is down they
    are dropped and counted (``dropped.<kind>``). ``publish`` raises ``NotConnectedError`` for
    callers that must retry (the model, the fleet summary).
    """

    def __init__(self, link: Publisher, *, key: SigningKey, topics: Topics, seqs: SeqSource,
                 clock: Clock, counters: MutableMapping[str, int]) -> None:
        self._link = link
        self.key = key
        self.topics = topics
        self._seqs = seqs
        self._clock = clock
        self._counters = counters

    async def reserve(self, n: int) -> list[int]:
        """``n`` fresh seqs, for callers that sign in bulk off the event loop (releases)."""
        return await self._seqs.reserve(n)

    async def sign(self, message: Message, *, to: str = "") -> bytes:
        """The signed envelope of ``message`` under the next seq (``to``: its recipient, ""
        for a broadcast such as the fleet summary)."""
        seq = await self._seqs.next()
        return pack(message, key=self.key, fed=self.topics.fed, sender=ORCHESTRATOR_SENDER,
                    seq=seq, ts_ms=self._clock.wall_ms(), to=to)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None) -> None:
        await self._link.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    async def send(self, device: str, kind: DownKind, message: Message) -> None:
        """Sign ``message`` for ``device`` and publish it on its ``kind`` topic."""
        payload = await self.sign(message, to=device)
        try:
            await self._link.publish(self.topics.down(device, kind), payload, qos=1)
        except NotConnectedError:
            self._counters[f"dropped.{kind.value}"] += 1
