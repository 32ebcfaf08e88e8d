"""The agent's MQTT session: connect, resubscribe, receive and reconnect — forever.

One ``Session`` owns the broker connection. ``run()`` (a task in the agent's TaskGroup)
connects with exponential backoff and full jitter, keeps an MQTT 5 persistent session
(``clean_start=False`` with a session expiry) so QoS 1 messages published while the device was
briefly away are still delivered, sets a pre-signed Last Will (``Status(offline)``, retained),
subscribes, and hands every message to ``on_message``. When the link drops it starts over.
``publish`` fails fast with ``NotConnectedError`` while there is no connection — durability
is the outbox's job, not the MQTT client's. A broker that keeps refusing the credentials
(not authorized: revoked, or a wrong password) is tried only about every ``auth_retry_s``
after ``auth_refusals_before_hold`` refusals in a row, with one error line
(``refused_credentials``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .backoff import Backoff
from .clock import Clock, SystemClock, wall_ms
from .errors import ConfigError, NotConnectedError, storage_full

__all__ = ["AUTH_REFUSALS_BEFORE_HOLD", "AUTH_RETRY_S", "PUBLISH_RETRY_S", "BrokerAddress",
           "Session", "auth_refused"]

AUTH_RETRY_S = 600.0
"""After repeated "not authorized" refusals, try the broker only about this often."""
AUTH_REFUSALS_BEFORE_HOLD = 3
"""How many refusals in a row (and no connection between) make the session hold back."""
_AUTH_CODES_V5 = frozenset({0x86, 0x87, 0x8C})  # bad user/password, not authorized, bad auth
_AUTH_CODES_V3 = frozenset({4, 5})  # MQTT 3.1.1 CONNACK: bad user/password, not authorized


def auth_refused(exc: MqttConnectError) -> bool:
    """The broker refused the connection for the credentials (not for load or a bad id)."""
    rc = exc.rc
    if isinstance(rc, int):
        return rc in _AUTH_CODES_V3
    value = getattr(rc, "value", None)
    return isinstance(value, int) and value in _AUTH_CODES_V5

PUBLISH_RETRY_S = 0.2
"""Pause before publishing again after a publish failed while the session looked connected."""

class Login(Protocol):
    """Where the password comes from when it can change (see ``edge_agent.login``)."""

    def password(self) -> str: ...
    def refused(self) -> None: ...


MessageHandler = Callable[[str, bytes], Awaitable[None]]
WillFactory = Callable[[], Awaitable[bytes]]
LinkCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str
    password: str
    client_id: str
    tls: ssl.SSLContext | None = None


class Session:
    """Owner of the MQTT connection (one ``run()`` at a time)."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        will_topic: str | None = None,
        will: WillFactory | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        link_up: LinkCheck | None = None,
        backoff: Backoff | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 24 * 3600,
        operation_timeout_s: float = 10.0,
        link_poll_s: float = 1.0,
        max_queued_messages: int = 1000,
        auth_retry_s: float = AUTH_RETRY_S,
        auth_refusals_before_hold: int = AUTH_REFUSALS_BEFORE_HOLD,
        login: Login | None = None,
        clock: Clock | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``clock`` gives the connection times and paces the link polls (and, when no
        ``backoff`` is given, the reconnect delays). ``login``, if given, supplies the
        password of each attempt instead of ``address`` and hears of refusals."""
        if (will is None) != (will_topic is None):
            raise ConfigError("give both will and will_topic, or neither")
        self._address = address
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._will_topic = will_topic
        self._will_factory = will
        self._will_payload: bytes | None = None
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._link_up = link_up
        self._clock = clock or SystemClock()
        self.backoff = backoff or Backoff(sleep=self._clock.sleep)
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._timeout_s = operation_timeout_s
        self._link_poll_s = link_poll_s
        self._max_queued = max_queued_messages
        self._auth_retry_s = auth_retry_s
        self._auth_hold_after = auth_refusals_before_hold
        self._login = login
        self._log = logger or logging.getLogger(__name__)
        # paho logs an expected link cut at ERROR; the session reports it itself, so paho's
        # own lines are shown only when this session logs at DEBUG.
        self._paho_log = self._log.getChild("paho")
        if not self._log.isEnabledFor(logging.DEBUG):
            self._paho_log.setLevel(logging.CRITICAL)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._lost: asyncio.Event = asyncio.Event()
        self._connected_since_ms = 0
        self._background: set[asyncio.Task[None]] = set()
        self.connections = 0
        """How many times a connection was established (tests watch it)."""
        self.last_error: str = ""
        self.auth_refusals = 0
        """Connections refused as not authorized since the last one that succeeded."""

    # -- state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connected_since_ms(self) -> int:
        """Wall-clock ms at which the current connection was established (0: never)."""
        return self._connected_since_ms

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # -- the connection loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, receive, reconnect — until cancelled."""
        while True:
            if self._link_up is not None and not await self._link_up():
                await self._wait_for_link()
            try:
                await self._connect_and_receive()
            except MqttConnectError as exc:
                # the broker answered and said no (bad credentials, revoked): worth a warning
                self.last_error = str(exc) or type(exc).__name__
                if auth_refused(exc):
                    self.auth_refusals += 1
                    if self._login is not None:
                        self._login.refused()
                self._log.warning("mqtt: connection refused by the broker: %s", self.last_error)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
                self._log.info("mqtt: %s", self.last_error)
            except _LinkDown:
                self._log.info("mqtt: link down, disconnected")
            finally:
                self._mark_lost()
            if self.refused_credentials:
                delay = await self._hold()
            else:
                delay = await self.backoff.wait()
            self._log.debug("mqtt: reconnecting after %.2fs", delay)

    @property
    def refused_credentials(self) -> bool:
        """The broker keeps refusing our credentials: the session tries only every
        ``auth_retry_s`` (the device may have been revoked, or its password is wrong)."""
        return self.auth_refusals >= self._auth_hold_after

    async def _hold(self) -> float:
        if self.auth_refusals == self._auth_hold_after:
            self._log.error(
                "mqtt: the broker refused this device's credentials %d times in a row (%s); "
                "the device may have been revoked or its bundle is wrong; trying again about "
                "every %.0f s", self.auth_refusals, self.last_error, self._auth_retry_s)
        return await self.backoff.hold(self._auth_retry_s)

    async def _wait_for_link(self) -> None:
        assert self._link_up is not None
        # the link is an outside condition (a probe), not an event anyone could set
        while not await self._link_up():
            await self._clock.sleep(self._link_poll_s)

    async def _connect_and_receive(self) -> None:
        client = await self._new_client()
        unfinished: asyncio.Future[aiomqtt.Message] | None = None
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            async with client:
                for topic in self._subscriptions:
                    await client.subscribe(topic, qos=1)
                # aiomqtt awaits CONNACK/SUBACK with wait_for, which on Python 3.11 returns
                # instead of raising when the packet and a cancel land together
                # (CPython gh-86296); the receive loop below would then never end
                if task is not None and task.cancelling() > cancels:
                    raise asyncio.CancelledError
                self._client = client
                self._will_payload = None  # this one may be published: sign a new one next time
                self._connected_since_ms = wall_ms(self._clock)
                self._lost = asyncio.Event()
                self.connections += 1
                self.backoff.reset()
                self.auth_refusals = 0
                self._connected.set()
                self._log.info("mqtt: connected to %s:%d", self._address.host,
                               self._address.port)
                if self._on_connect is not None:
                    self._on_connect()
                unfinished = await self._receive(client)
            # The link went down (simulated). The read still pending when we left may hold a
            # message paho has already acknowledged: now that we are disconnected it resolves
            # either to that message or to an error, and the message is not lost.
            try:
                message = await unfinished
            except aiomqtt.MqttError:
                pass
            else:
                await self._handle(message)
            raise _LinkDown()
        finally:
            if unfinished is not None and not unfinished.done():
                unfinished.cancel()

    async def _receive(self, client: aiomqtt.Client) -> asyncio.Future[aiomqtt.Message]:
        """Hand messages to the handler until the connection drops (``MqttError``) or the
        link goes down (returns the read still in progress).

        A read is never cancelled to poll the link: aiomqtt loses a message that arrives
        while its read is being cancelled, so one read stays pending across polls.
        """
        messages = client.messages
        link_up = self._link_up
        pending: asyncio.Future[aiomqtt.Message] | None = None
        timer: asyncio.Future[None] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(messages.__anext__())
                if link_up is not None and timer is None:
                    # polls on the clock, however busy the message stream is
                    timer = asyncio.ensure_future(self._clock.sleep(self._link_poll_s))
                waiting: set[asyncio.Future[Any]] = {pending} if timer is None else {pending, timer}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if timer is not None and timer.done():
                    timer = None
                    if link_up is not None and not await link_up():
                        unfinished, pending = pending, None
                        return unfinished
                if pending.done():
                    message = pending.result()  # MqttError when the connection dropped
                    pending = None
                    await self._handle(message)
        finally:
            for future in (pending, timer):
                if future is not None and not future.done():
                    future.cancel()

    async def _handle(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            self._log.warning("mqtt: non-binary payload on %s ignored", message.topic)
            return
        try:
            await self._on_message(message.topic.value, bytes(payload))
        except Exception as exc:  # the handler is meant not to raise: never lose the session
            if storage_full(exc):
                self._log.error("mqtt: local storage is full, %s not handled (%s)",
                                message.topic.value, exc)
            else:
                self._log.exception("mqtt: handler failed for %s", message.topic.value)

    async def _new_client(self) -> aiomqtt.Client:
        a = self._address
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        will = None
        if self._will_factory is not None and self._will_topic is not None:
            if self._will_payload is None:
                self._will_payload = await self._will_factory()
            will = aiomqtt.Will(self._will_topic, self._will_payload, qos=1, retain=True)
        return aiomqtt.Client(
            a.host,
            a.port,
            username=a.username,
            password=a.password if self._login is None else self._login.password(),
            identifier=a.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            will=will,
            keepalive=self._keepalive_s,
            timeout=self._timeout_s,
            tls_context=a.tls,
            max_queued_incoming_messages=self._max_queued,
            logger=self._paho_log,
        )

    def _mark_lost(self) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._client = None
        self._lost.set()
        if was_connected:
            self._log.info("mqtt: connection lost")
            if self._on_disconnect is not None:
                self._on_disconnect()

    def refresh_retained(self) -> None:
        """Subscribe again, so the broker sends the retained messages once more (a new
        orchestrator key was pinned: the model refused under it may now verify)."""
        client = self._client
        if client is None:
            return

        async def resubscribe() -> None:
            try:
                for topic in self._subscriptions:
                    await client.subscribe(topic, qos=1)
            except aiomqtt.MqttError as exc:
                self._log.info("mqtt: resubscribe failed: %s", exc)

        task = asyncio.get_running_loop().create_task(resubscribe())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- publishing ------------------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and (QoS 1) wait for the broker's PUBACK; ``NotConnectedError`` when the
        session is down or drops before the broker confirms."""
        client, lost = self._client, self._lost
        if client is None or not self._connected.is_set():
            raise NotConnectedError("not connected to the broker")
        sending = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain))
        dropped = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({sending, dropped}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            sending.cancel()
            raise
        finally:
            dropped.cancel()
        if not sending.done():
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            raise NotConnectedError("connection lost before the broker confirmed")
        try:
            sending.result()
        except aiomqtt.MqttError as exc:
            raise NotConnectedError(f"publish failed: {exc}") from exc


class _LinkDown(Exception):
    """The device's link went down (simulated schedule): drop the connection."""
