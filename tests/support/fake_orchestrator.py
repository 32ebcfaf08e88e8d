"""``FakeOrchestrator``: a test-only orchestrator for the edge agent's tests.

It speaks the flow of docs/architecture.md over a real Mosquitto with nothing but ``schemas``
and aiomqtt: it answers ``Enroll`` with ``Enrolled``, publishes signed retained
models, sends tasks and controls, unseals and decodes the updates it receives, counts every
seq, and acks (or, when told, stays silent). It stands in for the real orchestrator, which the
agent must meet only through the wire contract.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import numpy as np
from nacl.signing import SigningKey, VerifyKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.broker import MosquittoBroker
from orchestrator.models import BuiltModel, ModelSpec
from schemas import (
    Ack,
    AckEntry,
    AckOutcome,
    Bundle,
    Codec,
    CodecSpec,
    Control,
    ControlAction,
    Defer,
    DownKind,
    Enrolled,
    EnrollStatus,
    EvalReport,
    Header,
    Message,
    ModelDelta,
    ModelSnapshot,
    Params,
    Status,
    Task,
    Topics,
    Update,
    check_enroll_mac,
    decode,
    decode_params,
    encode_params,
    open_enroll,
    pack,
    params_digest,
    parse_topic,
    unpack_batch,
    unseal_key,
    xor_delta,
)

log = logging.getLogger("tests.fake_orchestrator")

SPEC = ModelSpec(kind="softmax", n_features=64, n_classes=10, seed=1)
"""The model the edge agent's tests train (the ``built_model`` fixture): digits, 10 classes."""
ARCH = "softmax-64-10"


@dataclass
class ReceivedUpdate:
    device: str
    header: Header
    update: Update
    raw: bytes

    @property
    def delta(self) -> Params:
        return decode_params(self.update.tensors)


@dataclass
class _Device:
    secret: bytes
    key: VerifyKey | None = None


@dataclass
class FakeOrchestrator:
    """Test-only orchestrator (see the module docstring). Counters are public for asserts."""

    broker: MosquittoBroker
    fed: str
    key: SigningKey = field(default_factory=SigningKey.generate)
    ack_updates: bool = True
    enroll_status: EnrollStatus = EnrollStatus.ACTIVE
    heartbeat_s: float = 30.0
    seq: int = 0
    devices: dict[str, _Device] = field(default_factory=dict)
    updates: list[ReceivedUpdate] = field(default_factory=list)
    seq_counts: collections.Counter[tuple[str, int]] = field(
        default_factory=collections.Counter)
    accepted: list[tuple[str, int]] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)
    statuses: list[tuple[str, Header, Status]] = field(default_factory=list)
    evals: list[EvalReport] = field(default_factory=list)
    enrolls: int = 0
    enroll_headers: list[Header] = field(default_factory=list)
    ignore_enrolls: int = 0
    """How many enrolls to drop unanswered before answering (an orchestrator not yet up)."""
    model: dict[str, np.ndarray] | None = None
    model_version: int = 0

    def __post_init__(self) -> None:
        self.topics = Topics(self.fed)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeOrchestrator:
        self._task = asyncio.create_task(self._run(), name="fake-orchestrator")
        async with asyncio.timeout(10):
            await self._connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        ident = f"orchestrator-{uuid.uuid4().hex[:8]}"
        while True:
            client = aiomqtt.Client(
                self.broker.host, self.broker.port, username="orchestrator",
                password=self.broker.orchestrator_password, identifier=ident,
                protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=properties)
            try:
                async with client:
                    await client.subscribe(self.topics.up_all, qos=1)
                    self._client = client
                    self._connected.set()
                    async for message in client.messages:
                        try:
                            await self._on_message(message.topic.value, bytes(message.payload))
                        except Exception:
                            log.exception("fake orchestrator failed on %s", message.topic)
                        self._notify()
            except aiomqtt.MqttError:
                self._connected.clear()
                self._client = None
                await asyncio.sleep(0.1)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    # -- devices --------------------------------------------------------------------------------

    async def add_device(self, device_id: str) -> Bundle:
        password = secrets.token_hex(8)
        await self.broker.add_user(device_id, password)
        secret = secrets.token_bytes(32)
        self.devices[device_id] = _Device(secret)
        return Bundle(device_id=device_id, fed=self.fed, broker_host=self.broker.host,
                      broker_port=self.broker.port, mqtt_username=device_id,
                      mqtt_password=password, orchestrator_key=bytes(self.key.verify_key).hex(),
                      enroll_secret=secret.hex())

    def statuses_of(self, device: str) -> list[Status]:
        return [s for d, _, s in self.statuses if d == device]

    # -- sending --------------------------------------------------------------------------------

    def sign(self, message: Message, *, key: SigningKey | None = None, fed: str | None = None,
             sender: str = "orchestrator", seq: int | None = None, ts_ms: int | None = None,
             to: str = "") -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return pack(message, key=key or self.key, fed=fed or self.fed, sender=sender, seq=seq,
                    ts_ms=ts_ms if ts_ms is not None else int(time.time() * 1000), to=to)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._client is not None, "fake orchestrator is not connected"
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def send(self, device: str, kind: DownKind, message: Message, **sign: Any) -> None:
        sign.setdefault("to", device)
        await self.publish(self.topics.down(device, kind), self.sign(message, **sign))

    def task(self, **fields: Any) -> Task:
        fields.setdefault("task_id", f"t-{uuid.uuid4().hex[:8]}")
        fields.setdefault("model_version", self.model_version)
        fields.setdefault("epochs", 2)
        fields.setdefault("batch_size", 32)
        fields.setdefault("lr", 0.1)
        fields.setdefault("codec", CodecSpec(Codec.FLOAT32))
        return Task(**fields)

    async def send_task(self, device: str, **fields: Any) -> Task:
        task = self.task(**fields)
        await self.send(device, DownKind.TASK, task)
        return task

    async def defer(self, device: str, retry_after_ms: int) -> None:
        await self.send(device, DownKind.TASK, Defer(retry_after_ms, "pace"))

    async def control(self, device: str, action: ControlAction, **fields: Any) -> None:
        await self.send(device, DownKind.CONTROL, Control(action, **fields))

    def snapshot(self, params: dict[str, np.ndarray], built: BuiltModel, version: int,
                 stopped: bool = False) -> ModelSnapshot:
        tensors = encode_params(params, CodecSpec(Codec.FLOAT32), np.random.default_rng(0))
        return ModelSnapshot(version=version, params=tensors, params_sha256=params_digest(params),
                             graphs=built.graphs, arch_id=ARCH, stopped=stopped)

    async def publish_model(self, built: BuiltModel, params: dict[str, np.ndarray] | None = None,
                            *, version: int | None = None, stopped: bool = False,
                            key: SigningKey | None = None) -> None:
        """A retained snapshot and, when a previous version is known, the retained delta."""
        params = built.params if params is None else params
        version = self.model_version + 1 if version is None else version
        snap = self.snapshot(params, built, version, stopped)
        await self.publish(self.topics.model, self.sign(snap, key=key), retain=True)
        if self.model is not None and key is None:
            xor = encode_params(xor_delta(self.model, params), CodecSpec(Codec.FLOAT32),
                                np.random.default_rng(0))
            delta = ModelDelta(version=version, base_version=self.model_version, xor=xor,
                               params_sha256=params_digest(params), arch_id=ARCH,
                               stopped=stopped)
            await self.publish(self.topics.model_delta, self.sign(delta), retain=True)
        if key is None:
            self.model, self.model_version = dict(params), version

    # -- receiving ------------------------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic)
        device = parsed.device
        assert device is not None
        if parsed.kind == "enroll":
            await self._on_enroll(device, payload)
            return
        known = self.devices.get(device)
        if known is None or known.key is None:
            log.info("message from unenrolled %s on %s dropped", device, topic)
            return
        if parsed.kind == "status":
            header, status = decode(payload, known.key, Status)
            self.statuses.append((device, header, status))
        elif parsed.kind == "eval":
            _, report = decode(payload, known.key, EvalReport)
            self.evals.append(report)
        elif parsed.kind == "updates":
            await self._on_updates(device, known.key, payload)

    async def _on_enroll(self, device: str, payload: bytes) -> None:
        header, enroll = open_enroll(payload)
        self.enroll_headers.append(header)
        if self.ignore_enrolls > 0:
            self.ignore_enrolls -= 1
            return
        known = self.devices.get(device)
        assert known is not None, f"unexpected device {device}"
        assert check_enroll_mac(known.secret, enroll.mac, fed=self.fed, device_id=device,
                                public_key=enroll.public_key)
        known.key = VerifyKey(enroll.public_key)
        self.enrolls += 1
        await self.send(device, DownKind.ENROLLED,
                        Enrolled(device, self.enroll_status, heartbeat_s=self.heartbeat_s))

    async def _on_updates(self, device: str, key: VerifyKey, payload: bytes) -> None:
        batch = unpack_batch(payload)
        entries: list[AckEntry] = []
        seqs = []
        for raw in batch.entries:
            header, update = decode(raw, key, Update, unseal=unseal_key(self.key))
            seqs.append(header.seq)
            self.seq_counts[(device, header.seq)] += 1
            first = self.seq_counts[(device, header.seq)] == 1
            if first:
                self.updates.append(ReceivedUpdate(device, header, update, raw))
                self.accepted.append((device, header.seq))
            entries.append(AckEntry(header.seq,
                                    AckOutcome.ACCEPTED if first else AckOutcome.DUPLICATE))
        self.batches.append(seqs)
        if self.ack_updates:
            await self.send(device, DownKind.ACK, Ack(entries))
