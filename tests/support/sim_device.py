"""``SimDevice``: a test device that speaks the device side of docs/architecture.md with nothing
but ``schemas`` and aiomqtt (keys, enroll, signed status, signed update batches with real encoded
deltas, acks), so the service is tested through the wire contract alone. Deliberately malformed
messages (forged, replayed, wrong federation...) are built with the same helpers.

The ``devices`` fixture (tests/conftest.py) provisions, connects and enrolls them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import aiomqtt
import numpy as np
from nacl.signing import SigningKey, VerifyKey

from orchestrator.broker import MosquittoBroker
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
            if not message.payload:  # a retained message cleared (a revocation's order)
                continue
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

    async def publish_to(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish on any topic with this device's connection (what the broker allows)."""
        assert self._client is not None
        await self._client.publish(topic, payload, qos=qos)

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


def random_delta(params: Params, scale: float = 0.01, seed: int = 0) -> Params:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(p.shape) * scale).astype(np.float32)
            for name, p in params.items()}
