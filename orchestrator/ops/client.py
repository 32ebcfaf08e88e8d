"""The operator's side of operator access: enroll an operator key, ask, read the fleet summary.

Field tools reach only the broker. An operator is enrolled like a device
(``fedmq device add NAME --role operator`` writes its bundle); its bundle file is its identity:
the Ed25519 key it makes on first use, whether it enrolled and its last seq live beside it in
``BUNDLE.key`` (mode 0600).

    async with OperatorClient.open("ops-alice.json") as ops:
        status = await ops.request("federation.status")

Entering connects (MQTT 5) and enrolls the key if it has not been yet; :meth:`request` signs an
``OperatorRequest``, publishes it on ``fl/{fed}/ops/request/{operator}`` naming
``fl/{fed}/ops/reply/{operator}`` as response topic with fresh correlation data, and waits for
the orchestrator's signed reply (checked against the key pinned in the bundle, or the one a
rotation announced since: :mod:`orchestrator.ops.orchkeys`, kept in ``BUNDLE.orchkeys``). Every
failure is an :class:`OpsClientError` with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
from nacl.signing import SigningKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.broker import BrokerError
from orchestrator.broker.certs import client_context
from orchestrator.devices.commands import write_private
from orchestrator.errors import OrchestratorError
from orchestrator.link.mqtt import publish_keeping_cancellation
from orchestrator.ops.orchkeys import KeyLostError, TrustedKeys, keys_path
from schemas.bundle import Bundle
from schemas.envelope import check_header, decode_body, pack
from schemas.errors import FedmqError, SignatureError, ValidationError
from schemas.messages import (
    Enroll,
    Enrolled,
    EnrollStatus,
    FleetSummary,
    OperatorRequest,
    OperatorResponse,
)
from schemas.signing import enroll_mac, key_id
from schemas.topics import ORCHESTRATOR_SENDER, DownKind, Topics, UpKind

__all__ = [
    "BrokerUnreachable",
    "OperatorClient",
    "OperatorRefused",
    "OpsClientError",
    "identity_path",
]

log = logging.getLogger(__name__)

_IDENTITY_FORMAT = 1


class OpsClientError(OrchestratorError):
    """An operator tool cannot do what was asked; the message is one line."""


class BrokerUnreachable(OpsClientError):
    """The broker refused or did not answer the connection."""


class OperatorRefused(OpsClientError):
    """The orchestrator answered with an error (``reason`` is its first word)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"{command}: refused by the orchestrator: {error}")
        self.reason = error.split(":", 1)[0]


def identity_path(bundle_path: Path) -> Path:
    """Where an operator's key and seq live: beside its bundle."""
    return bundle_path.with_name(bundle_path.name + ".key")


@dataclass
class _Identity:
    key: SigningKey
    enrolled: bool
    seq: int

    def to_json(self, operator: str) -> str:
        return json.dumps({"format": _IDENTITY_FORMAT, "operator": operator,
                           "signing_key": bytes(self.key).hex(), "enrolled": self.enrolled,
                           "seq": self.seq}) + "\n"


def _load_identity(path: Path, operator: str) -> _Identity:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        identity = _Identity(SigningKey.generate(), enrolled=False, seq=0)
        write_private(path, identity.to_json(operator))
        return identity
    except (OSError, ValueError) as exc:
        raise OpsClientError(f"{path}: unreadable operator identity ({exc})") from None
    try:
        if raw["format"] != _IDENTITY_FORMAT or raw["operator"] != operator:
            raise ValueError("made for another bundle or format")
        return _Identity(SigningKey(bytes.fromhex(raw["signing_key"])), bool(raw["enrolled"]),
                         int(raw["seq"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise OpsClientError(f"{path}: bad operator identity ({exc}); remove it and enroll "
                             "a fresh bundle") from None


class OperatorClient:
    """One operator session on the broker. See the module docstring."""

    def __init__(
        self,
        bundle: Bundle,
        identity_file: Path,
        *,
        keys_file: Path | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bundle = bundle
        self.operator = bundle.device_id
        self._identity_file = identity_file
        self._timeout = timeout_s
        self._clock = clock
        self._topics = Topics(bundle.fed)
        self.keys = TrustedKeys(
            keys_file if keys_file is not None else keys_path(identity_file.with_suffix("")),
            bytes.fromhex(bundle.orchestrator_key), fed=bundle.fed,
            now_ms=lambda: int(self._clock() * 1000))
        self._key_lost: KeyLostError | None = None
        self.ignored_announcements: list[str] = []
        """Why each announcement not signed by a trusted key was ignored."""
        self.reply_topic = self._topics.ops_reply(self.operator)
        self._identity: _Identity | None = None
        self._client: aiomqtt.Client | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._replies: dict[bytes, asyncio.Future[OperatorResponse]] = {}
        self._enrolled: asyncio.Queue[Enrolled] = asyncio.Queue()
        self._summaries: asyncio.Queue[FleetSummary] = asyncio.Queue()
        self._lock = asyncio.Lock()

    @classmethod
    def open(cls, bundle_path: str | Path, *, timeout_s: float = 10.0) -> OperatorClient:
        """A client for the bundle file at ``bundle_path`` (read now; use it with ``async
        with``)."""
        path = Path(bundle_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise OpsClientError(f"{path}: cannot read the bundle: {exc.strerror or exc}"
                                 ) from None
        try:
            bundle = Bundle.from_json(text)
        except ValidationError as exc:
            raise OpsClientError(f"{path}: not a valid bundle: {exc}") from None
        return cls(bundle, identity_path(path), keys_file=keys_path(path), timeout_s=timeout_s)

    @property
    def public_key(self) -> bytes:
        if self._identity is None:
            raise OpsClientError("the operator client is not open")
        return bytes(self._identity.key.verify_key)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> OperatorClient:
        self._identity = await asyncio.to_thread(_load_identity, self._identity_file,
                                                 self.operator)
        await asyncio.to_thread(self.keys.load)
        b = self.bundle
        tls_context = await asyncio.to_thread(_tls_context, b) if b.tls else None
        client = aiomqtt.Client(
            b.broker_host, b.broker_port, username=b.mqtt_username, password=b.mqtt_password,
            identifier=f"{self.operator}-ops-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5, tls_context=tls_context, timeout=self._timeout)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise BrokerUnreachable(f"cannot reach the broker at {b.broker_host}:"
                                    f"{b.broker_port}: {exc}") from None
        self._client = client
        try:
            # first: the retained announcements are handled before any reply arrives
            await client.subscribe(self._topics.model_key, qos=1)
            await client.subscribe(self._topics.model_key + "/+", qos=1)  # earlier ones
            await client.subscribe(self.reply_topic, qos=1)
            await client.subscribe(self._topics.down(self.operator, DownKind.ENROLLED), qos=1)
            self._receiver = asyncio.create_task(self._receive(), name="ops-client-receive")
            if not self._identity.enrolled:
                await self.enroll()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._receiver
            self._receiver = None
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)
            self._client = None

    # -- enrollment ----------------------------------------------------------------------------

    async def enroll(self) -> EnrollStatus:
        """Register this operator's key with its one-time secret (once per identity)."""
        identity = self._require_identity()
        public = bytes(identity.key.verify_key)
        mac = enroll_mac(bytes.fromhex(self.bundle.enroll_secret), fed=self.bundle.fed,
                         device_id=self.operator, public_key=public)
        payload = await self._sign(Enroll(self.operator, public, mac, agent_version="ops"))
        await self._publish(self._topics.up(self.operator, UpKind.ENROLL), payload)
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._enrolled.get()
        except TimeoutError:
            raise self._silence(f"no enrollment answer within {self._timeout:g}s "
                                "(is the orchestrator running?)") from None
        if answer.status is EnrollStatus.REJECTED:
            raise OpsClientError(f"enrollment of {self.operator!r} refused: {answer.reason}")
        if answer.status is EnrollStatus.AWAITING_APPROVAL:
            raise OpsClientError(f"operator {self.operator!r} awaits approval "
                                 f"(fedmq device approve {self.operator})")
        identity.enrolled = True
        await asyncio.to_thread(write_private, self._identity_file,
                                identity.to_json(self.operator))
        return answer.status

    # -- requests ------------------------------------------------------------------------------

    async def request(self, command: str, args: dict[str, Any] | None = None, *,
                      timeout_s: float | None = None) -> Any:
        """Run ``command`` on the orchestrator; its result, or :class:`OperatorRefused`."""
        request_id = uuid.uuid4().hex
        correlation = request_id.encode()
        payload = await self._sign(OperatorRequest(request_id, command, dict(args or {})))
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        future: asyncio.Future[OperatorResponse] = asyncio.get_running_loop().create_future()
        self._replies[correlation] = future
        limit = self._timeout if timeout_s is None else timeout_s
        try:
            await self._publish(self._topics.ops_request(self.operator), payload,
                                properties=props)
            async with asyncio.timeout(limit):
                response = await future
        except TimeoutError:
            raise self._silence(f"{command}: no answer from the orchestrator within "
                                f"{limit:g}s (is it running?)") from None
        finally:
            self._replies.pop(correlation, None)
        if not response.ok:
            raise OperatorRefused(command, response.error)
        return response.result

    async def fleet_summary(self, *, timeout_s: float | None = None) -> FleetSummary:
        """The latest retained fleet summary."""
        async with contextlib.aclosing(self.watch_fleet(timeout_s=timeout_s)) as summaries:
            async for summary in summaries:
                return summary
        raise AssertionError("unreachable: watch_fleet never ends by itself")

    async def watch_fleet(self, *, timeout_s: float | None = None
                          ) -> AsyncGenerator[FleetSummary, None]:
        """Every fleet summary as the orchestrator publishes it (the retained one first);
        :class:`OpsClientError` when none arrives within the timeout."""
        client = self._require_client()
        limit = self._timeout if timeout_s is None else timeout_s
        await client.subscribe(self._topics.fleet, qos=1)
        try:
            while True:
                try:
                    async with asyncio.timeout(limit):
                        summary = await self._summaries.get()
                except TimeoutError:
                    raise self._silence(f"no fleet summary on {self._topics.fleet} within "
                                        f"{limit:g}s (is the orchestrator running?)") from None
                yield summary
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(self._topics.fleet)

    # -- internals -----------------------------------------------------------------------------

    def _silence(self, text: str) -> OpsClientError:
        """Why nothing came: the orchestrator's key changed past this bundle, or ``text``."""
        return OpsClientError(str(self._key_lost) if self._key_lost is not None else text)

    def _require_identity(self) -> _Identity:
        if self._identity is None:
            raise OpsClientError("the operator client is not open")
        return self._identity

    def _require_client(self) -> aiomqtt.Client:
        if self._client is None:
            raise OpsClientError("the operator client is not open")
        return self._client

    async def _sign(self, message: Any) -> bytes:
        """Sign with the next seq: above the last one used and, so that concurrent tools
        sharing one identity rarely collide, at least the clock in microseconds."""
        identity = self._require_identity()
        async with self._lock:
            identity.seq = max(identity.seq + 1, int(self._clock() * 1_000_000))
            await asyncio.to_thread(write_private, self._identity_file,
                                    identity.to_json(self.operator))
        if self._key_lost is not None:  # no answer could be verified (waiting ones fail too)
            raise OpsClientError(str(self._key_lost))
        return pack(message, key=identity.key, fed=self.bundle.fed, sender=self.operator,
                    seq=identity.seq, ts_ms=int(self._clock() * 1000))

    async def _publish(self, topic: str, payload: bytes,
                       properties: Properties | None = None) -> None:
        client = self._require_client()
        try:
            await publish_keeping_cancellation(client, topic, payload, qos=1,
                                               properties=properties, timeout=self._timeout)
        except aiomqtt.MqttError as exc:
            raise BrokerUnreachable(f"publish to {topic} failed: {exc}") from None

    async def _receive(self) -> None:
        client = self._require_client()
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload
            if not isinstance(payload, bytes | bytearray) or not payload:
                continue
            if topic == self._topics.model_key or topic.startswith(self._topics.model_key + "/"):
                await self._on_announcement(bytes(payload),
                                            earlier=topic != self._topics.model_key)
                continue
            try:
                self._dispatch(topic, bytes(payload), message.properties)
            except FedmqError as exc:
                # not from our orchestrator, or not for us: ignore, as devices do
                log.debug("ignored a message on %s: %s", topic, exc)

    async def _on_announcement(self, payload: bytes, *, earlier: bool) -> None:
        """Adopt a rotation of the orchestrator's key (saved before it is used), ignore a
        forged announcement with its reason, or fail every waiting request when this bundle
        missed the grace period."""
        old = self.keys.ring.current
        try:
            ring = self.keys.adopt(payload)
        except KeyLostError as exc:
            self._key_lost = exc
            log.error("%s", exc)
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(OpsClientError(str(exc)))
            return
        except SignatureError as exc:
            # forged, or older than this bundle (issued after the rotation): either way
            # nothing to act on, and not worth a line on an operator's terminal
            self.ignored_announcements.append(str(exc))
            log.info("ignored the orchestrator key announcement%s: %s",
                     " of an earlier rotation" if earlier else "", exc)
            return
        except FedmqError as exc:
            log.warning("ignored the orchestrator key announcement: %s", exc)
            return
        if ring is None:
            return
        await asyncio.to_thread(self.keys.save, ring)
        log.info("orchestrator key %s adopted (announced by %s)", key_id(ring.current),
                 key_id(old))

    def _dispatch(self, topic: str, payload: bytes, props: Properties | None) -> None:
        opened = self.keys.verify(payload)
        now_ms = int(self._clock() * 1000)
        if topic == self._topics.fleet:
            check_header(opened.header, fed=self.bundle.fed, sender=ORCHESTRATOR_SENDER,
                         now_ms=now_ms)
            self._summaries.put_nowait(decode_body(opened, FleetSummary))
            return
        check_header(opened.header, fed=self.bundle.fed, sender=ORCHESTRATOR_SENDER,
                     now_ms=now_ms, recipient=self.operator)
        if topic == self.reply_topic:
            response = decode_body(opened, OperatorResponse)
            correlation = getattr(props, "CorrelationData", None) if props else None
            key = bytes(correlation) if correlation else response.request_id.encode()
            future = self._replies.get(key)
            if future is not None and not future.done():
                future.set_result(response)
        elif topic == self._topics.down(self.operator, DownKind.ENROLLED):
            self._enrolled.put_nowait(decode_body(opened, Enrolled))


def _tls_context(b: Bundle) -> ssl.SSLContext:
    """Trust the bundle's CA (a legacy bundle: its CA file), present its certificate."""
    if not b.ca_pem:
        return ssl.create_default_context(cafile=b.ca_file or None)
    try:
        return client_context(b.ca_pem, b.client_cert_pem, b.client_key_pem)
    except BrokerError as exc:
        raise OpsClientError(f"the bundle's TLS material: {exc}") from None
