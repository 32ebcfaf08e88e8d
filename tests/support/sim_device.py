"""Fixtures for the orchestrator service: configs on a test broker, and a test helper device.

``SimDevice`` speaks the device side of docs/architecture.md with nothing but ``schemas`` and
aiomqtt (keys, enroll, signed status, signed update batches with real encoded deltas, acks),
so the service is tested through the wire contract alone. Deliberately malformed messages
(forged, replayed, wrong federation...) are built with the same helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from nacl.signing import SigningKey, VerifyKey

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config, parse_config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from schemas import (
    Ack,
    AckEntry,
    Bundle,
    Codec,
    CodecSpec,
    DownKind,
    Enroll,
    Enrolled,
    Message,
    Params,
    Status,
    Topics,
    Update,
    UpdateBatch,
    encode_params,
    enroll_mac,
    message_type,
    pack,
    pack_batch,
    seal_key,
    verify,
)
from schemas.envelope import check_header, decode_body

FED = "testfed"
# a small softmax model: W0 (8, 3), b0 (3,)
MODEL = {"kind": "softmax", "n_features": 8, "n_classes": 3, "seed": 3}


def config_dict(tmp_path: Path, mqtt: MosquittoBroker, /, **sections: dict[str, Any]
                ) -> dict[str, Any]:
    """A config on the ``mqtt`` broker (external, not embedded) with ``sections`` merged."""
    data: dict[str, Any] = {
        "federation": {"id": FED, "data_dir": str(tmp_path / "data")},
        "broker": {"embedded": False, "host": mqtt.host, "port": mqtt.port,
                   "username": "orchestrator", "password": mqtt.orchestrator_password,
                   # no pid_file: tests reload through the fixture, which waits for it
                   "password_file": str(mqtt.password_file)},
        "model": dict(MODEL),
        "aggregation": {"k": 3, "max_staleness": 5},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


@pytest.fixture
def make_config(tmp_path: Path, broker: MosquittoBroker) -> Callable[..., Config]:
    def make(**sections: dict[str, Any]) -> Config:
        return parse_config(config_dict(tmp_path, broker, **sections), base_dir=tmp_path)
    return make


class SimDevice:
    """A test device on the real broker: see the module docstring."""

    def __init__(self, bundle: Bundle, broker: MosquittoBroker,
                 key: SigningKey | None = None) -> None:
        self.bundle = bundle
        self.id = bundle.device_id
        self.key = key or SigningKey.generate()
        self.orch_key = VerifyKey(bytes.fromhex(bundle.orchestrator_key))
        self.topics = Topics(bundle.fed)
        self.seq = 0
        self._broker = broker
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.acks: dict[int, AckEntry] = {}
        self.down_seqs: list[int] = []
        """Seqs of the orchestrator's messages to this device, in arrival order."""
        self.ack_messages: list[Ack] = []
        self.down: dict[str, asyncio.Queue[Message]] = {
            k.value: asyncio.Queue() for k in DownKind}
        self._changed = asyncio.Event()

    async def __aenter__(self) -> SimDevice:
        self._client = aiomqtt.Client(
            self._broker.host, self._broker.port, username=self.bundle.mqtt_username,
            password=self.bundle.mqtt_password, identifier=f"{self.id}-{uuid.uuid4().hex[:6]}",
            protocol=aiomqtt.ProtocolVersion.V5)
        await self._client.__aenter__()
        await self._client.subscribe(self.topics.down_all(self.id), qos=1)
        self._task = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._client is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _receive(self) -> None:
        """Until disconnected (a revoked device is cut off by the broker)."""
        assert self._client is not None
        async for message in self._client.messages:
            kind = str(message.topic).rsplit("/", 1)[-1]
            opened = verify(bytes(message.payload), self.orch_key)  # type: ignore[arg-type]
            check_header(opened.header, fed=self.bundle.fed, sender="orchestrator",
                         now_ms=int(time.time() * 1000), recipient=self.id)
            self.down_seqs.append(opened.header.seq)
            decoded = decode_body(opened, message_type(opened))
            if isinstance(decoded, Ack):
                self.ack_messages.append(decoded)
                for entry in decoded.entries:
                    self.acks[entry.seq] = entry
            await self.down[kind].put(decoded)
            self._changed.set()

    # -- building messages ----------------------------------------------------------------

    def sign(self, message: Message, *, seq: int | None = None, key: SigningKey | None = None,
             fed: str | None = None, sender: str | None = None, ts_ms: int | None = None,
             seal: bool = False) -> tuple[int, bytes]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        seal_to = seal_key(self.orch_key) if seal else None
        payload = pack(message, key=key or self.key, fed=fed or self.bundle.fed,
                       sender=sender or self.id, seq=seq,
                       ts_ms=ts_ms if ts_ms is not None else int(time.time() * 1000),
                       seal_to=seal_to)
        return seq, payload

    def update(self, delta: Params, *, base_version: int = 0, num_samples: int = 10,
               codec: CodecSpec | None = None, seal: bool = True, task_id: str = "t",
               **sign: Any) -> tuple[int, bytes]:
        spec = codec or CodecSpec(Codec.INT8)
        tensors = encode_params(delta, spec, np.random.default_rng(self.seq))
        message = Update(task_id=task_id, base_version=base_version, num_samples=num_samples,
                         tensors=tensors, codec=spec.codec, local_steps=1, train_loss=0.5)
        return self.sign(message, seal=seal, **sign)

    # -- sending --------------------------------------------------------------------------

    async def publish(self, kind: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._client is not None
        await self._client.publish(f"fl/{self.bundle.fed}/up/{self.id}/{kind}", payload,
                                   qos=1, retain=retain)

    async def send(self, *entries: bytes) -> None:
        await self.publish("updates", pack_batch(UpdateBatch(list(entries))))

    async def enroll(self, *, secret: bytes | None = None, within: float = 10) -> Enrolled:
        secret = secret if secret is not None else bytes.fromhex(self.bundle.enroll_secret)
        public = bytes(self.key.verify_key)
        mac = enroll_mac(secret, fed=self.bundle.fed, device_id=self.id, public_key=public)
        _, payload = self.sign(Enroll(self.id, public, mac, agent_version="test"))
        await self.publish("enroll", payload)
        answer = await self.next("enrolled", within)
        assert isinstance(answer, Enrolled)
        return answer

    async def barrier(self, within: float = 20) -> None:
        """A round trip on this device's control lane: once it returns, the service has
        handled (and answered, if it answers) every message the device sent before it.
        An enroll with the same key is answered ``Enrolled`` again (idempotent)."""
        await self.enroll(within=within)

    async def status(self, **fields: Any) -> int:
        seq, payload = self.sign(Status(**fields))
        await self.publish("status", payload)
        return seq

    async def next(self, kind: str, within: float = 10) -> Message:
        async with asyncio.timeout(within):
            return await self.down[kind].get()

    async def wait_acks(self, seqs: list[int], within: float = 10) -> dict[int, AckEntry]:
        async with asyncio.timeout(within):
            while not all(s in self.acks for s in seqs):
                self._changed.clear()
                await self._changed.wait()
        return {s: self.acks[s] for s in seqs}


@pytest.fixture
async def orchestrator(make_config: Callable[..., Config]) -> AsyncIterator[Orchestrator]:
    """A running orchestrator on the ``broker`` fixture with the default test config."""
    async with Orchestrator(make_config(), store_synchronous="NORMAL") as orch:
        yield orch


@pytest.fixture
async def devices(broker: MosquittoBroker) -> AsyncIterator[Callable[..., Any]]:
    """``await devices(orch, "dev-1", enroll=True) -> SimDevice``: provisions the device as
    ``fedmq device add`` does, waits for the broker reload, connects it and, with ``enroll``,
    enrolls it. Every device is disconnected at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def add(orch: Orchestrator, device_id: str, *, enroll: bool = True,
                      role: str = "device") -> SimDevice:
            bundle = await provision(orch.store, orch.config, device_id,
                                     orchestrator_key=orch.public_key.hex(),
                                     role=role)  # type: ignore[arg-type]
            await broker.reload()
            device = await stack.enter_async_context(SimDevice(bundle, broker))
            if enroll:
                answer = await device.enroll()
                assert answer.status.value in ("active", "awaiting_approval"), answer
            return device

        yield add


def random_delta(params: Params, scale: float = 0.01, seed: int = 0) -> Params:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(p.shape) * scale).astype(np.float32)
            for name, p in params.items()}


async def retained_models(broker: MosquittoBroker, *, fed: str = FED, expect: int = 2,
                          within: float = 10) -> dict[str, bytes]:
    """Retained ``fl/{fed}/model/#`` messages as a fresh subscriber (the orchestrator account)
    sees them: ``{topic: payload}``, once ``expect`` non-empty ones arrived."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client(broker.host, broker.port, username="orchestrator",
                              password=broker.orchestrator_password,
                              identifier=f"sub-{uuid.uuid4().hex[:6]}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"fl/{fed}/model/#", qos=1)
        async with asyncio.timeout(within):
            async for message in client.messages:
                if message.payload:
                    got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
                if len(got) >= expect:
                    break
    return got


async def all_retained(broker: MosquittoBroker, *, fed: str = FED, quiet: float = 0.5
                       ) -> dict[str, bytes]:
    """Every non-empty retained ``fl/{fed}/model/#`` message: subscribe and collect until
    nothing arrives for ``quiet`` seconds."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client(broker.host, broker.port, username="orchestrator",
                              password=broker.orchestrator_password,
                              identifier=f"sub-{uuid.uuid4().hex[:6]}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"fl/{fed}/model/#", qos=1)
        messages = aiter(client.messages)
        while True:
            try:
                async with asyncio.timeout(quiet):
                    message = await anext(messages)
            except TimeoutError:
                return got
            if message.payload:
                got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]


class Kit:
    """Helpers for tests (conftest modules cannot be imported by name)."""

    FED = FED
    MODEL = MODEL
    SimDevice = SimDevice
    config_dict = staticmethod(config_dict)
    random_delta = staticmethod(random_delta)
    retained_models = staticmethod(retained_models)
    all_retained = staticmethod(all_retained)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
