"""The orchestrator's MQTT session: one persistent MQTT 5 connection, reconnected with backoff.

The client id is fixed per federation and the session is resumed (``clean_start=False`` with a
long session expiry), so QoS 1 messages devices publish while the orchestrator is down wait in
the broker and are delivered when it comes back. Every received message goes to one handler,
in order; publishing while disconnected raises :class:`NotConnectedError` at once (callers decide:
acks and tasks are simply re-earned, the model is republished on every connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import OrchestratorError

__all__ = [
    "MqttLink",
    "MqttSettings",
    "NotConnectedError",
    "cancellation_kept",
    "publish_keeping_cancellation",
]

log = logging.getLogger(__name__)


class NotConnectedError(OrchestratorError):
    """The link is down; the message was not published."""


@contextlib.contextmanager
def cancellation_kept() -> Iterator[None]:
    """Re-raise a cancellation requested while the block ran, even if the block swallowed it.

    aiomqtt waits for CONNACK, SUBACK and PUBACK with ``asyncio.wait_for``, which on Python
    3.11 returns the result (or raises the future's error) instead of ``CancelledError`` when
    the awaited packet and the cancellation land in the same loop iteration (CPython gh-86296,
    fixed in 3.12). The cancel request is then used up: a service task stopped by its task
    group went back to waiting for work, and shutdown hung.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        yield
    finally:
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError


async def publish_keeping_cancellation(client: aiomqtt.Client, topic: str, payload: bytes,
                                       **kwargs: Any) -> None:
    """``client.publish`` inside :func:`cancellation_kept`."""
    with cancellation_kept():
        await client.publish(topic, payload, **kwargs)


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    client_id: str
    subscriptions: Sequence[str]
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    """Our client certificate (and ``key_file``), for a broker that requires one."""
    key_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    publish_timeout_s: float = 30.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    receive_maximum: int = 16
    """MQTT 5 Receive Maximum: at most this many QoS 1 messages are unacknowledged at once.
    A message is acknowledged (PUBACK) only once ``on_message`` has returned, so a handler
    that blocks (a full ingest queue) makes the broker hold the rest: bounded memory here."""


OnMessage = Callable[[aiomqtt.Message], Awaitable[None]]

QOS0_BACKLOG = 256
"""Received QoS 0 messages beyond this many waiting are dropped (see :class:`_Inbound`)."""


class _Inbound(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's queue of received messages, bounded for QoS 0.

    Receive Maximum and the manual acks bound the QoS 1 messages waiting here, but nothing
    makes the broker hold back QoS 0: a client publishing QoS 0 as fast as it can would pile
    messages up in this queue (about 4 KB each) faster than the router can refuse them. No
    fedmq sender publishes upstream at QoS 0, so beyond :data:`QOS0_BACKLOG` waiting
    messages a QoS 0 one is dropped here, counted in ``dropped`` and shown to ``on_drop``
    (the router charges it to its sender); QoS 1 ones always wait."""

    dropped = 0
    on_drop: Callable[[aiomqtt.Message], None] | None = None

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if item.qos == 0 and self.qsize() >= QOS0_BACKLOG:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(item)
            return
        super().put_nowait(item)


def _dropped(client: aiomqtt.Client) -> int:
    queue = client._queue
    return queue.dropped if isinstance(queue, _Inbound) else 0


class MqttLink:
    """Run :meth:`run` as a task; it connects, subscribes, calls ``on_connect`` (which must
    not block: it may only schedule work) and feeds every message to ``on_message`` until
    cancelled."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._clock = clock or SystemClock()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self.connections = 0
        """How many times the link has connected (tests watch reconnects)."""
        self.last_error: str | None = None
        """Why the last connection attempt or session ended (None: never failed)."""
        self._dropped_before = 0

    @property
    def host(self) -> str:
        return self._settings.host

    @property
    def port(self) -> int:
        return self._settings.port

    @property
    def dropped_qos0(self) -> int:
        """QoS 0 messages dropped unread because too many were waiting (all sessions)."""
        client = self._client
        return self._dropped_before + (_dropped(client) if client is not None else 0)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False, properties: Properties | None = None) -> None:
        """``properties``: MQTT 5 PUBLISH properties (e.g. correlation data of a reply)."""
        client = self._client
        if client is None:
            raise NotConnectedError(f"not connected; dropped a message for {topic}")
        try:
            await publish_keeping_cancellation(
                client, topic, payload, qos=qos, retain=retain, properties=properties,
                timeout=self._settings.publish_timeout_s)
        except aiomqtt.MqttError as exc:
            raise NotConnectedError(f"publish to {topic} failed: {exc}") from exc

    async def run(self, on_message: OnMessage,
                  on_connect: Callable[[], None] | None = None,
                  on_drop: Callable[[aiomqtt.Message], None] | None = None) -> None:
        """``on_drop`` sees each QoS 0 message dropped unread (it must not block)."""
        delay = self._settings.backoff_initial_s
        while True:
            before = self.connections
            try:
                await self._session(on_message, on_connect, on_drop)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("MQTT link to %s:%d down: %s", self._settings.host,
                            self._settings.port, self.last_error)
            if self.connections != before:
                delay = self._settings.backoff_initial_s  # that session did get connected
            # jittered exponential backoff
            await self._clock.sleep(delay * self._rng.uniform(0.5, 1.0))
            delay = min(delay * 2, self._settings.backoff_max_s)

    async def _session(self, on_message: OnMessage, on_connect: Callable[[], None] | None,
                       on_drop: Callable[[aiomqtt.Message], None] | None) -> None:
        s = self._settings
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = s.session_expiry_s
        properties.ReceiveMaximum = s.receive_maximum
        tls_context = await asyncio.to_thread(_tls_context, s) if s.tls else None
        client = aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password, identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=properties,
            keepalive=s.keepalive_s, tls_context=tls_context,
            # Receive Maximum and the manual acks below bound QoS 1 messages; _Inbound QoS 0
            max_queued_incoming_messages=0, queue_type=_Inbound,
        )
        if isinstance(client._queue, _Inbound):
            client._queue.on_drop = on_drop
        # paho would PUBACK on receipt, and the broker would keep sending however far behind
        # the handler is; aiomqtt exposes no switch for this, hence its paho client
        client._client.manual_ack_set(True)
        # acks of a busy group and model chunks are many concurrent publishes by design
        client.pending_calls_threshold = 10_000
        async with contextlib.AsyncExitStack() as stack:
            with cancellation_kept():  # CONNACK and SUBACK are awaited with wait_for too
                await stack.enter_async_context(client)
                for topic in s.subscriptions:
                    await client.subscribe(topic, qos=1)
            self._client = client
            self._connected.set()
            self.connections += 1
            if on_connect is not None:
                on_connect()
            try:
                async for message in client.messages:
                    await on_message(message)
                    client._client.ack(message.mid, message.qos)
            finally:
                self._client = None
                self._connected.clear()
                self._dropped_before += _dropped(client)


def _tls_context(s: MqttSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    if s.cert_file is not None:
        context.load_cert_chain(s.cert_file, s.key_file)
    return context
